"""Start order: chat is served whatever the Kafka consumer is doing.

* **Broker absent at start.** ``talkwire serve`` (a real subprocess) is started
  with ``events.bootstrap`` pointing at a port where no broker listens yet. It
  must print its ready line, answer a chat turn, and report ``talkwire.events``
  ``NOT_SERVING`` (liveness ``""`` ``SERVING``). Then Tansu starts on that port:
  the consumer's retries reach it, ``talkwire.events`` turns ``SERVING``, and an
  event produced afterwards is pushed into a subscribed session.
* **Join in progress.** The broker is up but the group join takes long: chat is
  served meanwhile and stopping does not wait for the join.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka.errors import TopicAlreadyExistsError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkwire.clients import ChatClient
from talkwire.clients.events import EventProducer
from talkwire.server.app import Application
from tests.conftest import make_config
from tests.events.conftest import create_topics
from tests.reliability.conftest import base_config, chat_client, sqlite_url
from tests.reliability.test_kafka_faults import kafka_events
from tests.support.broker import TansuBroker, free_port
from tests.support.server_proc import ServerProcess
from tests.support.waiting import eventually

pytestmark = [pytest.mark.kafka]

Status = health_pb2.HealthCheckResponse


async def health(target: str, service: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


async def test_server_serves_chat_before_the_broker_exists_and_joins_when_it_comes(
    tmp_path: Path,
) -> None:
    broker = TansuBroker(port=free_port())  # not started yet: nothing listens there
    topic = f"orders-{secrets.token_hex(4)}"
    config = base_config(sqlite_url(tmp_path / "s.db"))
    config["events"] = kafka_events(broker.bootstrap, topic, f"tw-{secrets.token_hex(4)}")
    config["events"].update(retry_initial=0.2, retry_max=1.0)
    server = ServerProcess(config, workdir=tmp_path)
    client = chat_client(server.target)
    try:
        await server.start()  # the ready line came although no broker answers
        async with client:
            session = await client.open(channel="test")
            await session.send("hello")
            reply = await session.wait_for(lambda f: f.WhichOneof("frame") == "reply", timeout=10)
            assert reply.reply.text
            await session.subscribe("order:7")
            await session.wait_for(lambda f: f.WhichOneof("frame") == "subscription", timeout=10)

            assert await health(server.target, "") == Status.SERVING
            assert await health(server.target, "talkwire.events") == Status.NOT_SERVING
            await eventually(
                lambda: "not reachable (attempt 2)" in server.log_text(),
                message="the consumer retrying the absent broker",
            )
            await asyncio.to_thread(broker.start)
            with contextlib.suppress(TopicAlreadyExistsError):
                await create_topics(broker.bootstrap, topic)

            async def serving() -> bool:
                return await health(server.target, "talkwire.events") == Status.SERVING

            await eventually(serving, timeout=30, message="talkwire.events SERVING")
            async with EventProducer(broker.bootstrap, topic=topic, format="json") as producer:
                event = await producer.emit(
                    "order.status_changed", ["order:7"], after={"id": 7, "status": "shipped"}
                )
            update = await session.wait_for(lambda f: f.WhichOneof("frame") == "update", timeout=30)
            assert update.update.event_id == event.id
            assert update.update.text == "Order 7 is now shipped"
            assert server.running, server.log_tail()
            await session.aclose()
    finally:
        await server.kill()
        broker.stop()


async def test_chat_is_served_while_the_consumer_is_still_joining(
    make_app: Any, tmp_path: Path, tansu: TansuBroker
) -> None:
    """Start-up does not wait for the partition assignment.

    Tansu completes a group join only after ``session_timeout / 2`` (here 30 s):
    the server must answer chat and report ``talkwire.events`` ``NOT_SERVING``
    meanwhile, and stop at once without waiting for the join.
    """
    topic = f"orders-{secrets.token_hex(4)}"
    await create_topics(tansu.bootstrap, topic)
    events = kafka_events(tansu.bootstrap, topic, f"tw-{secrets.token_hex(4)}")
    events.update(session_timeout=60.0, heartbeat_interval=1.0)
    app: Application = await make_app(make_config(tmp_path, events=events))
    assert app.kafka is not None
    async with ChatClient(app.target, token="alice-token") as client:
        session = await client.open()
        await session.send("hello")
        reply = await session.wait_for(lambda f: f.WhichOneof("frame") == "reply", timeout=10)
        assert reply.reply.text
        await session.aclose()
    assert await health(app.target, "talkwire.events") == Status.NOT_SERVING
    assert not app.kafka.joined
    await app.aclose()  # cancels the join in progress
    assert not app.kafka.running
