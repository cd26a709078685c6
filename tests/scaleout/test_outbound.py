"""Three replicas on PostgreSQL relay one webhook sink; one is killed mid-load.

Every replica runs a relay for the sink; advisory locks let exactly one work a
session's events at a time. Sessions chat on all three replicas; replica ``a`` is
``kill -9``-ed while its relay has batches in flight (a slow receiver). The other
two take over its sessions' events (PostgreSQL dropped its locks with its
connection); the history checker finds nothing lost, duplicated or reordered.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from talkwire.clients import ChatClient
from talkwire.server.outbound.outbox import OutboundOutbox
from talkwire.server.store import SessionStore
from tests.outbound.receiver import WebhookReceiver
from tests.scaleout.cluster import Replica, replica_config
from tests.support.history import OutboundHistory
from tests.support.waiting import eventually

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

SECRET = "scale-secret"


async def _chat(target: str, turns: int) -> str:
    async with ChatClient(target, token="alice-token") as client:
        session = await client.open(channel="web")
        for i in range(turns):
            await session.send(f"m{i}")
            await session.next_frame(timeout=60)
            await asyncio.sleep(0.05)  # paces the load; not synchronisation
        return session.session_id


async def test_three_replicas_one_killed_outbound_loses_nothing(
    scale_db: str, bus_prefix: str, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(SECRET)
    await receiver.start()
    receiver.script.extend([0.1] * 10_000)  # slow: batches stay in flight
    sink = f"hook{secrets.token_hex(3)}"  # the database is shared with other tests
    outbound = {
        "relay": {"poll_interval": 0.05, "batch": 5},
        sink: {
            "type": "webhook",
            "url": receiver.url,
            "secret": SECRET,
            "allow_private": True,
            "batch": 5,
            "retries": {"base_delay": 0.1, "max_delay": 1.0},
        },
    }
    run = secrets.token_hex(3)
    replicas = {
        name: Replica(
            name,
            tmp_path,
            replica_config(f"{name}-{run}", scale_db, bus_prefix, outbound=outbound),
        )
        for name in ("a", "b", "c")
    }
    try:
        await asyncio.gather(*(r.start() for r in replicas.values()))
        first = await asyncio.gather(*(_chat(r.target, 8) for r in replicas.values()))
        survivors = [replicas["b"].target, replicas["c"].target]
        load = [asyncio.create_task(_chat(survivors[i % 2], 30)) for i in range(4)]
        await eventually(lambda: len(receiver.deliveries) > 5, message="deliveries flowing")
        replicas["a"].kill()
        sessions = [*first, *await asyncio.gather(*load)]
        receiver.script.clear()
        async with SessionStore(scale_db) as store:
            outbox = OutboundOutbox(store.db)

            async def drained() -> bool:
                return (await outbox.backlog([sink]))[sink].pending == 0

            await eventually(drained, timeout=120, message="every event delivered")
            history = OutboundHistory()
            for sid in sessions:
                for e in await outbox.session_events(sid):
                    history.expected(sid, f"{sid}:{e.id}", e.id, e.kind, e.seq)
        for event in receiver.events:
            history.record_event(event)
        report = history.check()
        print(report.summary("outbound 3 replicas, one killed"))
        report.assert_clean()
    finally:
        await asyncio.gather(*(r.stop() for r in replicas.values()), return_exceptions=True)
        await receiver.stop()
