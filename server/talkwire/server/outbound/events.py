"""Stored event rows as ``talkwire.v1.ConversationEvent`` (protobuf and JSON forms)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from talkwire.server.outbound.record import FRAME_APPENDED, TURN_RECEIVED
from talkwire.v1 import chat_pb2, conversation_pb2

__all__ = [
    "REDACTED",
    "SCHEMA_VERSION",
    "StoredEvent",
    "event_id",
    "to_json",
    "to_message",
    "transcript_text",
]

SCHEMA_VERSION = 1
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of ``talkwire_conversation_events``."""

    id: int
    session_id: str
    kind: str
    seq: int
    created_at: float
    body: bytes


def event_id(session_id: str, position: int) -> str:
    """The stable event id: the same on every re-send."""
    return f"{session_id}:{position}"


def to_message(row: StoredEvent, *, redact: bool = False) -> conversation_pb2.ConversationEvent:
    """The event as a message; ``redact`` replaces user and bot text (PII) by ``[redacted]``."""
    msg = conversation_pb2.ConversationEvent(
        id=event_id(row.session_id, row.id),
        session_id=row.session_id,
        kind=row.kind,
        position=row.id,
        schema_version=SCHEMA_VERSION,
        seq=row.seq,
    )
    msg.occurred_at.FromNanoseconds(int(row.created_at * 1e9))
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
        return f"bot: {f.reply.text}"
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
