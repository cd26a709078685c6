"""The transport of one session stream, apart from the session machinery.

:class:`FrameStream` is what :meth:`talkwire.server.chat.ChatService.serve`
needs from a transport: the caller's metadata (for the authenticators), the
client frames in, the server frame bytes out, and one final
:class:`~talkwire.server.errors.Status`. :class:`GrpcStream` adapts a
``Converse`` call; the web gateway (``talkwire.server.web``) adapts a
WebSocket. Sessions, acks, resume, subscriptions and limits live once, in the
chat service, whatever the transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

import grpc

from talkwire.server.errors import Status, UnavailableError
from talkwire.v1 import chat_pb2

__all__ = ["UNDECODABLE", "FrameStream", "GrpcStream", "Metadata"]

Metadata = Iterable[tuple[str, str | bytes]]

UNDECODABLE = chat_pb2.ConverseRequest()
"""Stands for a client frame that is not a valid ConverseRequest (never raised in grpc)."""


class FrameStream(Protocol):
    """A duplex stream of frames that ends with a :class:`Status`.

    ``requests`` yields decoded client frames (:data:`UNDECODABLE` for one that
    does not decode) and ends when the client ends its side; it may raise a
    ``TalkwireError`` (e.g. a frame over the size limit). ``write`` sends one
    serialised ``ConverseResponse`` and raises a ``TalkwireError`` once the
    peer is gone. ``finish`` is called once, last; ``None`` or OK is a normal end.
    """

    def metadata(self) -> Metadata: ...

    def requests(self) -> AsyncIterator[chat_pb2.ConverseRequest]: ...

    async def write(self, payload: bytes) -> None: ...

    def finish(self, status: Status | None) -> None: ...


class GrpcStream:
    """A ``ChatService.Converse`` call as a :class:`FrameStream`."""

    def __init__(
        self,
        requests: AsyncIterator[chat_pb2.ConverseRequest],
        context: grpc.aio.ServicerContext[chat_pb2.ConverseRequest, bytes],
    ) -> None:
        self._requests = requests
        self._context = context

    def metadata(self) -> Metadata:
        return self._context.invocation_metadata() or ()

    def requests(self) -> AsyncIterator[chat_pb2.ConverseRequest]:
        return self._requests

    async def write(self, payload: bytes) -> None:
        try:
            await self._context.write(payload)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError("the stream is closed") from exc

    def finish(self, status: Status | None) -> None:
        if status is None or status.code == grpc.StatusCode.OK:
            return
        self._context.set_code(status.code)
        self._context.set_details(status.message)
        self._context.set_trailing_metadata(
            (("talkwire-retriable", "1" if status.retriable else "0"),)
        )
