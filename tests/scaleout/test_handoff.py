"""Human handoff across replicas: the user on one, the agent on another (PostgreSQL + Redis).

Three ``talkwire serve`` processes share one PostgreSQL database and one Redis
bus. The user converses on replica A, the agent accepts and attends on replica
B: every step and every message crosses replicas through the store and the bus.
Then ``kill -9`` of the agent's replica (the agent resumes on C with its
``last_seq``) and of the user's replica (the user resumes on C), mid-conversation.
Both streams end in the history checker: no frame lost, duplicated, reordered
or gapped, and both saw the same seqs.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from talkwire.v1 import agent_pb2, agent_pb2_grpc, chat_pb2
from tests.conftest import TOKENS
from tests.handoff.support import AGENT_TOKENS, BOT, Attend, kind
from tests.scaleout.cluster import Replica, replica_config
from tests.support.grpcx import Stream, message, metadata_for, open_frame
from tests.support.history import History

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

ANN = "ann-token"


@pytest_asyncio.fixture(loop_scope="module")
async def replicas(
    scale_db: str, bus_prefix: str, tmp_path: Path
) -> AsyncIterator[dict[str, Replica]]:
    run = secrets.token_hex(3)
    nodes = {
        name: Replica(
            name,
            tmp_path,
            replica_config(
                f"{name}-{run}",
                scale_db,
                bus_prefix,
                server={"handler": "dialogue"},
                auth={"tokens": {**TOKENS, **AGENT_TOKENS}},
                bot=BOT,
                handoff={"queues": {"billing": {"require": {"team": "billing"}}}},
            ),
        )
        for name in ("a", "b", "c")
    }
    try:
        for node in nodes.values():
            await node.start()
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


def _desk(replica: Replica) -> agent_pb2_grpc.AgentServiceStub:
    assert replica.channel is not None
    return agent_pb2_grpc.AgentServiceStub(replica.channel)


class _User:
    """The user's stream, recorded in the history; resumable on another replica."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.frames: list[chat_pb2.ConverseResponse] = []
        self.stream: Stream | None = None
        self.session_id = ""
        self.token = ""

    async def open(self, replica: Replica) -> None:
        assert replica.channel is not None
        self.stream = Stream(replica.channel, "alice-token")
        last = self.frames[-1].seq if self.frames else 0
        if self.session_id:
            await self.stream.send(
                open_frame(session_id=self.session_id, resume_token=self.token, last_seq=last)
            )
            first = await self.stream.recv()
            assert first.opened.resumed
        else:
            opened = await self.stream.open()
            self.session_id, self.token = opened.session_id, opened.resume_token

    async def recv(self) -> chat_pb2.ConverseResponse:
        assert self.stream is not None
        frame = await self.stream.recv(timeout=30)
        self.frames.append(frame)
        self.history.record_frame("user", frame)
        return frame

    async def say(self, text: str, frame_id: str) -> None:
        assert self.stream is not None
        await self.stream.send(message(text, frame_id))


class _Agent:
    def __init__(self, history: History, session_id: str) -> None:
        self.history = history
        self.session_id = session_id
        self.frames: list[chat_pb2.ConverseResponse] = []
        self.stream: Attend | None = None

    async def attend(self, replica: Replica) -> None:
        assert replica.channel is not None
        self.stream = Attend(replica.channel, ANN)
        last = self.frames[-1].seq if self.frames else 0
        attended = await self.stream.open(self.session_id, last_seq=last)
        for _ in range(attended.replayed):
            await self.recv()

    async def recv(self) -> chat_pb2.ConverseResponse:
        assert self.stream is not None
        frame = await self.stream.session_frame()
        self.frames.append(frame)
        self.history.record_frame("agent", frame)
        return frame


async def _exchange(user: _User, agent: _Agent, n: int) -> None:
    """User and agent talk in turns; each line reaches both streams with one seq."""
    for i in range(n):
        await user.say(f"user line {n}-{i}", f"u{n}-{i}")
        receipt, seen = await user.recv(), await agent.recv()
        assert (kind(receipt), receipt.seq) == ("reply:user", seen.seq)
        assert agent.stream is not None
        await agent.stream.say(f"agent line {n}-{i}", f"a{n}-{i}")
        said, echoed = await user.recv(), await agent.recv()
        assert (kind(said), said.reply.text, said.seq) == (
            "reply:agent",
            f"agent line {n}-{i}",
            echoed.seq,
        )


async def test_user_and_agent_on_different_replicas_survive_kill_9(
    replicas: dict[str, Replica],
) -> None:
    a, b, c = replicas["a"], replicas["b"], replicas["c"]
    history = History()
    user = _User(history)
    await user.open(a)
    await user.say("talk to a person", "m1")
    assert [kind(await user.recv()) for _ in range(2)] == ["reply:bot", "handoff:QUEUED"]

    # The agent, on B, sees the session queued on A and takes it.
    listing = await _desk(b).ListQueue(agent_pb2.ListQueueRequest(), metadata=metadata_for(ANN))
    assert user.session_id in [s.session_id for s in listing.sessions]
    await _desk(b).Accept(
        agent_pb2.AcceptRequest(session_id=user.session_id), metadata=metadata_for(ANN)
    )
    accepted = await user.recv()  # committed on B, woken on A by the bus
    assert (kind(accepted), accepted.handoff.agent_display_name) == ("handoff:ACCEPTED", "Ann")
    agent = _Agent(history, user.session_id)
    await agent.attend(b)
    assert [f.seq for f in agent.frames] == [f.seq for f in user.frames]
    await _exchange(user, agent, 3)

    # kill -9 the agent's replica: the agent resumes on C from its last seq.
    b.kill()
    assert agent.stream is not None
    assert await agent.stream.status(timeout=30) in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
    )
    await agent.attend(c)
    await _exchange(user, agent, 2)

    # kill -9 the user's replica: the user resumes on C.
    a.kill()
    assert user.stream is not None
    assert await user.stream.status(timeout=30) in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
    )
    await user.open(c)
    await _exchange(user, agent, 2)

    # Hand back: the bot answers again.
    await agent.stream.send(
        agent_pb2.AttendRequest(id="r", release=agent_pb2.ReleaseSession(reason="done"))
    )
    ended, agent_end = await user.recv(), await agent.recv()
    assert kind(ended) == "handoff:ENDED" and ended.seq == agent_end.seq
    assert await agent.stream.status() == grpc.StatusCode.OK
    await user.say("hello there", "m9")
    back = await user.recv()
    assert (kind(back), back.reply.text) == ("reply:bot", "Hi! How can I help?")

    assert [f.seq for f in agent.frames] == [f.seq for f in user.frames[:-1]]
    report = history.check()
    print(report.summary("handoff scale-out kill -9"))
    report.assert_clean()
