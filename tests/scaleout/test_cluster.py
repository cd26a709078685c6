"""Scale-out: three ``talkwire serve`` processes on one PostgreSQL and one Redis bus.

Frames always come from the store; the Redis bus only wakes the replica holding
a session. These tests prove cross-replica live delivery, key fan-out to every
replica, supersede across replicas, admin Watch/Close on any replica, and that
``kill -9`` of a replica loses nothing: its clients resume on the survivors and
see every seq once, in order, without gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from talkwire.v1 import admin_pb2, chat_pb2
from tests.scaleout.cluster import ADMIN, Replica, publish
from tests.support.grpcx import Stream, metadata_for
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.asyncio(loop_scope="module"),
]

ALICE = "alice-token"


def _stream(replica: Replica) -> Stream:
    assert replica.channel is not None
    return Stream(replica.channel, ALICE)


async def _subscribe(s: Stream, key: str) -> int:
    await s.send(chat_pb2.ConverseRequest(id=f"sub-{key}", subscribe=chat_pb2.Subscribe(key=key)))
    frame = await s.recv()
    assert frame.subscription.key == key, frame
    assert frame.subscription.active, frame
    return frame.seq


async def test_publish_on_b_reaches_session_attached_on_a(
    cluster: dict[str, Replica],
) -> None:
    a, b = cluster["a"], cluster["b"]
    s = _stream(a)
    opened = await s.open(channel="web")
    reply = await publish(b, session_id=opened.session_id, text="from b")
    assert reply.delivered == 1
    frame = await s.recv()
    assert (frame.seq, frame.update.text) == (1, "from b")
    # And a turn on A keeps the sequence going.
    await s.send(chat_pb2.ConverseRequest(id="m", message=chat_pb2.UserMessage(text="hi")))
    assert (await s.recv()).seq == 2
    s.cancel()


async def test_publish_to_key_reaches_subscribers_on_every_replica(
    cluster: dict[str, Replica],
) -> None:
    streams = {name: _stream(r) for name, r in cluster.items()}
    for s in streams.values():
        await s.open()
        assert await _subscribe(s, "order:42") == 1
    reply = await publish(cluster["b"], key="order:42", text="shipped", event_id="ev-42")
    assert reply.delivered == 3
    for name, s in streams.items():
        frame = await s.recv()
        got = (frame.seq, frame.update.event_id, frame.update.text)
        assert got == (2, "ev-42", "shipped"), name
    # The same event id again makes no second frame anywhere.
    again = await publish(cluster["c"], key="order:42", text="shipped", event_id="ev-42")
    assert again.duplicate
    assert again.delivered == 0
    for s in streams.values():
        s.cancel()


async def test_reattach_on_b_supersedes_a(cluster: dict[str, Replica]) -> None:
    a, b = cluster["a"], cluster["b"]
    first = _stream(a)
    opened = await first.open()
    await first.send(chat_pb2.ConverseRequest(id="m", message=chat_pb2.UserMessage(text="hi")))
    assert (await first.recv()).seq == 1

    second = _stream(b)
    resumed = await second.open(
        session_id=opened.session_id, resume_token=opened.resume_token, last_seq=1
    )
    assert resumed.resumed
    assert await first.status() == grpc.StatusCode.ABORTED
    assert "superseded" in await first.details()
    # The new attachment is live: a publish through C reaches it on B.
    await publish(cluster["c"], session_id=opened.session_id, text="to b")
    frame = await second.recv()
    assert (frame.seq, frame.update.text) == (2, "to b")
    second.cancel()


async def test_watch_and_close_work_from_any_replica(cluster: dict[str, Replica]) -> None:
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    s = _stream(a)
    opened = await s.open()
    watch = c.admin.Watch(
        admin_pb2.WatchRequest(session_id=opened.session_id), metadata=metadata_for(ADMIN)
    )
    got: list[str] = []

    async def read_watch() -> None:
        async for item in watch:
            got.append(item.frame.update.text)

    reader = asyncio.create_task(read_watch())
    # The watcher attaches asynchronously; publish until it has seen one (each is stored).
    n = 0

    async def seen() -> bool:
        nonlocal n
        if not got:
            n += 1
            await publish(b, session_id=opened.session_id, text=f"w{n}")
        return bool(got)

    await eventually(seen, message="the watcher on C sees a publish made on B")
    assert got[0].startswith("w")
    # The session's own stream on A got every one of them, in order.
    for i in range(1, n + 1):
        frame = await s.recv()
        assert (frame.seq, frame.update.text) == (i, f"w{i}")

    await b.admin.CloseSession(
        admin_pb2.CloseSessionRequest(session_id=opened.session_id, reason="test"),
        metadata=metadata_for(ADMIN),
    )
    assert await s.status() == grpc.StatusCode.NOT_FOUND
    async with asyncio.timeout(20):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await reader
    record = await a.admin.GetSession(
        admin_pb2.GetSessionRequest(session_id=opened.session_id), metadata=metadata_for(ADMIN)
    )
    assert record.session.state == admin_pb2.SESSION_STATE_CLOSED


class _Follower:
    """A client that follows one session and resumes on a survivor when its server dies."""

    def __init__(self, session_id: str, token: str, targets: list[Replica]) -> None:
        self.session_id = session_id
        self.token = token
        self.targets = targets
        self.seqs: list[int] = []
        self.resumes = 0
        self.attached = asyncio.Event()

    async def run(self) -> None:
        i = 0
        while True:
            target = self.targets[min(i, len(self.targets) - 1)]
            try:
                async for frame in self._frames(target):
                    if frame.seq:
                        self.seqs.append(frame.seq)
            except (EOFError, grpc.aio.AioRpcError):
                pass
            i += 1
            self.resumes += 1

    async def _frames(self, target: Replica) -> AsyncIterator[chat_pb2.ConverseResponse]:
        s = _stream(target)
        try:
            await s.open(
                session_id=self.session_id,
                resume_token=self.token,
                last_seq=self.seqs[-1] if self.seqs else 0,
            )
            self.attached.set()
            while True:
                yield await s.recv(timeout=3600)
        finally:
            s.cancel()


async def test_kill_9_replica_clients_resume_on_survivors_nothing_lost(
    fresh_cluster: dict[str, Replica],
) -> None:
    a, b, c = fresh_cluster["a"], fresh_cluster["b"], fresh_cluster["c"]
    per_session = 40
    followers: list[_Follower] = []
    for home in (a, c, a, c, c, c):
        s = _stream(home)
        opened = await s.open()
        s.cancel()
        # Sessions whose home is C resume on A when C dies; A's on B (never needed).
        survivors = [home, a] if home is c else [home, b]
        followers.append(_Follower(opened.session_id, opened.resume_token, survivors))
    tasks = [asyncio.create_task(f.run()) for f in followers]
    try:
        for f in followers:
            await eventually(f.attached.is_set, message="follower attached")
        published = 0
        for i in range(per_session):
            if i == per_session // 3:
                c.kill()  # mid-stream; publishing continues through B
            for f in followers:
                reply = await publish(b, session_id=f.session_id, text=f"u{i}")
                assert reply.delivered == 1
                published += 1
        assert published == per_session * len(followers)
        for f in followers:
            await eventually(
                lambda f=f: len(f.seqs) >= per_session,  # type: ignore[misc]
                timeout=30,
                message=f"session {f.session_id} receives all {per_session} frames",
            )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for f in followers:
        # Gap-free, no duplicates, in order: exactly 1..N.
        assert f.seqs == list(range(1, per_session + 1)), (f.session_id, f.seqs)
    moved = [f for f in followers if f.targets[0] is c]
    assert all(f.resumes >= 1 for f in moved)
