"""Fixtures for the change-event tests: a real Tansu broker, a SQLite store, a recording sink."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from talkwire.server.frames import StoredFrame
from talkwire.server.store import SessionStore
from tests.support.broker import TansuBroker


class RecordingSink:
    """A FrameSink that remembers every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, list[StoredFrame]]] = []

    def deliver(self, frames: Mapping[str, Sequence[StoredFrame]]) -> None:
        self.deliveries.append({k: list(v) for k, v in frames.items()})

    def frames(self, session_id: str) -> list[StoredFrame]:
        return [f for d in self.deliveries for f in d.get(session_id, [])]

    @property
    def sessions(self) -> set[str]:
        return {s for d in self.deliveries for s in d}


@pytest.fixture
def kafka_bootstrap(tansu: TansuBroker) -> str:
    return tansu.bootstrap


async def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    async with SessionStore("sqlite+aiosqlite:///" + str(tmp_path / "s.db")) as s:
        yield s


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()
