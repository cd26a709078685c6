"""A refused open ends UNAUTHENTICATED, never INTERNAL, however fast the client writes.

Black box: ``talkwire serve`` runs in a subprocess (a real grpc.aio server on
loopback) and the callers are the generated stubs and ``ChatClient``. Each
caller writes its open frame at once, as every client does; with the server
ending the stream before it had read that frame, grpc-python reported
``INTERNAL "Internal error from Core"`` for most of 300 opens started together
(the client's write met a stream the server had already closed), and
``ChatClient`` raised a plain ``SessionEnded(INTERNAL)`` instead of
``Unauthenticated``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from talkwire.clients import ChatClient, Unauthenticated
from talkwire.clients.errors import TalkwireError
from talkwire.v1 import chat_pb2_grpc
from tests.conftest import TOKENS
from tests.support.grpcx import metadata_for, open_frame
from tests.support.server_proc import ServerProcess

OPENS = 300
BAD_TOKENS = (None, "not-a-token")  # missing, and one the server does not know
WAIT = 60  # a guard against hangs, never a synchronisation point


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    config = {
        "server": {"handler": "echo", "sweep_interval": 3600},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"},
        "auth": {"kind": "static", "tokens": TOKENS},
        "demo": False,
    }
    proc = ServerProcess(config, workdir=tmp_path)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.terminate()


async def _open_and_drain(
    stub: chat_pb2_grpc.ChatServiceAsyncStub, token: str | None
) -> tuple[str, str]:
    """Open with ``token``, writing the open frame at once; the stream's final status."""
    call = stub.Converse(metadata=metadata_for(token))
    try:
        await call.write(open_frame())
        while await call.read() is not grpc.aio.EOF:
            pass
        code, details = await call.code(), await call.details()
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
    return code.name, details


async def test_300_opens_with_a_bad_token_all_end_unauthenticated(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        async with asyncio.timeout(WAIT):
            ends = await asyncio.gather(
                *(_open_and_drain(stub, BAD_TOKENS[i % 2]) for i in range(OPENS))
            )
        assert collections.Counter(ends) == {
            ("UNAUTHENTICATED", "missing bearer token"): OPENS // 2,
            ("UNAUTHENTICATED", "invalid token"): OPENS // 2,
        }
        # the server keeps serving
        call = stub.Converse(metadata=metadata_for("alice-token"))
        await call.write(open_frame())
        first = await call.read()
        assert first is not grpc.aio.EOF and first.WhichOneof("frame") == "opened"
        call.cancel()


async def test_300_chat_client_opens_with_a_bad_token_all_raise_unauthenticated(
    server: ServerProcess,
) -> None:
    async def open_with(client: ChatClient) -> str:
        try:
            await client.open()
        except TalkwireError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "opened"

    async with (
        ChatClient(server.target) as anonymous,
        ChatClient(server.target, token="not-a-token") as wrong,
    ):
        clients = (anonymous, wrong)
        async with asyncio.timeout(WAIT):
            ends = await asyncio.gather(*(open_with(clients[i % 2]) for i in range(OPENS)))
    assert collections.Counter(ends) == {
        f"{Unauthenticated.__name__}: UNAUTHENTICATED: missing bearer token": OPENS // 2,
        f"{Unauthenticated.__name__}: UNAUTHENTICATED: invalid token": OPENS // 2,
    }


async def test_a_refused_caller_that_writes_nothing_still_gets_its_status(
    server: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        silent = stub.Converse(metadata=metadata_for("not-a-token"))
        half_closed = stub.Converse(metadata=metadata_for(None))
        await half_closed.done_writing()
        async with asyncio.timeout(WAIT):
            assert await silent.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await half_closed.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await half_closed.details() == "missing bearer token"
