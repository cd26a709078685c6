"""How the async ChatClient reacts to every stream-ending status and trailer.

grpcio-testing's scripted channel is a synchronous ``grpc.Channel``: grpc.aio
stubs cannot run on it (``Converse`` there returns a blocking iterator, not an
awaitable call), so the async client meets the same table of endings from the
scripted grpc.aio server instead (tests/clients/scripted_server.py); the
blocking client meets it through grpcio-testing in test_sync_scripted.py.
"""

from __future__ import annotations

import grpc
import grpc_testing
import pytest
from scripted_server import TOKEN, ServerHarness
from status_table import ENDINGS, Ending

from talkwire.clients import ChatClient, ReconnectPolicy
from talkwire.v1 import chat_pb2, chat_pb2_grpc

FAST = ReconnectPolicy(initial_backoff=0, max_backoff=0, max_attempts=3)


@pytest.mark.parametrize("ending", ENDINGS, ids=str)
async def test_async_client_reacts_to(harness: ServerHarness, ending: Ending) -> None:
    async with ChatClient(harness.target, token=TOKEN, reconnect=FAST) as client:
        session = await client.open(channel="web")
        await session.send("one")
        first = await session.next_frame(timeout=10)
        assert (first.seq, first.reply.text) == (1, "echo: one")

        harness.chat.kick(session.session_id, ending.code, ending.details, ending.trailers)
        if ending.resumes:
            await harness.chat.wait_until(lambda: len(harness.chat.opens) == 2)
            assert harness.chat.opens[1].session_id == session.session_id
            assert harness.chat.opens[1].last_seq == 1
            await harness.chat.wait_until(lambda: harness.chat.attached(session.session_id))
            await harness.chat.push(session.session_id, "after the drop")
            frame = await session.next_frame(timeout=10)
            assert (frame.seq, frame.update.text) == (2, "after the drop")
            assert session.reconnects == 1
        else:
            assert ending.error is not None
            with pytest.raises(ending.error) as raised:
                await session.next_frame(timeout=10)
            assert raised.value.code == ending.code
            assert raised.value.details == ending.details
            assert len(harness.chat.opens) == 1  # never resumed


def test_grpc_testing_channel_cannot_drive_aio_stubs() -> None:
    """Why the async client is not tested on grpcio-testing's channel (see the docstring)."""
    channel = grpc_testing.channel(
        [chat_pb2.DESCRIPTOR.services_by_name["ChatService"]], grpc_testing.strict_real_time()
    )
    assert not isinstance(channel, grpc.aio.Channel)
    converse = chat_pb2_grpc.ChatServiceStub(channel).Converse  # type: ignore[arg-type]
    assert not hasattr(converse(iter(())), "write")  # no grpc.aio StreamStreamCall API
