"""Kafka -> ``talkwire serve`` processes -> sessions, across kill -9 and a group takeover.

Issue 5's last two "Done when" items, against real subprocesses and the Tansu
broker (the shared ``tansu`` fixture), with sessions held by ``ChatClient``
(auto resume, dedup by seq) and the history checker at the end:

* **kill -9 between store commit and offset commit.** The Kafka ingress stores
  a batch (one transaction, event-id dedup) and only then commits its offsets.
  A ``kill -9`` that lands between the two leaves records that are stored but
  not committed; the restarted consumer (same SQLite file, same group id)
  re-reads them and the router must drop them as duplicates. The test kills the
  server at random moments under a steady load and, after each kill (the
  process is dead, so the state is frozen), *measures* whether the window was
  hit: it reads the group's committed offsets (a fresh consumer's
  ``committed()``) and the store's ``talkwire_processed_events`` ids, and counts
  the records at or past the committed offset whose event id is already stored
  -- exactly the records the restart re-delivers as duplicates. The kills
  continue (up to a bound) until that count was non-zero at least once, so the
  test proves the window was exercised, not just hoped for. (The server's own
  ``talkwire_events{outcome="duplicate"}`` counter would say the same, but
  ``server.metrics_listen`` is not served over HTTP yet, and it resets with the
  process.)
* **takeover on SIGTERM.** Two processes in one consumer group on a
  2-partition topic, sharing a PostgreSQL database and a Redis bus; each owns a
  partition. A gets SIGTERM; B must take A's partition over: events produced
  after A exited, on the partition A owned, reach the sessions that were on A
  and were resumed on B.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiokafka import TopicPartition

from talkwire.clients.chat import ConnectionEvent, ConnectionEventKind
from tests.events.conftest import create_topics
from tests.reliability.conftest import (
    Reader,
    base_config,
    chat_client,
    print_report,
    scale,
    sqlite_url,
    wait_caught_up,
)
from tests.reliability.test_kafka_faults import (
    KafkaLoad,
    committed_offsets,
    dedicated_database,
    kafka_events,
    open_readers,
    owned,
    reader_errors,
    redis_prefix,
    replica,
    stop_readers,
)
from tests.support.broker import TansuBroker
from tests.support.history import History
from tests.support.server_proc import ServerProcess
from tests.support.waiting import eventually

pytestmark = [pytest.mark.kafka]


@pytest.fixture
async def kf_database() -> AsyncIterator[str]:
    async with dedicated_database() as url:
        yield url


@pytest.fixture
async def bus_prefix() -> AsyncIterator[str]:
    async with redis_prefix() as prefix:
        yield prefix


def stored_event_ids(db: Path) -> set[str]:
    """Event ids in the store's dedup table (read while the server is dead)."""
    conn = sqlite3.connect(db)
    try:
        return {row[0] for row in conn.execute("SELECT event_id FROM talkwire_processed_events")}
    finally:
        conn.close()


async def test_kill9_between_store_commit_and_offset_commit_loses_and_duplicates_nothing(
    tmp_path: Path, tansu: TansuBroker
) -> None:
    sessions = scale(30, 300)
    n_keys = scale(6, 30)
    min_kills, max_kills = scale((3, 15), (10, 30))
    partitions = 2
    history = History()
    topic = f"orders-{secrets.token_hex(4)}"
    group = f"tw-{secrets.token_hex(4)}"
    await create_topics(tansu.bootstrap, topic, partitions=partitions)
    db = tmp_path / "s.db"
    config = base_config(sqlite_url(db), queue_size=4096)
    # Offsets are committed every 0.5 s: most kills land between a stored batch and its
    # commit, so the restart re-reads stored records (the window this test is about).
    config["events"] = kafka_events(
        tansu.bootstrap, topic, group, max_records=50, commit_interval=0.5
    )
    server = ServerProcess(config, workdir=tmp_path)
    keys = [f"order:{i}" for i in range(n_keys)]
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    clients = [chat_client(server.target) for _ in range(max(1, sessions // 15))]
    readers: list[Reader] = []
    load = KafkaLoad(history, tansu.bootstrap, topic, keys, interval=0.01)
    rng = random.Random()
    window_hits: list[int] = []  # per kill: stored-but-uncommitted records
    try:
        await server.start()
        for client in clients:
            await client.__aenter__()
        readers = await open_readers(clients, history, keys, sessions)
        await load.start()
        kills = 0
        while kills < min_kills or (not any(window_hits) and kills < max_kills):
            # A random moment under load (pacing, not synchronisation).
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            await server.kill()
            kills += 1
            committed = await committed_offsets(tansu.bootstrap, group, parts)
            stored = await asyncio.to_thread(stored_event_ids, db)
            window_hits.append(
                sum(
                    1
                    for s in list(load.sent)
                    if s.offset >= 0
                    and s.offset >= committed[TopicPartition(topic, s.partition)]
                    and s.event_id in stored
                )
            )
            await server.start()
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        await load.stop()
        report = await wait_caught_up(history, timeout=60)
        print_report(report, "kafka-kill9")
        print(
            f"kafka-kill9: events={len(load.sent)} kills={kills} "
            f"stored-but-uncommitted-at-kill={window_hits} "
            f"reconnects={sum(r.session.reconnects for r in readers)} "
            f"client-dup-drops={sum(r.session.duplicates for r in readers)}"
        )
        assert load.failed == 0 and not load.errors, load.errors[:3]
        assert not reader_errors(readers), reader_errors(readers)[:5]
        report.assert_clean()
        assert any(window_hits), (
            f"no kill landed between a store commit and its offset commit in {kills} kills"
        )
    finally:
        await load.stop()
        await stop_readers(readers)
        for client in clients:
            await client.aclose()
        await server.kill()


@pytest.mark.postgres
@pytest.mark.redis
async def test_second_process_takes_over_the_partitions_on_sigterm(
    tmp_path: Path, tansu: TansuBroker, kf_database: str, bus_prefix: str
) -> None:
    sessions = scale(20, 150)
    n_keys = scale(8, 30)
    partitions = 2
    history = History()
    topic = f"orders-{secrets.token_hex(4)}"
    await create_topics(tansu.bootstrap, topic, partitions=partitions)
    events = kafka_events(tansu.bootstrap, topic, f"tw-{secrets.token_hex(4)}")
    a = replica("a", kf_database, bus_prefix, events, tmp_path)
    b = replica("b", kf_database, bus_prefix, events, tmp_path)
    keys = [f"order:{i}" for i in range(n_keys)]
    drops: dict[str, grpc.StatusCode | None] = {}

    def on_event(event: ConnectionEvent) -> None:
        if event.kind == ConnectionEventKind.DISCONNECTED:
            drops.setdefault(event.session_id, event.code)

    client_a = chat_client(a.target, on_connection_event=on_event)
    client_b = chat_client(b.target)
    on_a: list[Reader] = []
    moved: list[Reader] = []
    load = KafkaLoad(history, tansu.bootstrap, topic, keys, interval=0.03)
    try:
        await a.start()
        await b.start()
        await eventually(
            lambda: len(owned(a)) == 1 and len(owned(b)) == 1,
            timeout=30,
            message="one partition each",
        )
        a_partition = next(iter(owned(a)))
        await client_a.__aenter__()
        await client_b.__aenter__()
        on_a = await open_readers([client_a], history, keys, sessions)
        await load.start()
        await eventually(lambda: load.acked >= 100, message="load before the stop")

        rc = await a.terminate(timeout=30)
        stopped_at = time.monotonic()
        assert rc == 0, a.log_tail()
        await eventually(lambda: len(drops) >= sessions, message="A's streams ended")
        assert set(drops.values()) == {grpc.StatusCode.UNAVAILABLE}, set(drops.values())
        for r in on_a:
            await r.stop()
            sid, token, last = r.sid, r.session.resume_token, r.session.last_seq
            await r.session.aclose()
            moved.append(Reader(await client_b.resume(sid, token, last), history))
        await eventually(
            lambda: owned(b) == set(range(partitions)), timeout=30, message="B owns both"
        )
        mark = load.acked
        await eventually(lambda: load.acked >= mark + 100, message="load after the stop")
        await load.stop()

        report = await wait_caught_up(history, timeout=60)
        print_report(report, "kafka-takeover")
        late = [
            s
            for s in load.sent
            if s.partition == a_partition and history_at(history, s.event_id) > stopped_at
        ]
        print(
            f"kafka-takeover: events={len(load.sent)} sessions={sessions} "
            f"a-partition={a_partition} produced-there-after-stop={len(late)}"
        )
        assert load.failed == 0 and not load.errors, load.errors[:3]
        assert not reader_errors(moved), reader_errors(moved)[:5]
        report.assert_clean()
        # B took A's partition over: events produced there after A exited reached the
        # sessions resumed on B (the clean report says: every one of them, once).
        delivered = {f.event_id for r in moved for f in history.frames(r.sid)}
        assert late and all(s.event_id in delivered for s in late)
    finally:
        await load.stop()
        await stop_readers(on_a + moved)
        await client_a.aclose()
        await client_b.aclose()
        await a.kill()
        await b.kill()


def history_at(history: History, event_id: str) -> float:
    """When ``event_id`` was first attempted (the history's production time)."""
    event = history._events.get(event_id)
    return 0.0 if event is None else event.at
