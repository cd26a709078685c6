"""The attachment registry seen by the idle-session sweeper and the admin API.

Two in-process replicas (``Application`` with ``bus.kind: redis``) on one
PostgreSQL database of their own and one Redis prefix:

- the expiry sweep on replica B keeps a session that is attached on replica A
  (the keep-list is the registry, not only B's own attachments) and expires an
  idle detached one;
- ``GetSession``/``ListSessions`` on B report ``attached``/``replica`` from the
  registry, not from the ``sessions.replica`` column (which stays stale after a
  ``kill -9``; here it is made stale by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from talkwire.server.app import Application
from talkwire.server.cluster import RedisCluster
from talkwire.v1 import admin_pb2
from tests.conftest import make_config
from tests.scaleout.conftest import _create_db, _drop_db
from tests.support.grpcx import Stream, metadata_for, open_frame
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.asyncio(loop_scope="module"),
]

ALICE = "alice-token"
ADMIN = "admin-token"
TTL = 1.0


@pytest_asyncio.fixture(loop_scope="module")
async def own_db() -> AsyncIterator[str]:
    """A database of this test's own: the expiry sweep touches every idle session in it."""
    name = f"talkwire_reg_{secrets.token_hex(4)}"
    url = await _create_db(name)
    try:
        yield url
    finally:
        await _drop_db(name)


@pytest_asyncio.fixture(loop_scope="module")
async def two_apps(
    own_db: str, bus_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[Application, Application]]:
    run = secrets.token_hex(3)

    def config(name: str) -> object:
        return make_config(
            tmp_path,
            server={"replica": f"{name}-{run}", "sweep_interval": 3600, "grace_period": 1},
            store={"url": own_db, "session_ttl": TTL, "pool_size": 3},
            bus={
                "kind": "redis",
                "url": "redis://127.0.0.1:6379/0",
                "prefix": bus_prefix,
                "sweep_interval": 1.0,
                "presence_ttl": 5,
            },
        )

    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(Application(config("a")))  # type: ignore[arg-type]
        b = await stack.enter_async_context(Application(config("b")))  # type: ignore[arg-type]
        assert isinstance(a.hub.cluster, RedisCluster)
        assert isinstance(b.hub.cluster, RedisCluster)
        yield a, b


async def _get(channel: grpc.aio.Channel, session_id: str) -> admin_pb2.Session:
    from talkwire.v1 import admin_pb2_grpc

    stub = admin_pb2_grpc.AdminServiceStub(channel)
    reply = await stub.GetSession(
        admin_pb2.GetSessionRequest(session_id=session_id), metadata=metadata_for(ADMIN)
    )
    return reply.session


async def test_admin_attached_and_expiry_follow_the_registry(
    two_apps: tuple[Application, Application],
) -> None:
    from talkwire.v1 import admin_pb2_grpc

    a, b = two_apps
    async with (
        grpc.aio.insecure_channel(a.target) as ch_a,
        grpc.aio.insecure_channel(b.target) as ch_b,
    ):
        live = Stream(ch_a, ALICE)
        live_id = (await live.open(channel="live")).session_id
        idle = Stream(ch_a, ALICE)
        idle_id = (await idle.open(channel="idle")).session_id
        idle.cancel()
        hub_a = a.hub

        async def idle_released() -> bool:
            return idle_id not in await hub_a.live_ids()

        await eventually(idle_released, message="idle stream detached everywhere")
        # Make the column stale, as a kill -9 of the replica holding it would.
        await a.store.touch(idle_id, replica="ghost-replica")
        await a.store.touch(live_id, replica=None)

        # (b) B answers from the registry, whatever the column says.
        got = await _get(ch_b, live_id)
        assert (got.attached, got.replica) == (True, a.config.server.replica)
        got = await _get(ch_b, idle_id)
        assert (got.attached, got.replica) == (False, "")
        listed = await admin_pb2_grpc.AdminServiceStub(ch_b).ListSessions(
            admin_pb2.ListSessionsRequest(), metadata=metadata_for(ADMIN)
        )
        by_id = {s.session_id: (s.attached, s.replica) for s in listed.sessions}
        assert by_id[live_id] == (True, a.config.server.replica)
        assert by_id[idle_id] == (False, "")

        # (a) B's expiry sweep keeps the session attached on A, expires the idle one.
        await asyncio.sleep(TTL + 0.5)  # both are now idle for longer than session_ttl
        assert not b.hub.is_attached(live_id)
        expired = await b.sweeper.sweep_now()
        assert idle_id in expired
        assert live_id not in expired
        assert (await _get(ch_b, idle_id)).state == admin_pb2.SESSION_STATE_EXPIRED
        assert (await _get(ch_b, live_id)).state == admin_pb2.SESSION_STATE_ACTIVE

        # The kept session is still live on A: a Publish made on B reaches it.
        reply = await admin_pb2_grpc.AdminServiceStub(ch_b).Publish(
            admin_pb2.PublishRequest(session_id=live_id, event={"type": "t", "text": "still here"}),
            metadata=metadata_for(ADMIN),
        )
        assert reply.delivered == 1
        frame = await live.recv()
        assert (frame.seq, frame.update.text) == (1, "still here")

        # Once A's stream is gone (registry entry released), B may expire it too.
        live.cancel()
        hub_b = b.hub

        async def released() -> bool:
            return live_id not in await hub_b.live_ids()

        await eventually(released, message="registry entry released")
        await asyncio.sleep(TTL + 0.5)
        assert live_id in await b.sweeper.sweep_now()


class FirstClaimGate:
    """Holds replica A's next registry claim in flight until :attr:`gate` is set."""

    def __init__(self, cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self._claim = cluster.presence.claim
        monkeypatch.setattr(cluster.presence, "claim", self._claim_late)

    async def _claim_late(self, session_id: str, value: str) -> str | None:
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
        return await self._claim(session_id, value)


async def test_heartbeat_during_a_takeover_claim_keeps_the_new_stream(
    two_apps: tuple[Application, Application], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumes a session B still holds; A's heartbeat runs before A's claim reaches Redis.

    The heartbeat must not take B's registry entry for "attached elsewhere, end
    ours" and cut A's brand-new stream (seen as a silent stall under load when
    B had just been killed). The claim then supersedes B's stream, and A's
    stream carries the session on.
    """
    from talkwire.v1 import admin_pb2_grpc

    a, b = two_apps
    hub_a = a.hub
    cluster_a = hub_a.cluster
    assert isinstance(cluster_a, RedisCluster)
    async with (
        grpc.aio.insecure_channel(a.target) as ch_a,
        grpc.aio.insecure_channel(b.target) as ch_b,
    ):
        on_b = Stream(ch_b, ALICE)
        opened = await on_b.open(channel="takeover")
        held = FirstClaimGate(
            cluster_a, monkeypatch
        )  # A's claim is in flight while the heartbeat runs
        on_a = Stream(ch_a, ALICE)
        await on_a.send(open_frame(session_id=opened.session_id, resume_token=opened.resume_token))
        await eventually(lambda: hub_a.is_attached(opened.session_id), message="attached on A")
        await cluster_a.heartbeat()
        held.gate.set()
        assert (await on_a.recv()).HasField("opened")
        assert await on_b.status() == grpc.StatusCode.ABORTED  # superseded by A's claim
        await cluster_a.heartbeat()  # and A's entry is A's own now
        await admin_pb2_grpc.AdminServiceStub(ch_b).Publish(
            admin_pb2.PublishRequest(
                session_id=opened.session_id, event={"type": "t", "text": "still on A"}
            ),
            metadata=metadata_for(ADMIN),
        )
        frame = await on_a.recv()
        assert frame.update.text == "still on A"
        on_a.cancel()


async def test_out_of_order_claims_on_one_replica_keep_the_newest_registered(
    two_apps: tuple[Application, Application], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two resumes of one session on A whose registry claims return in the opposite order.

    The older one's late claim must not replace the newer attachment's entry: A
    keeps the newest attachment registered, so a later resume on B still
    supersedes it (one live attachment per session across replicas).
    """
    a, b = two_apps
    hub_a = a.hub
    cluster_a = hub_a.cluster
    assert isinstance(cluster_a, RedisCluster)
    async with (
        grpc.aio.insecure_channel(a.target) as ch_a,
        grpc.aio.insecure_channel(b.target) as ch_b,
    ):
        first = Stream(ch_a, ALICE)
        opened = await first.open(channel="order")
        resume = open_frame(session_id=opened.session_id, resume_token=opened.resume_token)
        held = FirstClaimGate(cluster_a, monkeypatch)
        older = Stream(ch_a, ALICE)
        await older.send(resume)
        await eventually(lambda: held.calls == 1, message="the older claim in flight")
        newer = Stream(ch_a, ALICE)
        await newer.send(resume)
        assert (await newer.recv()).HasField("opened")
        held.gate.set()  # the older claim lands now, after the newer one
        assert await older.status() == grpc.StatusCode.ABORTED
        monkeypatch.undo()
        await cluster_a.heartbeat()
        on_b = Stream(ch_b, ALICE)
        await on_b.send(resume)
        assert (await on_b.recv()).HasField("opened")
        assert await newer.status() == grpc.StatusCode.ABORTED  # superseded across replicas
        on_b.cancel()
        first.cancel()
