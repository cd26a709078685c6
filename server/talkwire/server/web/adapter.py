"""A WebSocket as a :class:`~talkwire.server.transport.FrameStream`.

Two codecs, chosen by subprotocol: ``talkwire.v1.json`` (text messages, the
proto3 JSON mapping; the default when the client names none) and
``talkwire.v1.proto`` (binary messages, serialised protobuf). A message that
does not decode (bad JSON, an unknown field, a wrong type) becomes
:data:`~talkwire.server.transport.UNDECODABLE`, which the chat service ends
with ``INVALID_ARGUMENT`` as it does for gRPC; a message over the size limit
raises :class:`FrameTooLargeError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from starlette.websockets import WebSocket, WebSocketDisconnect

from talkwire.server.errors import ResourceExhaustedError, Status, UnavailableError
from talkwire.server.transport import UNDECODABLE, Metadata
from talkwire.v1 import chat_pb2

__all__ = [
    "JSON_PROTOCOL",
    "PROTO_PROTOCOL",
    "Codec",
    "FrameTooLargeError",
    "JsonCodec",
    "ProtoCodec",
    "WebSocketStream",
]

JSON_PROTOCOL = "talkwire.v1.json"
PROTO_PROTOCOL = "talkwire.v1.proto"


class FrameTooLargeError(ResourceExhaustedError):
    """A client message over ``server.max_message_bytes`` (resending it fails the same way)."""

    retriable = False


class Codec(Protocol):
    """Turns WebSocket messages into client frames and frame bytes into messages."""

    binary: bool

    def decode(self, data: str | bytes) -> chat_pb2.ConverseRequest: ...

    def encode(self, payload: bytes) -> str | bytes: ...


class JsonCodec:
    """The proto3 JSON mapping (unknown fields are an error, as in protobuf's parser)."""

    binary = False

    def decode(self, data: str | bytes) -> chat_pb2.ConverseRequest:
        try:
            return json_format.ParseDict(json.loads(data), chat_pb2.ConverseRequest())
        except (ValueError, json_format.ParseError):
            return UNDECODABLE

    def encode(self, payload: bytes) -> str:
        frame = chat_pb2.ConverseResponse.FromString(payload)
        return json.dumps(json_format.MessageToDict(frame), separators=(",", ":"))


class ProtoCodec:
    """Binary protobuf: the bytes gRPC would carry."""

    binary = True

    def decode(self, data: str | bytes) -> chat_pb2.ConverseRequest:
        if isinstance(data, str):
            return UNDECODABLE
        try:
            return chat_pb2.ConverseRequest.FromString(data)
        except DecodeError:
            return UNDECODABLE

    def encode(self, payload: bytes) -> bytes:
        return payload


class WebSocketStream:
    """One accepted WebSocket, served as a session stream.

    ``first`` is the message the gateway already read (to find a token in it);
    ``finish`` only records the status: the gateway closes the socket with it.
    """

    def __init__(
        self,
        websocket: WebSocket,
        codec: Codec,
        *,
        metadata: Metadata,
        first: str | bytes | None,
        max_bytes: int,
    ) -> None:
        self._ws = websocket
        self._codec = codec
        self._metadata = tuple(metadata)
        self._first = first
        self._max_bytes = max_bytes
        self._gone = False
        self.status: Status | None = None

    @property
    def gone(self) -> bool:
        """The client closed its side (or the connection dropped)."""
        return self._gone

    def metadata(self) -> Metadata:
        return self._metadata

    async def requests(self) -> AsyncIterator[chat_pb2.ConverseRequest]:
        if self._first is not None:
            first, self._first = self._first, None
            yield self._decode(first)
        while not self._gone:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                self._gone = True
                return
            yield self._decode(_data(message))

    def _decode(self, data: str | bytes) -> chat_pb2.ConverseRequest:
        size = len(data) if isinstance(data, bytes) else len(data.encode())
        if size > self._max_bytes:
            raise FrameTooLargeError(f"frame of {size} bytes; the limit is {self._max_bytes}")
        return self._codec.decode(data)

    async def write(self, payload: bytes) -> None:
        if self._gone:
            raise UnavailableError("the client closed the socket")
        data = self._codec.encode(payload)
        try:
            if isinstance(data, bytes):
                await self._ws.send_bytes(data)
            else:
                await self._ws.send_text(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            self._gone = True
            raise UnavailableError("the client closed the socket") from exc

    def finish(self, status: Status | None) -> None:
        self.status = status


def _data(message: Any) -> str | bytes:
    text = message.get("text")
    if text is not None:
        return str(text)
    return bytes(message.get("bytes") or b"")
