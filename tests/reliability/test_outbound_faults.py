"""Faults on the outbound stream, ending in the history checker (lost / duplicate / reordered).

* ``kill -9`` of the server under chat load while the relay is mid-batch (a slow
  receiver keeps deliveries in flight): events committed before the kill arrive after
  the restart, the batch in flight is re-sent with the same ids;
* the webhook receiver down for 30 s under load, then back, answering 500 / slow /
  429 in between: turns never wait for it, and it gets everything in order.

(The broker restart is in tests/outbound/test_kafka_sink.py; three replicas on
PostgreSQL with one killed in tests/scaleout/test_outbound.py.)
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from talkwire.clients import AdminClient
from talkwire.server.outbound.outbox import OutboundOutbox
from talkwire.server.store import SessionStore
from tests.conftest import make_config
from tests.connectors.httpserver import Response
from tests.outbound.receiver import WebhookReceiver
from tests.reliability.conftest import ADMIN, base_config, chat_client, scale, sqlite_url
from tests.support.history import OutboundHistory, Report
from tests.support.server_proc import ServerProcess
from tests.support.waiting import eventually

SECRET = "fault-secret"


def hook(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "relay": {"poll_interval": 0.05, "batch": 5, "stale_after": 5},
        "hook": {
            "type": "webhook",
            "url": url,
            "secret": SECRET,
            "allow_private": True,
            "batch": 5,
            "retries": {"base_delay": 0.1, "max_delay": 1.0},
            **extra,
        },
    }


async def _chat(target: str, turns: int, pause: float = 0.0) -> str:
    async with chat_client(target) as client:
        session = await client.open(channel="web")
        for i in range(turns):
            for attempt in range(4):
                # A message in flight when the server is killed is never answered (client
                # frames are not durable until their turn commits): send it again, as a
                # gateway would. Its events are then recorded once per answered turn.
                await session.send(f"m{i}")
                try:
                    await session.next_frame(timeout=20)
                    break
                except TimeoutError:
                    if attempt == 3:
                        raise
            if pause:
                await asyncio.sleep(pause)  # paces the load; not synchronisation
        return session.session_id


async def _check(url: str, receiver: WebhookReceiver, sessions: list[str], label: str) -> Report:
    async with SessionStore(url) as store:
        outbox = OutboundOutbox(store.executor)
        history = OutboundHistory()
        for sid in sessions:
            for e in await outbox.session_events(sid):
                history.expected(sid, f"{sid}:{e.id}", e.id, e.kind, e.seq)
    for event in receiver.events:
        history.record_event(event)
    report = history.check()
    print(report.summary(label))
    return report


async def _all_delivered(target: str) -> bool:
    async with AdminClient(target, token=ADMIN) as admin:
        status = await admin.outbound_status()
    return status.outbox_depth == 0


async def test_kill9_with_relay_mid_batch_loses_nothing(tmp_path: Path) -> None:
    receiver = WebhookReceiver(SECRET)
    await receiver.start()
    # Every delivery is slow: a kill lands while a batch is in flight.
    receiver.script.extend([0.2] * 10_000)
    url = sqlite_url(tmp_path / "s.db")
    config = {**base_config(url), "outbound": hook(receiver.url)}
    server = ServerProcess(config, workdir=tmp_path)
    await server.start()
    rng = random.Random(13)
    try:
        n_sessions, turns = scale(4, 16), scale(60, 200)
        load = [
            asyncio.create_task(_chat(server.target, turns, pause=0.1)) for _ in range(n_sessions)
        ]
        for _ in range(scale(2, 5)):
            await eventually(lambda: len(receiver.deliveries) > 0, message="deliveries flowing")
            await asyncio.sleep(rng.uniform(0.3, 1.0))  # a random moment of the load
            await server.kill()
            await server.start()
        sessions = await asyncio.gather(*load)
        receiver.script.clear()
        await eventually(lambda: _all_delivered(server.target), timeout=120, message="drained")
        report = await _check(url, receiver, list(sessions), "outbound kill9 mid-batch")
        report.assert_clean()
        assert receiver.bad_signatures == 0
    finally:
        await server.kill()
        await receiver.stop()


async def test_receiver_down_30s_then_back_gets_everything_in_order(
    make_app: Any, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(SECRET)
    await receiver.start()
    # The breaker opens while the receiver is down; a short reset keeps the probes that
    # find it back (and the scripted 500 that re-opens it) inside the drain window.
    section = hook(
        receiver.url,
        retries={"base_delay": 0.2, "max_delay": 2.0},
        breaker={"failures": 5, "reset_after": 2.0},
    )
    app = await make_app(make_config(tmp_path, outbound=section))
    url = app.config.store.url
    try:
        first = await _chat(app.target, 3)
        await receiver.stop()
        down = asyncio.get_running_loop().time()
        sessions = [first]
        while asyncio.get_running_loop().time() - down < 30:  # the receiver is down for 30 s
            sessions.append(await _chat(app.target, 2))  # turns go on meanwhile
            await asyncio.sleep(1.0)
        assert not await _all_delivered(app.target)
        receiver.script.extend(
            [Response(500), 0.5, Response(429, headers={"retry-after": "1"}), Response(503)]
        )
        await receiver.start()
        await eventually(lambda: _all_delivered(app.target), timeout=60, message="drained")
        report = await _check(url, receiver, sessions, "outbound receiver down 30s")
        report.assert_clean()
    finally:
        await receiver.stop()
