"""Kafka ingress against a real Tansu broker."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from talkwire.clients.events import EventProducer, build_event
from talkwire.server.errors import ConfigError, UnavailableError
from talkwire.server.events.kafka import DEAD_LETTER_REASON_HEADER, KafkaIngress
from talkwire.server.events.router import EventRouter
from talkwire.server.events.settings import KafkaSettings
from talkwire.server.identity import Identity
from talkwire.server.store import SessionStore
from talkwire.server.tracing import ROUTE_SPAN, default_tracer
from talkwire.v1 import chat_pb2
from tests.events.conftest import RecordingSink, create_topics
from tests.support.waiting import eventually

pytestmark = pytest.mark.kafka


def _config(bootstrap: str, topic: str, fmt: str = "json", **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap": bootstrap,
        "group_id": f"g-{uuid.uuid4().hex[:8]}",
        "start": "earliest",
        "poll_timeout": 0.2,
        "retry_initial": 0.05,
        "retry_max": 0.2,
        "stall_after": 60,
        # Tansu completes a group join only after session_timeout / 2
        "session_timeout": 2.0,
        "heartbeat_interval": 0.3,
        "topics": {
            topic: {
                "format": fmt,
                "keys": ["order:{row.id}"],
                "update_text": "Order {row.id} is now {row.status}",
            }
        },
        **extra,
    }


async def _sessions(store: SessionStore, *keys: str) -> list[str]:
    out = []
    for i, key in enumerate(keys):
        record, _ = await store.create_session(Identity(f"u{i}", {}))
        await store.subscribe(record.id, key)
        out.append(record.id)
    return out


def _texts(frames: list[Any]) -> list[str]:
    return [chat_pb2.ConverseResponse.FromString(f.payload).update.text for f in frames]


async def _committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return await consumer.committed(tp)  # type: ignore[no-any-return]
    finally:
        await consumer.stop()


async def _produce(
    bootstrap: str,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key, headers=headers or [])
    finally:
        await producer.stop()


@pytest.fixture
async def topic(kafka_bootstrap: str, topic_name: str) -> str:
    await create_topics(kafka_bootstrap, topic_name)
    return topic_name


@pytest.mark.parametrize("fmt", ["protobuf", "json", "cloudevents"])
async def test_event_reaches_only_the_subscribed_session(
    kafka_bootstrap: str, topic: str, store: SessionStore, sink: RecordingSink, fmt: str
) -> None:
    a, b = await _sessions(store, "order:1001", "order:2002")
    cfg = _config(kafka_bootstrap, topic, fmt)
    async with KafkaIngress(cfg, EventRouter(store, sink), store) as ingress:
        async with EventProducer(kafka_bootstrap, topic=topic, format=fmt) as producer:  # type: ignore[arg-type]
            ev = await producer.emit(
                "order.status_changed", ["order:1001"], after={"id": 1001, "status": "shipped"}
            )
        await eventually(lambda: sink.frames(a), message="the update frame")
        assert _texts(await store.frames_after(a, 0)) == ["Order 1001 is now shipped"]
        assert await store.frames_after(b, 0) == []
        assert sink.sessions == {a}
        assert (
            chat_pb2.ConverseResponse.FromString(sink.frames(a)[0].payload).update.event_id == ev.id
        )
        assert ingress.healthy


async def test_debezium_through_kafka_with_tombstone(
    kafka_bootstrap: str, topic: str, store: SessionStore, sink: RecordingSink
) -> None:
    (a,) = await _sessions(store, "order:1001")
    row = {
        "schema": {"type": "struct"},
        "payload": {
            "before": {"id": 1001, "status": "packed"},
            "after": {"id": 1001, "status": "shipped"},
            "op": "u",
            "ts_ms": 1,
            "source": {"name": "erp", "db": "shop", "table": "orders", "lsn": 77, "ts_ms": 1},
        },
    }
    key = b'{"id":1001}'
    cfg = _config(kafka_bootstrap, topic, "debezium")
    async with KafkaIngress(cfg, EventRouter(store, sink), store) as ingress:
        await _produce(kafka_bootstrap, topic, json.dumps(row).encode(), key=key)
        await _produce(kafka_bootstrap, topic, None, key=key)  # tombstone
        await _produce(kafka_bootstrap, topic, json.dumps(row).encode(), key=key)  # redelivery
        await eventually(lambda: ingress.records >= 3, message="three records processed")
    assert _texts(await store.frames_after(a, 0)) == ["Order 1001 is now shipped"]
    assert await store.dead_letters() == []


async def test_poison_to_store_dead_letter_then_next_delivered_and_committed(
    kafka_bootstrap: str, topic: str, store: SessionStore, sink: RecordingSink
) -> None:
    (a,) = await _sessions(store, "order:1")
    cfg = _config(kafka_bootstrap, topic, "json")
    tp = TopicPartition(topic, 0)
    async with KafkaIngress(cfg, EventRouter(store, sink), store) as ingress:
        await _produce(kafka_bootstrap, topic, b"{definitely not json")
        ev = build_event("order.status_changed", ["order:1"], after={"id": 1, "status": "late"})
        async with EventProducer(kafka_bootstrap, topic=topic, format="json") as producer:
            await producer.send(ev)
            await producer.send(ev)  # the same event twice -> one frame
        await eventually(lambda: ingress.records >= 3, message="three records processed")
    dead = await store.dead_letters()
    assert len(dead) == 1
    assert dead[0]["offset"] == 0
    assert "JSON" in dead[0]["reason"]
    assert _texts(await store.frames_after(a, 0)) == ["Order 1 is now late"]
    assert await _committed(kafka_bootstrap, cfg["group_id"], tp) == 3


async def test_poison_to_dead_letter_topic(
    kafka_bootstrap: str, topic: str, store: SessionStore, sink: RecordingSink
) -> None:
    dlt = f"{topic}-dlt"
    await create_topics(kafka_bootstrap, dlt)
    cfg = _config(kafka_bootstrap, topic, "protobuf", dead_letter_topic=dlt)
    async with KafkaIngress(cfg, EventRouter(store, sink), store):
        await _produce(kafka_bootstrap, topic, b"\xff\xfe garbage", key=b"k1")
        consumer = AIOKafkaConsumer(
            dlt, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            record = await consumer.getone()
        finally:
            await consumer.stop()
    assert record.value == b"\xff\xfe garbage"
    assert record.key == b"k1"
    headers = dict(record.headers)
    assert b"ChangeEvent" in headers[DEAD_LETTER_REASON_HEADER]
    assert headers["talkwire-source-offset"] == b"0"
    assert await store.dead_letters() == []


class FlakyStore:
    """The real store, with ``fanout`` failing as if the database were down while ``down``."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.down = True
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def fanout(self, events: Any, **kwargs: Any) -> Any:
        if self.down:
            self.failures += 1
            raise UnavailableError("session store unavailable: simulated outage")
        return await self._store.fanout(events, **kwargs)


async def test_store_unavailable_is_retried_and_not_committed(
    kafka_bootstrap: str, topic: str, store: SessionStore, sink: RecordingSink
) -> None:
    (a,) = await _sessions(store, "order:42")
    cfg = _config(kafka_bootstrap, topic, "json")
    tp = TopicPartition(topic, 0)
    flaky = FlakyStore(store)
    router = EventRouter(flaky, sink)  # type: ignore[arg-type]
    async with KafkaIngress(cfg, router, store) as ingress:
        ev = build_event("order.status_changed", ["order:42"], after={"id": 42, "status": "x"})
        async with EventProducer(kafka_bootstrap, topic=topic, format="json") as producer:
            await producer.send(ev)
        await eventually(lambda: ingress.retries >= 3, message="retries while the store is down")
        assert await _committed(kafka_bootstrap, cfg["group_id"], tp) in (None, -1, 0)
        assert not sink.deliveries
        flaky.down = False
        await eventually(lambda: sink.frames(a), message="delivery after the store is back")
        await eventually(lambda: ingress.batches >= 1, message="batch committed")
    assert await _committed(kafka_bootstrap, cfg["group_id"], tp) == 1
    assert _texts(await store.frames_after(a, 0)) == ["Order 42 is now x"]


async def test_second_consumer_takes_over(
    kafka_bootstrap: str, topic_name: str, store: SessionStore, sink: RecordingSink
) -> None:
    await create_topics(kafka_bootstrap, topic_name, partitions=2)
    keys = [f"order:{i}" for i in range(6)]
    sessions = await _sessions(store, *keys)
    cfg = _config(kafka_bootstrap, topic_name, "json")
    router = EventRouter(store, sink)
    first = KafkaIngress(cfg, router, store)
    await first.start()
    try:
        await eventually(lambda: len(first.assignment) == 2, message="first owns both partitions")
        second = KafkaIngress(cfg, router, store)
        await second.start()
        try:
            # start() no longer waits for the join. Wait for it here: Tansu wedges a
            # group whose leader leaves while another member's JoinGroup is in flight
            # (the joiner rejoins forever; real Kafka does not do this).
            await eventually(lambda: second.joined, timeout=30, message="second joined")
            await first.aclose()
            await eventually(lambda: len(second.assignment) == 2, timeout=30, message="takeover")
            async with EventProducer(kafka_bootstrap, topic=topic_name, format="json") as producer:
                for i in range(6):
                    await producer.emit("s", [keys[i]], after={"id": i, "status": "ok"})
            for sid in sessions:
                await eventually(lambda sid=sid: sink.frames(sid), message=f"frame for {sid}")
        finally:
            await second.aclose()
    finally:
        await first.aclose()
    for sid in sessions:
        assert len(await store.frames_after(sid, 0)) == 1


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"


async def test_traceparent_header_continues_through_the_route_span_to_the_frame(
    kafka_bootstrap: str, topic: str, store: SessionStore, sink: RecordingSink
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    a, b = await _sessions(store, "order:7", "order:7")
    router = EventRouter(store, sink, tracer=default_tracer(provider))
    async with KafkaIngress(_config(kafka_bootstrap, topic), router, store):
        async with EventProducer(kafka_bootstrap, topic=topic, format="json") as producer:
            ev = await producer.emit(
                "order.status_changed",
                ["order:7"],
                after={"id": 7, "status": "packed"},
                traceparent=TRACEPARENT,
            )
        await eventually(lambda: sink.frames(a) and sink.frames(b), message="both frames")
    (span,) = [s for s in exporter.get_finished_spans() if s.name == ROUTE_SPAN]
    assert span.context is not None
    assert span.parent is not None
    assert f"{span.context.trace_id:032x}" == TRACE_ID  # the producer's trace goes on
    assert f"{span.parent.span_id:016x}" == PRODUCER_SPAN
    assert span.kind is SpanKind.CONSUMER
    assert span.attributes is not None
    assert span.attributes["talkwire.event.id"] == ev.id
    assert span.attributes["talkwire.event.sessions"] == 2
    assert span.attributes["talkwire.event.duplicate"] is False
    assert list(span.attributes["talkwire.event.keys"]) == ["order:7"]  # type: ignore[arg-type]
    ours = f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    for session in (a, b):
        (frame,) = await store.frames_after(session, 0)
        assert chat_pb2.ConverseResponse.FromString(frame.payload).update.traceparent == ours


async def test_without_a_tracer_provider_the_producers_traceparent_is_passed_on(
    kafka_bootstrap: str, topic: str, store: SessionStore, sink: RecordingSink
) -> None:
    (a,) = await _sessions(store, "order:8")
    async with KafkaIngress(_config(kafka_bootstrap, topic), EventRouter(store, sink), store):
        async with EventProducer(kafka_bootstrap, topic=topic, format="json") as producer:
            await producer.emit(
                "order.status_changed",
                ["order:8"],
                after={"id": 8, "status": "packed"},
                traceparent=TRACEPARENT,
            )
        await eventually(lambda: sink.frames(a), message="the update frame")
    (frame,) = await store.frames_after(a, 0)
    assert chat_pb2.ConverseResponse.FromString(frame.payload).update.traceparent == TRACEPARENT


async def test_commit_interval_commits_stored_offsets_while_running(
    kafka_bootstrap: str, topic: str, store: SessionStore, sink: RecordingSink
) -> None:
    (a,) = await _sessions(store, "order:9")
    cfg = _config(kafka_bootstrap, topic, commit_interval=0.3)
    tp = TopicPartition(topic, 0)
    async with KafkaIngress(cfg, EventRouter(store, sink), store) as ingress:
        async with EventProducer(kafka_bootstrap, topic=topic, format="json") as producer:
            for i in range(5):
                await producer.emit(
                    "order.status_changed", ["order:9"], after={"id": 9, "status": f"s{i}"}
                )
        await eventually(lambda: ingress.records >= 5, message="five records stored")

        async def committed() -> bool:
            return await _committed(kafka_bootstrap, cfg["group_id"], tp) == 5

        # Not only at stop: the periodic committer catches up while the consumer runs.
        await eventually(committed, message="offset 5 committed")
        assert ingress.healthy
    assert len(await store.frames_after(a, 0)) == 5


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("commit_interval", -1),
        ("commit_interval", "soon"),
        ("max_records", 0),
        ("colour", 1),
        ("rebalance_timeout", 0),
        ("heartbeat_interval", 6),
    ],
)
def test_bad_events_settings_name_the_key(key: str, value: object) -> None:
    section = {"bootstrap": "127.0.0.1:9092", "topics": {"t": {"format": "json"}}, key: value}
    with pytest.raises(ConfigError, match=rf"events\.{key}"):
        KafkaSettings.from_config(section)


async def _members(bootstrap: str, group: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        return [m[0] for g in response.groups for m in g[5]]
    finally:
        await admin.close()


async def test_aclose_commits_what_is_stored_and_leaves_the_group(
    kafka_bootstrap: str, topic: str, store: SessionStore, sink: RecordingSink
) -> None:
    """The drain's last step: the stored offsets are committed and the member is gone.

    ``commit_interval`` is long, so only the close can have committed them.
    """
    (a,) = await _sessions(store, "order:5")
    cfg = _config(kafka_bootstrap, topic, commit_interval=3600)
    tp = TopicPartition(topic, 0)
    ingress = KafkaIngress(cfg, EventRouter(store, sink), store)
    await ingress.start()
    await eventually(lambda: ingress.assignment, timeout=30, message="partition assigned")
    assert len(await _members(kafka_bootstrap, cfg["group_id"])) == 1
    async with EventProducer(kafka_bootstrap, topic=topic, format="json") as producer:
        for i in range(3):
            await producer.emit("s", ["order:5"], after={"id": 5, "status": f"s{i}"})
    await eventually(lambda: ingress.records >= 3, message="three records stored")
    assert await _committed(kafka_bootstrap, cfg["group_id"], tp) in (None, -1, 0)
    await ingress.aclose()
    await ingress.aclose()  # idempotent
    assert await _committed(kafka_bootstrap, cfg["group_id"], tp) == 3
    assert await _members(kafka_bootstrap, cfg["group_id"]) == []
    assert not ingress.running
    assert len(await store.frames_after(a, 0)) == 3
