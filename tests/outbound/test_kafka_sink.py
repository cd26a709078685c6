"""The Kafka sink against a real Tansu broker: CloudEvents headers, key, order, restarts."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.identity import Identity
from talkwire.server.outbound.service import OutboundService, recorder_for
from talkwire.server.outbound.settings import OutboundSettings
from talkwire.server.store import SessionStore
from talkwire.v1 import conversation_pb2
from tests.events.conftest import create_topics
from tests.outbound.helpers import (
    converse,
    expected_history,
    outbound_store,
    reply,
    user_message,
)
from tests.support.broker import TansuBroker
from tests.support.history import OutboundHistory
from tests.support.waiting import eventually


def kafka(bootstrap: str, topic: str, **extra: object) -> dict[str, object]:
    return {
        "relay": {"poll_interval": 0.05},
        "analytics": {
            "type": "kafka",
            "bootstrap": bootstrap,
            "topic": topic,
            "timeout": 5,
            "idempotence": False,  # Tansu has no InitProducerId
            "retries": {"base_delay": 0.05, "max_delay": 0.5},
            **extra,
        },
    }


async def consume(bootstrap: str, topic: str, want: int, timeout: float = 60.0) -> list[object]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[object] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < want:
                batch = await consumer.getmany(timeout_ms=500)
                for recs in batch.values():
                    records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def test_events_go_out_as_cloudevents_keyed_by_session(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    topic = f"conv-{uuid.uuid4().hex[:8]}"
    await create_topics(tansu.bootstrap, topic, partitions=3)
    url = f"sqlite+aiosqlite:///{tmp_path}/k.db"
    async with outbound_store(url, kafka(tansu.bootstrap, topic)) as (store, service):
        sessions = [await converse(store, 3, subject=f"u{i}") for i in range(4)]
        history = await expected_history(service, sessions)
        want = history.check().events
        records = await consume(tansu.bootstrap, topic, want)
    for rec in records:
        event = conversation_pb2.ConversationEvent.FromString(rec.value)  # type: ignore[attr-defined]
        headers = dict(rec.headers)  # type: ignore[attr-defined]
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_id"] == event.id.encode()
        assert headers["ce_type"] == f"io.talkwire.conversation.{event.kind}".encode()
        assert headers["content-type"] == b"application/protobuf"
        assert rec.key == event.session_id.encode()  # type: ignore[attr-defined]
        history.record_event(event)
    report = history.check()
    print(report.summary("outbound kafka"))
    report.assert_clean()


async def test_broker_restart_loses_nothing(tmp_path: Path) -> None:
    """Stop the broker with events pending; restart it (memory storage: a new topic); the
    events committed while it was down arrive, in order, after it is back."""
    topic = "conv-restart"
    history = OutboundHistory()
    with TansuBroker() as broker:
        await create_topics(broker.bootstrap, topic)
        url = f"sqlite+aiosqlite:///{tmp_path}/r.db"
        section = kafka(broker.bootstrap, topic, format="json")
        async with outbound_store(url, section) as (store, service):
            first = await converse(store, 2)
            before = (await expected_history(service, [first])).check().events
            for rec in await consume(broker.bootstrap, topic, before):
                history.record_event(_json(rec))
            await asyncio.to_thread(broker.stop)
            second = await converse(store, 3)  # committed while the broker is down
            await eventually(lambda: _failed(service), message="a failed delivery")
            assert (await service.status())[0].pending > 0
            await asyncio.to_thread(broker.start)
            await create_topics(broker.bootstrap, topic)
            after = (await expected_history(service, [second])).check().events
            for rec in await consume(broker.bootstrap, topic, after):
                history.record_event(_json(rec))
            expected = await expected_history(service, [first, second])
    for sid, events in expected._expected.items():
        for e in events:
            history.expected(sid, e.event_id, e.position, e.kind, e.seq)
    report = history.check()
    print(report.summary("outbound kafka broker-restart"))
    report.assert_clean()


def _json(rec: object) -> dict[str, object]:
    import json

    return json.loads(rec.value)  # type: ignore[attr-defined,no-any-return]


async def _failed(service: object) -> bool:
    return bool((await service.status())[0].failed)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("sessions", "turns", "text"),
    [
        (3, 20, "x" * 2000),  # a session's events fill several record batches
        (130, 8, "x"),  # the round is cut into parts, two in the producer at a time
    ],
    ids=["record-batches", "parts"],
)
async def test_a_large_backlog_arrives_in_order(
    tansu: TansuBroker, tmp_path: Path, sessions: int, turns: int, text: str
) -> None:
    """A backlog committed before the relay starts (so one round takes it all) arrives
    complete and in order: sessions whose events fill several record batches of their
    partition, and more events than one sink call takes (the round goes out in parts)."""
    topic = f"conv-{uuid.uuid4().hex[:8]}"
    await create_topics(tansu.bootstrap, topic, partitions=2)
    section = kafka(tansu.bootstrap, topic)
    section["relay"] = {"poll_interval": 0.05, "sessions": 500, "batch": 200}
    settings = OutboundSettings.from_config(section)
    url = f"sqlite+aiosqlite:///{tmp_path}/b.db"
    async with SessionStore(url, events=recorder_for(settings)) as store:
        ids = []
        for i in range(sessions):
            record, _ = await store.create_session(Identity(f"u{i}"), channel="web")
            ids.append(record.id)
        for t in range(turns):
            fid = f"f{t}"
            await asyncio.gather(
                *(
                    store.append(sid, [reply(f"{t} {text}", fid)], turn=user_message(text, fid))
                    for sid in ids
                )
            )
        async with OutboundService(settings, store, ConnectorRegistry({})) as service:
            history = await expected_history(service, ids)
            records = await consume(tansu.bootstrap, topic, history.check().events)
            await eventually(lambda: _drained(service), message="the relay settled every delivery")
    for rec in records:
        history.record_event(conversation_pb2.ConversationEvent.FromString(rec.value))  # type: ignore[attr-defined]
    report = history.check()
    print(report.summary(f"outbound kafka backlog {sessions}x{turns}"))
    report.assert_clean()
    assert report.events == sessions * (2 * turns + 1)


async def _drained(service: OutboundService) -> bool:
    return (await service.status())[0].pending == 0
