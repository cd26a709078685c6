"""Stored event rows as ``talkwire.v1.ConversationEvent`` (protobuf and JSON forms)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from google.protobuf import json_format

from talkwire.server.outbound.record import FRAME_APPENDED, TURN_RECEIVED
from talkwire.v1 import chat_pb2, conversation_pb2

__all__ = [
    "REDACTED",
    "SCHEMA_VERSION",
    "StoredEvent",
    "event_id",
    "to_bytes",
    "to_json",
    "to_message",
    "transcript_text",
]

SCHEMA_VERSION = 1
REDACTED = "[redacted]"


class StoredEvent(NamedTuple):
    """One row of ``talkwire_conversation_events`` (a named tuple: the relay builds one
    per row straight from the driver's row, a frozen dataclass costs three times that)."""

    id: int
    session_id: str
    kind: str
    seq: int
    created_at: float
    body: bytes


def event_id(session_id: str, position: int) -> str:
    """The stable event id: the same on every re-send."""
    return f"{session_id}:{position}"


def _head(row: StoredEvent) -> conversation_pb2.ConversationEvent:
    msg = conversation_pb2.ConversationEvent(
        id=event_id(row.session_id, row.id),
        session_id=row.session_id,
        kind=row.kind,
        position=row.id,
        schema_version=SCHEMA_VERSION,
        seq=row.seq,
    )
    msg.occurred_at.FromNanoseconds(int(row.created_at * 1e9))
    return msg


# The field tags (number << 3 | length-delimited) of ConversationEvent.turn and .frame.
_BODY_TAGS = {
    TURN_RECEIVED: bytes([conversation_pb2.ConversationEvent.TURN_FIELD_NUMBER << 3 | 2]),
    FRAME_APPENDED: bytes([conversation_pb2.ConversationEvent.FRAME_FIELD_NUMBER << 3 | 2]),
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def to_bytes(row: StoredEvent, *, redact: bool = False) -> bytes:
    """``to_message(row, redact=redact).SerializeToString()``, built without parsing the
    stored turn or frame: its bytes are appended to the event's own fields as the
    ``turn`` / ``frame`` field (the last ones of an unredacted event, so the result is
    the canonical encoding whenever the stored body is, as the store writes it)."""
    tag = None if redact else _BODY_TAGS.get(row.kind)
    if tag is None:
        return to_message(row, redact=redact).SerializeToString()
    body = row.body
    return _head(row).SerializeToString() + tag + _varint(len(body)) + body


def to_message(row: StoredEvent, *, redact: bool = False) -> conversation_pb2.ConversationEvent:
    """The event as a message; ``redact`` replaces user and bot text (PII) by ``[redacted]``."""
    msg = _head(row)
    if row.kind == TURN_RECEIVED:
        msg.turn.ParseFromString(row.body)
        if redact:
            msg.redacted = _redact_turn(msg.turn)
    elif row.kind == FRAME_APPENDED:
        msg.frame.ParseFromString(row.body)
        if redact:
            msg.redacted = _redact_frame(msg.frame)
    elif row.body:
        msg.data.update(json.loads(row.body))
    return msg


def _redact_turn(turn: chat_pb2.ConverseRequest) -> bool:
    if turn.WhichOneof("frame") == "message":
        turn.message.text = REDACTED
        return True
    if turn.WhichOneof("frame") == "action":
        turn.action.ClearField("parameters")
        turn.action.label = REDACTED if turn.action.label else ""
        return True
    return False


def _redact_frame(frame: chat_pb2.ConverseResponse) -> bool:
    kind = frame.WhichOneof("frame")
    if kind in ("reply", "prompt", "update"):
        part = getattr(frame, kind)
        part.text = REDACTED
        if kind != "prompt":
            part.ClearField("data")
        return True
    return False


def to_json(msg: conversation_pb2.ConversationEvent) -> dict[str, Any]:
    """The documented JSON form: proto3 JSON mapping with the proto field names."""
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def transcript_text(events: Sequence[conversation_pb2.ConversationEvent]) -> str:
    """A plain-text transcript, one ``who: text`` line per turn and frame."""
    lines = []
    for e in events:
        line = _line(e)
        if line:
            lines.append(line)
    return "\n".join(lines)


def _line(e: conversation_pb2.ConversationEvent) -> str:
    if e.kind == TURN_RECEIVED:
        if e.turn.WhichOneof("frame") == "message":
            return f"user: {e.turn.message.text}"
        return f"user: [{e.turn.action.label or e.turn.action.intent}]"
    if e.kind != FRAME_APPENDED:
        return ""
    f = e.frame
    kind = f.WhichOneof("frame")
    if kind == "reply":
        role = f.reply.author.role or "bot"
        if role == "user":
            return ""  # the receipt of a user turn during a handoff: its turn.received says it
        name = f.reply.author.display_name
        return (
            f"{role} {name}: {f.reply.text}"
            if role == "agent" and name
            else f"{role}: {f.reply.text}"
        )
    if kind == "handoff":
        state = chat_pb2.HandoffState.Name(f.handoff.state).removeprefix("HANDOFF_STATE_").lower()
        who = f" by {f.handoff.agent_display_name}" if f.handoff.agent_display_name else ""
        return f"(handoff {state}{who})"
    if kind == "prompt":
        return f"bot: {f.prompt.text}"
    if kind == "update":
        return f"update: {f.update.text}"
    if kind == "error":
        return f"error: {f.error.message}"
    if kind == "subscription":
        state = "subscribed to" if f.subscription.active else "unsubscribed from"
        return f"({state} {f.subscription.key})"
    return ""
