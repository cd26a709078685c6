"""Durable frames: a seq plus the serialised ``ConverseResponse`` bytes.

The payload of a durable frame is stored and sent as bytes. A frame is built
once without its seq; :func:`with_seq` prepends the seq field, which protobuf
merges on parse, so a fan-out to 10,000 sessions serialises the update once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from talkwire.server.errors import TalkwireError
from talkwire.v1 import chat_pb2

__all__ = [
    "StoredFrame",
    "encode_template",
    "error_template",
    "jsonable",
    "now_timestamp",
    "with_seq",
]


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """One durable frame of one session, ready for the wire."""

    seq: int
    payload: bytes


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def with_seq(seq: int, template: bytes) -> bytes:
    """Return ``template`` (a serialised ConverseResponse without seq) with ``seq`` set."""
    return b"\x08" + _varint(seq) + template


def now_timestamp(now: float | None = None) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int((time.time() if now is None else now) * 1e9))
    return ts


def encode_template(frame: chat_pb2.ConverseResponse, now: float | None = None) -> bytes:
    """Serialise ``frame`` without its seq, stamping ``sent_at`` if unset."""
    if not frame.HasField("sent_at"):
        frame.sent_at.CopyFrom(now_timestamp(now))
    frame.seq = 0
    return frame.SerializeToString()


def error_template(exc: TalkwireError, in_reply_to: str = "") -> bytes:
    """An ``error`` frame template for ``exc`` (code, message, retriable)."""
    frame = chat_pb2.ConverseResponse(in_reply_to=in_reply_to)
    frame.error.code = exc.code.name
    frame.error.message = exc.message
    frame.error.retriable = exc.retriable
    return encode_template(frame)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types for a ``Struct``/``Value`` (anything else becomes text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)
