"""Thin helpers over the generated stubs for component tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import grpc

from talkwire.v1 import chat_pb2, chat_pb2_grpc

__all__ = ["Stream", "message", "metadata_for", "open_frame"]


def metadata_for(token: str | None) -> Sequence[tuple[str, str]]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


def open_frame(**kwargs: Any) -> chat_pb2.ConverseRequest:
    return chat_pb2.ConverseRequest(id="open", open=chat_pb2.Open(**kwargs))


def message(text: str, frame_id: str = "") -> chat_pb2.ConverseRequest:
    return chat_pb2.ConverseRequest(
        id=frame_id or text[:32], message=chat_pb2.UserMessage(text=text)
    )


class Stream:
    """One Converse call driven frame by frame."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None = None) -> None:
        self.stub = chat_pb2_grpc.ChatServiceStub(channel)
        self.call = self.stub.Converse(metadata=metadata_for(token))

    async def send(self, frame: chat_pb2.ConverseRequest) -> None:
        """Write a frame; if the server already ended the call, its status tells why."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.call.write(frame)

    async def recv(self, timeout: float = 10.0) -> chat_pb2.ConverseResponse:
        async with asyncio.timeout(timeout):
            try:
                frame = await self.call.read()
            except grpc.aio.AioRpcError as exc:
                raise EOFError(f"stream ended: {exc.code()} {exc.details()}") from exc
        if frame is grpc.aio.EOF:
            raise EOFError(f"stream ended: {await self.call.code()} {await self.call.details()}")
        assert isinstance(frame, chat_pb2.ConverseResponse)
        return frame

    async def open(self, **kwargs: Any) -> chat_pb2.Opened:
        await self.send(open_frame(**kwargs))
        frame = await self.recv()
        assert frame.WhichOneof("frame") == "opened", frame
        return frame.opened

    async def status(self, timeout: float = 10.0) -> grpc.StatusCode:
        """Drain the stream and return its final status code."""
        async with asyncio.timeout(timeout):
            try:
                while await self.call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            code = await self.call.code()
        assert isinstance(code, grpc.StatusCode)
        return code

    async def details(self) -> str:
        return str(await self.call.details())

    def cancel(self) -> None:
        self.call.cancel()
