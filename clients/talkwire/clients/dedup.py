"""The seq rule both session clients apply to every server frame (exactly once, in order).

A durable frame (``seq > 0``) at or below the highest seq received is a replay
after a resume and is dropped; one that skips a seq is a protocol violation
(:class:`~talkwire.clients.errors.ProtocolError`): a gap is never silent.
Transient frames (``seq == 0``) always pass, except a stray ``opened`` mid-stream,
which the library consumes.
"""

from __future__ import annotations

import enum

from talkwire.clients.errors import ProtocolError
from talkwire.v1 import chat_pb2

__all__ = ["SeqFilter", "Verdict"]


class Verdict(enum.Enum):
    DELIVER = "deliver"  # hand the frame to the consumer
    DUPLICATE = "duplicate"  # a replayed durable frame: drop it, count it
    IGNORE = "ignore"  # a transient frame the library consumes (a stray opened)


class SeqFilter:
    """Tracks the highest durable seq received for one session."""

    def __init__(self, session_id: str = "", received: int = 0) -> None:
        self.session_id = session_id
        self.received = received

    def check(self, frame: chat_pb2.ConverseResponse) -> Verdict:
        """What to do with ``frame``; raises ``ProtocolError`` on a gap. Does not advance."""
        seq = frame.seq
        if seq == 0:
            return Verdict.IGNORE if frame.WhichOneof("frame") == "opened" else Verdict.DELIVER
        if seq <= self.received:
            return Verdict.DUPLICATE
        if seq != self.received + 1:
            raise ProtocolError(
                f"gap in session {self.session_id}: expected seq {self.received + 1}, got {seq}"
            )
        return Verdict.DELIVER

    def advance(self, frame: chat_pb2.ConverseResponse) -> None:
        """Record a delivered frame's seq (transient frames leave it unchanged)."""
        if frame.seq:
            self.received = frame.seq
