"""The Kafka ingress pipeline in one process, without a broker or gRPC: decode -> store -> feeds.

Run: ``python -m bench.events_pipeline [--events N] [--tmpfs] [--repeat R]``.

2,000 sessions, each subscribed to ``order:<i>`` and attached to the hub (a task
drains each feed, as a stream writer would, without the wire). A scripted
consumer hands the ingress's consume loop polls of 500 JSON change events (the
``events`` scenario's records), all available at once, so the loop runs at its
limit. Prints the wall rate and the process CPU per event (the figure that
survives a shared box) for each repeat. ``--tmpfs`` puts the SQLite file on
``/dev/shm`` (no disk in the way). Uses the ingress's internal consume loop:
a developer's measuring tool, not an API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from talkwire.server.cluster import LocalCluster
from talkwire.server.events.kafka import KafkaIngress
from talkwire.server.events.router import EventRouter
from talkwire.server.hub import Attachment, SessionHub
from talkwire.server.identity import Identity
from talkwire.server.metrics import Metrics
from talkwire.server.store import SessionStore

SESSIONS = 2000
POLL = 500
TP = TopicPartition("bench.orders", 0)
ROUTE = {
    "format": "json",
    "keys": ["order:{after.id}"],
    "update_text": "Order {after.id} is now {after.status}",
}


class _Consumer:
    """``getmany`` hands out the prepared polls, then empty ones."""

    def __init__(self, polls: list[dict[TopicPartition, list[Any]]]) -> None:
        self.polls = polls

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Any:
        if self.polls:
            return self.polls.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    def highwater(self, tp: TopicPartition) -> None:
        return None


def _polls(n: int, rng: random.Random) -> list[dict[TopicPartition, list[Any]]]:
    records = []
    for offset in range(n):
        i = rng.randrange(SESSIONS)
        doc = {
            "id": f"r-{uuid.uuid4().hex}",
            "type": "order.status_changed",
            "source": "bench",
            "op": "update",
            "after": {"id": i, "status": "shipped"},
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        records.append(
            SimpleNamespace(
                offset=offset, value=json.dumps(doc).encode(), key=f"order:{i}".encode(), headers=()
            )
        )
    return [{TP: records[i : i + POLL]} for i in range(0, n, POLL)]


async def _run(events: int, tmpfs: bool) -> dict[str, float]:
    tmp = tempfile.mkdtemp(dir="/dev/shm" if tmpfs else None)
    async with SessionStore(f"sqlite+aiosqlite:///{tmp}/bench.db") as store:
        await store.upgrade()
        async with SessionHub(store, LocalCluster("bench"), queue_size=8192) as hub:
            received = [0]

            async def drain(att: Attachment) -> None:
                async for _ in att.payloads():
                    received[0] += 1

            ident = Identity("bench")
            drains = []
            for i in range(SESSIONS):
                record, _ = await store.create_session(ident)
                await store.subscribe(record.id, f"order:{i}")
                drains.append(asyncio.create_task(drain(hub.attach(record.id, ident, after_seq=0))))
            cfg = {
                "bootstrap": "127.0.0.1:1",
                "group_id": "bench",
                "poll_timeout": 0.05,
                "topics": {TP.topic: ROUTE},
            }
            ingress = KafkaIngress(cfg, EventRouter(store, hub, metrics=Metrics()), store)
            consumer = _Consumer(_polls(events, random.Random(7)))
            t0, c0 = time.perf_counter(), time.process_time()
            task = asyncio.create_task(ingress._consume(consumer))  # type: ignore[arg-type]
            while received[0] < events:
                await asyncio.sleep(0.002)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            await ingress.aclose()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 5)
            for t in drains:
                t.cancel()
            return {
                "events_per_s": events / wall,
                "cpu_us_per_event": cpu / events * 1e6,
                "store_calls": float(ingress.batches),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmpfs", action="store_true", help="the SQLite file on /dev/shm")
    args = parser.parse_args()
    for _ in range(args.repeat):
        r = asyncio.run(_run(args.events, args.tmpfs))
        print(
            f"{args.events} events: {r['events_per_s']:,.0f}/s wall, "
            f"CPU {r['cpu_us_per_event']:.1f} us/event, {r['store_calls']:.0f} store calls"
        )


if __name__ == "__main__":
    main()
