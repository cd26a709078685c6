"""Kafka faults: broker stop/restart during load, consumer membership 1 -> 2 -> 1.

Both tests run ``talkwire serve`` as real subprocesses, hold sessions with
``ChatClient`` (auto resume + dedup by seq), produce JSON change events with a
recording Kafka producer (:class:`KafkaLoad`) and end in the history checker
with lost / duplicate / reordered / gap / unauthorised all zero.

Broker restart: why re-producing the recorded history is sound
--------------------------------------------------------------

The tests' Tansu broker keeps everything in memory, so a restart loses every
topic, record and committed offset -- a worse fault than a real Kafka bounce,
which keeps the log. We recover the way an operator restoring a wiped topic
would: recreate the topic and re-produce, from the producer's own record
(:class:`KafkaLoad` keeps every event it ever tried to send, acknowledged or
not), **all** recorded events with their original ids, in their original order.
This loses nothing and duplicates nothing because:

* **nothing lost** -- every event the producer ever attempted is in the new log
  (an event whose send failed, or whose ack was lost with the broker, is
  re-produced too); the server's consumer group has no committed offsets any
  more, so with ``start: earliest`` it reads the new log from offset 0;
* **nothing duplicated** -- an event the server had already stored before the
  broker died is in ``talkwire_processed_events``; the router's store
  transaction deduplicates by event id, so its second copy appends no frame
  (the dedup window, ``store.dedup_window``, is days; the test takes seconds);
* **nothing reordered** -- per key, the producer sends sequentially and the
  record key is the subscription key, so one key's events live on one
  partition in production order, both before and after the restart. The
  consumer stores a partition's records in offset order, so the events of a key
  that were stored before the wipe are a *prefix* of that key's history; the
  re-produced log repeats that prefix (deduplicated away) followed by the rest,
  in order. New events are produced only after the replay, so none can overtake
  a re-produced one. (The producer is paused for the replay -- a producer racing
  its own replay could put a new event of a key before an older re-produced
  one, which no approach could order.)

Re-producing *only* the unacknowledged events would not be enough: events that
were acknowledged but not yet consumed when the broker died are gone from the
log too, and only the producer's record still has them.

Consumer membership 1 -> 2 -> 1
-------------------------------

Two ``talkwire serve`` processes share one PostgreSQL database (a fresh one per
test), one Redis bus (so a frame committed by the replica that consumes a
partition wakes the session attached to the other replica) and one consumer
group on a 3-partition topic. A starts alone; B joins mid-load (rebalance:
partitions move from A to B); A gets SIGTERM mid-load (it commits what it
stored and leaves; its partitions move to B). Sessions opened on B from the
start, and sessions opened on A and resumed on B after A's streams ended, get
every event exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from talkwire.clients.chat import ConnectionEvent, ConnectionEventKind
from talkwire.clients.events import build_event, encode_event
from tests.events.conftest import create_topics
from tests.reliability.conftest import (
    Reader,
    base_config,
    chat_client,
    open_subscribed,
    print_report,
    scale,
    sqlite_url,
    wait_caught_up,
)
from tests.support.broker import TansuBroker
from tests.support.history import History
from tests.support.server_proc import ServerProcess
from tests.support.waiting import eventually

pytestmark = [pytest.mark.kafka]

REDIS_URL = "redis://127.0.0.1:6379/0"
UPDATE_TEXT = "Order {after.id} is now {after.status}"


# -- shared pieces (also used by tests/e2e/test_kafka_processes.py) ----------------


def kafka_events(bootstrap: str, topic: str, group: str, **extra: Any) -> dict[str, Any]:
    """The ``events:`` section: one JSON topic keyed ``order:{after.id}``, fast group joins."""
    return {
        "bootstrap": bootstrap,
        "group_id": group,
        "start": "earliest",
        "poll_timeout": 0.2,
        "retry_initial": 0.1,
        "retry_max": 1.0,
        "session_timeout": 2.0,  # Tansu completes a join only after session_timeout / 2
        "heartbeat_interval": 0.3,
        "topics": {
            topic: {"format": "json", "keys": ["order:{after.id}"], "update_text": UPDATE_TEXT}
        },
        **extra,
    }


@dataclass(slots=True)
class Sent:
    """One event the load generator tried to produce (kept for replays and offset checks)."""

    event_id: str
    key: str
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int = -1  # where the broker acknowledged it (-1: not acknowledged)
    offset: int = -1


class KafkaLoad:
    """A steady load of JSON change events onto ``topic``, recorded in a :class:`History`.

    One task per key group sends sequentially (``send_and_wait``), so per-key
    order is the production order. Every attempted event is recorded first as
    "maybe produced" (in attempt order: that is the per-key order the checker
    expects), then as produced once the broker acknowledged it. A failed send
    (the broker is down) parks the task until :meth:`resume`. :meth:`replay`
    re-produces everything ever attempted, in the original order, with the
    original ids (see the module docstring).
    """

    def __init__(
        self,
        history: History,
        bootstrap: str,
        topic: str,
        keys: Sequence[str],
        *,
        interval: float = 0.02,
        tasks: int = 0,
    ) -> None:
        self.history = history
        self.bootstrap = bootstrap
        self.topic = topic
        self.keys = list(keys)
        self.interval = interval
        self.sent: list[Sent] = []
        self.by_id: dict[str, Sent] = {}
        self.acked = 0
        self.failed = 0
        self.replayed = 0
        self.errors: list[BaseException] = []  # unexpected (non-Kafka) failures of a task
        self._n = 0
        self._run_gate = asyncio.Event()
        self._stop = asyncio.Event()
        self._busy = 0
        self._producer: AIOKafkaProducer | None = None
        n = tasks or len(self.keys)
        self._groups = [self.keys[i::n] for i in range(n) if self.keys[i::n]]
        self._tasks: list[asyncio.Task[None]] = []

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            request_timeout_ms=3000,
            retry_backoff_ms=50,
            linger_ms=0,
        )

    async def start(self) -> None:
        self._producer = self._new_producer()
        await self._producer.start()
        self._run_gate.set()
        self._tasks = [asyncio.create_task(self._run(g)) for g in self._groups]

    def _build(self, key: str) -> Sent:
        self._n += 1
        order = key.split(":", 1)[1]
        event = build_event(
            "order.status_changed",
            [key],
            after={"id": order, "status": f"s{self._n}"},
            id=f"{key}#{self._n}-{uuid.uuid4().hex[:6]}",
        )
        value, headers = encode_event(event, "json")
        sent = Sent(event.id, key, value, headers)
        self.sent.append(sent)
        self.by_id[sent.event_id] = sent
        self.history.maybe_produced(sent.event_id, key)
        return sent

    async def _send(self, producer: AIOKafkaProducer, sent: Sent) -> None:
        meta = await producer.send_and_wait(
            self.topic, value=sent.value, key=sent.key.encode(), headers=sent.headers
        )
        sent.partition, sent.offset = meta.partition, meta.offset
        self.history.produced(sent.event_id, sent.key)

    async def _run(self, keys: Sequence[str]) -> None:
        while not self._stop.is_set():
            for key in keys:
                await self._run_gate.wait()
                if self._stop.is_set():
                    return
                producer = self._producer
                assert producer is not None
                self._busy += 1
                try:
                    sent = self._build(key)
                    try:
                        await self._send(producer, sent)
                        self.acked += 1
                    except KafkaError:
                        # The broker is gone: the event stays "maybe" until a replay.
                        self.failed += 1
                        self._run_gate.clear()
                finally:
                    self._busy -= 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stop.wait()

    async def pause(self) -> None:
        """Stop starting sends and wait until none is in flight."""
        self._run_gate.clear()
        await eventually(lambda: self._busy == 0, timeout=30, message="producer idle")

    async def close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError):
                await producer.stop()

    async def replay(self) -> None:
        """Re-produce every event ever attempted, in order, on a fresh producer (paused)."""
        await self.close_producer()
        producer = self._new_producer()
        await producer.start()
        self._producer = producer
        for sent in list(self.sent):
            await self._send(producer, sent)
            self.replayed += 1

    def resume(self) -> None:
        self._run_gate.set()

    async def stop(self) -> None:
        self._stop.set()
        self._run_gate.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.errors.extend(r for r in results if isinstance(r, BaseException))
        await self.close_producer()


async def committed_offsets(
    bootstrap: str, group: str, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """The group's committed offsets, read by a fresh consumer that does not join the group.

    (``AIOKafkaAdminClient.list_consumer_group_offsets`` breaks the connection on Tansu.)
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        out = {}
        for tp in partitions:
            off = await consumer.committed(tp)
            out[tp] = -1 if off is None else int(off)
        return out
    finally:
        await consumer.stop()


async def open_readers(
    clients: Sequence[Any], history: History, keys: Sequence[str], n: int
) -> list[Reader]:
    """``n`` sessions spread over ``clients``, session i subscribed to ``keys[i % len(keys)]``."""
    return list(
        await asyncio.gather(
            *(
                open_subscribed(clients[i % len(clients)], history, [keys[i % len(keys)]])
                for i in range(n)
            )
        )
    )


def reader_errors(readers: Sequence[Reader]) -> list[BaseException]:
    return [r.error for r in readers if r.error is not None]


async def stop_readers(readers: Sequence[Reader]) -> None:
    for r in readers:
        await r.stop()


# -- broker stop / restart -----------------------------------------------------------


async def test_broker_restart_during_load_loses_nothing(tmp_path: Path) -> None:
    """Stop the (memory) broker under load, restart it, recreate + replay; nothing lost."""
    sessions = scale(40, 300)
    n_keys = scale(8, 40)
    bounces = scale(2, 5)
    history = History()
    broker = TansuBroker()  # our own: the restart wipes it, the shared one stays intact
    broker.start()
    topic = f"orders-{secrets.token_hex(4)}"
    group = f"tw-{secrets.token_hex(4)}"
    await create_topics(broker.bootstrap, topic, partitions=2)
    config = base_config(sqlite_url(tmp_path / "s.db"), queue_size=4096)
    config["events"] = kafka_events(broker.bootstrap, topic, group)
    server = ServerProcess(config, workdir=tmp_path)
    keys = [f"order:{i}" for i in range(n_keys)]
    clients = [chat_client(server.target) for _ in range(max(1, sessions // 20))]
    readers: list[Reader] = []
    load = KafkaLoad(history, broker.bootstrap, topic, keys, interval=0.02)
    try:
        await server.start()
        for client in clients:
            await client.__aenter__()
        readers = await open_readers(clients, history, keys, sessions)
        await load.start()
        for bounce in range(bounces):
            # Let the load run and the consumer get busy, then pull the broker away.
            await eventually(
                lambda b=bounce: load.acked >= 150 * (b + 1), timeout=30, message="load running"
            )
            # SIGTERM: every topic, record and committed offset is gone.
            await asyncio.to_thread(broker.stop)
            await load.pause()
            await load.close_producer()
            await asyncio.to_thread(broker.restart)
            await create_topics(broker.bootstrap, topic, partitions=2)
            await load.replay()
            load.resume()
        await eventually(lambda: load.acked >= 150 * (bounces + 1), timeout=30, message="load")
        await load.stop()
        report = await wait_caught_up(history, timeout=60)
        print_report(report, "kafka-broker-restart")
        print(
            f"kafka-broker-restart: events={len(load.sent)} acked={load.acked} "
            f"failed={load.failed} replayed={load.replayed} bounces={bounces} "
            f"client-dup-drops={sum(r.session.duplicates for r in readers)}"
        )
        assert server.running, server.log_tail()
        assert not load.errors, load.errors[:3]
        assert not reader_errors(readers), reader_errors(readers)[:5]
        report.assert_clean()
        # Every attempted event ended up acknowledged (the replays covered the failures).
        assert all(s.offset >= 0 for s in load.sent)
        # The consumer came back: the group committed the whole replayed log.
        parts = [TopicPartition(topic, p) for p in range(2)]
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(parts)
        finally:
            await consumer.stop()
        committed = await eventually(
            lambda: _all_committed(broker.bootstrap, group, ends),
            timeout=30,
            message="offsets committed up to the end of the replayed log",
        )
        assert committed == ends
    finally:
        await load.stop()
        await stop_readers(readers)
        for client in clients:
            await client.aclose()
        await server.kill()
        broker.stop()


async def _all_committed(
    bootstrap: str, group: str, ends: dict[TopicPartition, int]
) -> dict[TopicPartition, int] | None:
    got = await committed_offsets(bootstrap, group, list(ends))
    return got if got == ends else None


# -- consumer-group membership 1 -> 2 -> 1 ----------------------------------------------

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@contextlib.asynccontextmanager
async def dedicated_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database ``talkwire_kf_<hex>``, dropped WITH (FORCE) after.

    No skip: when PostgreSQL is down the connect raises and the test fails.
    """
    import asyncpg

    name = f"talkwire_kf_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key/channel prefix unique to one test (its keys deleted after).

    No skip: when Redis is down the ping raises and the test fails.
    """
    import redis.asyncio as aioredis

    prefix = f"talkwire-kf-{secrets.token_hex(4)}:"
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
        yield prefix
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def kf_database() -> AsyncIterator[str]:
    async with dedicated_database() as url:
        yield url


@pytest.fixture
async def bus_prefix() -> AsyncIterator[str]:
    async with redis_prefix() as prefix:
        yield prefix


def replica(
    name: str, store_url: str, prefix: str, events: dict[str, Any], workdir: Path
) -> ServerProcess:
    config = base_config(store_url, replica=name, queue_size=4096)
    config["store"]["pool_size"] = 5
    config["bus"] = {
        "kind": "redis",
        "url": REDIS_URL,
        "prefix": prefix,
        "sweep_interval": 1.0,
        "presence_ttl": 5,
    }
    config["events"] = events
    return ServerProcess(config, workdir=workdir, name=name)


def owned(server: ServerProcess) -> set[int]:
    """The partitions in the server's last ``kafka partitions assigned`` log line."""
    lines = [ln for ln in server.log_text().splitlines() if "kafka partitions assigned:" in ln]
    return {int(p) for p in re.findall(r"partition=(\d+)", lines[-1])} if lines else set()


@pytest.mark.postgres
@pytest.mark.redis
async def test_consumer_membership_1_2_1_loses_nothing(
    tmp_path: Path, tansu: TansuBroker, kf_database: str, bus_prefix: str
) -> None:
    per_replica = scale(20, 150)
    n_keys = scale(9, 30)
    history = History()
    topic = f"orders-{secrets.token_hex(4)}"
    partitions = 3
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
    on_b: list[Reader] = []
    moved: list[Reader] = []
    load = KafkaLoad(history, tansu.bootstrap, topic, keys, interval=0.03)
    try:
        await a.start()
        await eventually(lambda: len(owned(a)) == partitions, message="A owns all")
        await client_a.__aenter__()
        await client_b.__aenter__()
        on_a = await open_readers([client_a], history, keys, per_replica)
        await load.start()

        # 1 -> 2: B joins mid-load; the group rebalances and B takes some partitions.
        await eventually(lambda: load.acked >= 100, message="load before B")
        await b.start()
        await eventually(
            lambda: bool(owned(a)) and bool(owned(b)),
            timeout=30,
            message="partitions shared by A and B",
        )
        on_b = await open_readers([client_b], history, keys, per_replica)
        mark = load.acked
        await eventually(lambda: load.acked >= mark + 150, message="load on two members")

        # 2 -> 1: SIGTERM A mid-load; B takes every partition; A's sessions resume on B.
        rc = await a.terminate(timeout=30)
        assert rc == 0, a.log_tail()
        await eventually(lambda: len(drops) >= per_replica, message="A's streams ended")
        assert set(drops.values()) == {grpc.StatusCode.UNAVAILABLE}, set(drops.values())
        for r in on_a:
            await r.stop()
            sid, token, last = r.sid, r.session.resume_token, r.session.last_seq
            await r.session.aclose()
            moved.append(Reader(await client_b.resume(sid, token, last), history))
        await eventually(lambda: len(owned(b)) == partitions, timeout=30, message="B owns all")
        mark = load.acked
        await eventually(lambda: load.acked >= mark + 150, message="load on B alone")
        await load.stop()

        report = await wait_caught_up(history, timeout=60)
        print_report(report, "kafka-membership-1-2-1")
        print(
            f"kafka-membership-1-2-1: events={len(load.sent)} acked={load.acked} "
            f"sessions={2 * per_replica} client-dup-drops="
            f"{sum(r.session.duplicates for r in on_b + moved)}"
        )
        assert load.failed == 0 and not load.errors, load.errors[:3]
        assert not reader_errors(on_b + moved), reader_errors(on_b + moved)[:5]
        report.assert_clean()
        # The session that moved got events from both eras (A's and B's consumer).
        assert all(r.delivered > 0 for r in moved)
    finally:
        await load.stop()
        await stop_readers(on_a + on_b + moved)
        await client_a.aclose()
        await client_b.aclose()
        await a.kill()
        await b.kill()


# -- found by the membership test ----------------------------------------------------

ACK_DEADLOCK = (
    "SessionStore.ack_many locks session rows in the order acks were taken, while fanout "
    "locks them in id order (ORDER BY id FOR UPDATE): on PostgreSQL an ack batch and a "
    "fan-out deadlock; the raw DBAPIError (40P01) is not mapped to a TalkwireError, escapes "
    "Application._watch_writes and its TaskGroup ends the whole process (seen as replica B "
    "dying in test_consumer_membership_1_2_1). Fix: sort acks by session id in ack_many, "
    "retry 40P01/40001 in sqlexec, and never let _watch_writes die on a store error."
)


@pytest.mark.postgres
async def test_ack_batch_and_fanout_lock_sessions_in_one_order(kf_database: str) -> None:
    import asyncpg

    from talkwire.server.identity import Identity
    from talkwire.server.store import SessionStore

    async with SessionStore(kf_database) as store:
        await store.upgrade()
        ids = sorted([(await store.create_session(Identity("alice")))[0].id for _ in range(2)])
        for sid in ids:
            await store.append(sid, [b""])
        low, high = ids
        # A fan-out's transaction, as the store runs it: lock the sessions in id order.
        fanout = await asyncpg.connect(kf_database.replace("+asyncpg", ""))
        try:
            await fanout.execute("SET deadlock_timeout = '10s'")  # let the ack side detect it
            tx = fanout.transaction()
            await tx.start()
            await fanout.execute("SELECT id FROM talkwire_sessions WHERE id = $1 FOR UPDATE", low)
            # An ack batch that happens to list the higher id first.
            ack = asyncio.create_task(store.ack_many([(high, 1), (low, 1)]))
            await eventually(
                lambda: _waiting_on_lock(fanout), timeout=10, message="ack batch blocked"
            )
            await fanout.execute("SELECT id FROM talkwire_sessions WHERE id = $1 FOR UPDATE", high)
            await tx.commit()
            await ack  # with one lock order: waits for the fan-out, then succeeds
        finally:
            await fanout.close()


async def _waiting_on_lock(conn: Any) -> bool:
    n = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    return bool(n)
