"""Scale-out with Kafka: one consumer group across three replicas.

Whichever replica consumes an event (partitions are shared), the update reaches
the session wherever it is attached, once.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from talkwire.clients.events import EventProducer
from talkwire.v1 import chat_pb2
from tests.events.conftest import create_topics
from tests.scaleout.cluster import Replica, replica_config
from tests.support.broker import TansuBroker
from tests.support.grpcx import Stream

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.kafka,
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(loop_scope="module")
async def kafka_cluster(
    scale_db: str, bus_prefix: str, tmp_path: Path, tansu: TansuBroker
) -> AsyncIterator[tuple[dict[str, Replica], str, str]]:
    topic = f"orders-{secrets.token_hex(4)}"
    await create_topics(tansu.bootstrap, topic, partitions=3)
    events = {
        "bootstrap": tansu.bootstrap,
        "group_id": f"talkwire-{secrets.token_hex(3)}",
        "start": "earliest",
        "poll_timeout": 0.2,
        "session_timeout": 2.0,  # Tansu completes a join only after session_timeout / 2
        "heartbeat_interval": 0.3,
        "topics": {topic: {"format": "protobuf"}},
    }
    run = secrets.token_hex(3)
    replicas = {
        name: Replica(
            name,
            tmp_path,
            replica_config(f"{name}-{run}", scale_db, bus_prefix, events=events),
        )
        for name in ("a", "b", "c")
    }
    try:
        await asyncio.gather(*(r.start() for r in replicas.values()))
        yield replicas, tansu.bootstrap, topic
    finally:
        await asyncio.gather(*(r.stop() for r in replicas.values()), return_exceptions=True)


async def test_events_reach_sessions_on_every_replica_whoever_consumes(
    kafka_cluster: tuple[dict[str, Replica], str, str],
) -> None:
    replicas, bootstrap, topic = kafka_cluster
    streams: dict[str, tuple[Stream, str]] = {}
    for i, (name, replica) in enumerate(replicas.items()):
        assert replica.channel is not None
        s = Stream(replica.channel, "alice-token")
        await s.open()
        key = f"order:{1000 + i}"
        await s.send(chat_pb2.ConverseRequest(id="sub", subscribe=chat_pb2.Subscribe(key=key)))
        assert (await s.recv()).subscription.key == key
        streams[name] = (s, key)
    n = 4
    async with EventProducer(bootstrap, topic=topic) as producer:
        for round_ in range(n):
            for _, key in streams.values():
                await producer.emit("order.updated", [key], text=f"{key} #{round_}")
    for name, (s, key) in streams.items():
        frames = [await s.recv(timeout=60) for _ in range(n)]
        got = [(f.seq, f.update.text) for f in frames]
        assert got == [(2 + r, f"{key} #{r}") for r in range(n)], name
    for s, _ in streams.values():
        s.cancel()
