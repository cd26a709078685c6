"""The Kafka ingress fetches and decodes ahead while a batch is in the store.

A scripted consumer (no broker) hands out polls; a gated store holds the first
transaction until the test releases it, so what was fetched meanwhile is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from talkwire.server.errors import UnavailableError
from talkwire.server.events.commits import OffsetCommitter
from talkwire.server.events.kafka import KafkaIngress
from talkwire.server.events.router import EventRouter
from talkwire.server.identity import Identity
from talkwire.server.store import SessionStore
from talkwire.v1 import chat_pb2
from tests.events.conftest import RecordingSink
from tests.support.waiting import eventually

TOPIC = "orders"
P0 = TopicPartition(TOPIC, 0)
P1 = TopicPartition(TOPIC, 1)


def _record(offset: int, order: int, status: str) -> SimpleNamespace:
    value = {"id": f"e-{order}-{status}", "after": {"id": order, "status": status}}
    return SimpleNamespace(offset=offset, value=json.dumps(value).encode(), key=None, headers=())


class ScriptedConsumer:
    """``getmany`` returns the queued polls one by one, then waits (empty polls)."""

    def __init__(self) -> None:
        self.polls: asyncio.Queue[dict[TopicPartition, list[Any]]] = asyncio.Queue()
        self.commits: list[dict[TopicPartition, int]] = []
        self.calls = 0

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Any:
        self.calls += 1
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.polls.get(), timeout_ms / 1000)
        return {}

    def highwater(self, tp: TopicPartition) -> None:
        return None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def committed(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for c in self.commits:
            out.update(c)
        return out


class GatedStore:
    """The real store; each ``fanout`` waits for ``gate`` and is recorded."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.gate = asyncio.Event()
        self.calls: list[list[str]] = []
        self.entered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def fanout(self, events: Any, **kwargs: Any) -> Any:
        self.calls.append([e.event_id for e in events])
        self.entered.set()
        await self.gate.wait()
        return await self._store.fanout(events, **kwargs)


@pytest.fixture
async def running(
    store: SessionStore, sink: RecordingSink
) -> AsyncIterator[tuple[KafkaIngress, ScriptedConsumer, GatedStore, dict[int, str]]]:
    sessions = {}
    for order in (1, 2):
        record, _ = await store.create_session(Identity(f"u{order}", {}))
        await store.subscribe(record.id, f"order:{order}")
        sessions[order] = record.id
    gated = GatedStore(store)
    cfg = {
        "bootstrap": "127.0.0.1:1",
        "group_id": "g",
        "poll_timeout": 0.05,
        "topics": {TOPIC: {"format": "json", "keys": ["order:{after.id}"]}},
    }
    ingress = KafkaIngress(cfg, EventRouter(gated, sink), store)  # type: ignore[arg-type]
    consumer = ScriptedConsumer()
    async with OffsetCommitter(consumer.commit) as commits:
        ingress._commits = commits
        task = asyncio.create_task(ingress._consume(consumer))  # type: ignore[arg-type]
        try:
            yield ingress, consumer, gated, sessions
        finally:
            gated.gate.set()
            await ingress.aclose()
            await asyncio.wait_for(task, 10)


def _updates(sink: RecordingSink, session_id: str) -> list[tuple[int, str]]:
    out = []
    for f in sink.frames(session_id):
        update = chat_pb2.ConverseResponse.FromString(f.payload).update
        out.append((f.seq, update.event_id))
    return out


async def test_polls_fetched_while_the_store_is_busy_are_stored_together_in_order(
    running: tuple[KafkaIngress, ScriptedConsumer, GatedStore, dict[int, str]],
    sink: RecordingSink,
) -> None:
    ingress, consumer, gated, sessions = running
    consumer.polls.put_nowait({P0: [_record(0, 1, "a")]})
    await gated.entered.wait()  # the first poll is in the store, held there
    for offset, status in enumerate("bcd", start=1):
        consumer.polls.put_nowait({P0: [_record(offset, 1, status)]})
    consumer.polls.put_nowait({P1: [_record(0, 2, "x")]})
    await eventually(lambda: consumer.polls.empty(), message="every poll fetched")
    gated.gate.set()
    await eventually(lambda: ingress.records == 5, message="every record stored")
    # one transaction for the first poll, one for the four fetched meanwhile
    assert gated.calls == [["e-1-a"], ["e-1-b", "e-1-c", "e-1-d", "e-2-x"]]
    assert _updates(sink, sessions[1]) == [(1, "e-1-a"), (2, "e-1-b"), (3, "e-1-c"), (4, "e-1-d")]
    assert _updates(sink, sessions[2]) == [(1, "e-2-x")]
    await eventually(lambda: consumer.committed() == {P0: 4, P1: 1}, message="offsets committed")


async def test_a_revoked_partition_is_dropped_from_what_waits_for_the_store(
    running: tuple[KafkaIngress, ScriptedConsumer, GatedStore, dict[int, str]],
    sink: RecordingSink,
) -> None:
    ingress, consumer, gated, sessions = running
    consumer.polls.put_nowait({P0: [_record(0, 1, "a")]})
    await gated.entered.wait()
    consumer.polls.put_nowait({P0: [_record(1, 1, "b")], P1: [_record(0, 2, "x")]})
    await eventually(lambda: consumer.polls.empty(), message="second poll fetched")
    await ingress._on_revoked({P0})  # the rebalance listener, while both wait
    gated.gate.set()
    await eventually(lambda: ingress.records == 3, message="both polls handled")
    # stored before the revoke: stored, but its offset is not committed; the
    # waiting record of P0 is dropped (the next owner re-reads both)
    assert gated.calls == [["e-1-a"], ["e-2-x"]]
    assert _updates(sink, sessions[1]) == [(1, "e-1-a")]
    await eventually(lambda: consumer.committed() == {P1: 1}, message="P1 committed")
    # assigned again: re-read from the committed offset; a poll fetched now keeps P0
    ingress._on_assigned({P0, P1})
    consumer.polls.put_nowait({P0: [_record(0, 1, "a"), _record(1, 1, "b")]})
    await eventually(lambda: consumer.committed().get(P0) == 2, message="P0 committed")
    assert _updates(sink, sessions[1]) == [(1, "e-1-a"), (2, "e-1-b")]  # e-1-a deduplicated


class DownStore:
    """The real store with ``fanout`` failing as if the database were down."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def fanout(self, events: Any, **kwargs: Any) -> Any:
        self.failures += 1
        raise UnavailableError("session store unavailable: simulated outage")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_empty_polls_behind_a_failing_store_are_no_progress(
    store: SessionStore, sink: RecordingSink
) -> None:
    """The stall watchdog still fires while a batch retries: the fetcher keeps
    polling, but an empty poll counts as progress only when nothing waits."""
    down, clock = DownStore(store), Clock()
    cfg = {
        "bootstrap": "127.0.0.1:1",
        "group_id": "g",
        "poll_timeout": 0.01,
        "retry_initial": 0.01,
        "retry_max": 0.02,
        "stall_after": 10,
        "topics": {TOPIC: {"format": "json", "keys": ["order:{after.id}"]}},
    }
    ingress = KafkaIngress(cfg, EventRouter(down, sink), store, clock=clock)  # type: ignore[arg-type]
    consumer = ScriptedConsumer()
    consumer.polls.put_nowait({P0: [_record(0, 1, "a")]})
    task = asyncio.create_task(ingress._consume(consumer))  # type: ignore[arg-type]
    try:
        await eventually(lambda: down.failures >= 1, message="the batch is retrying")
        clock.now = 100.0
        polled = consumer.calls
        await eventually(lambda: consumer.calls >= polled + 3, message="more empty polls")
        assert down.failures >= 2
        assert not ingress._health.fresh
        assert ingress.batches == 0
    finally:
        await ingress.aclose()
        await asyncio.wait_for(task, 10)
