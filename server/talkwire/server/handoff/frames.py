"""The durable frames a handoff writes into the session: ``handoff`` and authored replies."""

from __future__ import annotations

from collections.abc import Sequence

from talkwire.server.frames import encode_template
from talkwire.server.turns import QuickReply
from talkwire.v1 import chat_pb2

__all__ = ["authored_reply", "handoff_frame"]


def handoff_frame(
    state: chat_pb2.HandoffState.ValueType,
    *,
    queue: str = "",
    reason: str = "",
    position: int = 0,
    agent_name: str = "",
    closed: bool = False,
    in_reply_to: str = "",
) -> bytes:
    """A ``handoff`` frame template (no seq yet)."""
    frame = chat_pb2.ConverseResponse(in_reply_to=in_reply_to)
    frame.handoff.CopyFrom(
        chat_pb2.Handoff(
            state=state,
            queue=queue,
            reason=reason,
            position=position,
            agent_display_name=agent_name,
            closed=closed,
        )
    )
    return encode_template(frame)


def authored_reply(
    role: str,
    text: str,
    *,
    author_id: str = "",
    display_name: str = "",
    quick_replies: Sequence[QuickReply] = (),
    intent: str = "",
    in_reply_to: str = "",
) -> bytes:
    """A ``reply`` template written by ``role`` ("agent" or "user")."""
    frame = chat_pb2.ConverseResponse(in_reply_to=in_reply_to)
    frame.reply.text = text
    frame.reply.intent = intent
    frame.reply.author.CopyFrom(chat_pb2.Author(role=role, id=author_id, display_name=display_name))
    for qr in quick_replies:
        item = frame.reply.quick_replies.add(label=qr.label, intent=qr.intent)
        if qr.parameters:
            item.parameters.update(dict(qr.parameters))
    return encode_template(frame)
