"""Kafka change events reach exactly the subscribed sessions, live and on resume."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from talkwire.clients import ChatClient
from talkwire.clients.events import EventProducer
from talkwire.server.app import Application
from tests.conftest import make_config
from tests.events.conftest import create_topics
from tests.support.broker import TansuBroker

pytestmark = pytest.mark.kafka


@pytest.fixture
async def kafka_app(make_app: Any, tmp_path: Path, tansu: TansuBroker) -> Application:
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    await create_topics(tansu.bootstrap, topic)
    events = {
        "bootstrap": tansu.bootstrap,
        "group_id": f"tw-{uuid.uuid4().hex[:8]}",
        "start": "earliest",
        "session_timeout": 2.0,
        "heartbeat_interval": 0.3,
        "topics": {
            topic: {
                "format": "json",
                "keys": ["order:{after.id}"],
                "update_text": "Order {after.id} is now {after.status}",
            }
        },
    }
    app: Application = await make_app(make_config(tmp_path, events=events))
    app.test_topic = topic  # type: ignore[attr-defined]
    return app


async def test_event_reaches_the_subscriber_only_and_once(kafka_app: Application) -> None:
    topic = kafka_app.test_topic  # type: ignore[attr-defined]
    async with (
        ChatClient(kafka_app.target, token="alice-token") as alice_client,
        ChatClient(kafka_app.target, token="bob-token") as bob_client,
        EventProducer(kafka_app.kafka.settings.bootstrap, topic=topic, format="json") as producer,  # type: ignore[union-attr]
    ):
        alice = await alice_client.open()
        bob = await bob_client.open()
        await alice.subscribe("order:1001")
        sub = await alice.next_frame(timeout=10)
        assert sub.subscription.key == "order:1001"
        await bob.subscribe("order:2001")
        await bob.next_frame(timeout=10)

        event = await producer.emit(
            "order.status_changed", ["order:1001"], after={"id": 1001, "status": "shipped"}
        )
        await producer.send(event)  # the same event twice makes one frame
        await producer.emit(
            "order.status_changed", ["order:1001"], after={"id": 1001, "status": "delivered"}
        )
        first = await alice.next_frame(timeout=20)
        second = await alice.next_frame(timeout=20)
        assert first.update.event_id == event.id
        assert first.update.text == "Order 1001 is now shipped"
        assert second.update.text == "Order 1001 is now delivered"
        assert second.seq == first.seq + 1
        # Bob (a different key) got nothing: his next frame is the pong to his ping.
        await bob.ping()
        assert (await bob.next_frame(timeout=10)).WhichOneof("frame") == "pong"
        await alice.aclose()
        await bob.aclose()


async def test_a_disconnected_session_gets_the_event_on_resume(kafka_app: Application) -> None:
    topic = kafka_app.test_topic  # type: ignore[attr-defined]
    async with ChatClient(kafka_app.target, token="alice-token") as client:
        session = await client.open()
        await session.subscribe("order:1002")
        await session.next_frame(timeout=10)
        session_id, token, last_seq = session.session_id, session.resume_token, session.last_seq
        await session.aclose()

    async with EventProducer(
        kafka_app.kafka.settings.bootstrap,
        topic=topic,
        format="json",  # type: ignore[union-attr]
    ) as producer:
        event = await producer.emit(
            "order.status_changed", ["order:1002"], after={"id": 1002, "status": "delayed"}
        )
    # Wait until the router committed the frame to the outbox (no client attached).
    async with asyncio.timeout(20):
        while not await kafka_app.store.frames_after(session_id, last_seq):
            await asyncio.sleep(0.05)

    async with ChatClient(kafka_app.target, token="alice-token") as client:
        resumed = await client.resume(session_id, token, last_seq=last_seq)
        frame = await resumed.next_frame(timeout=10)
        assert frame.update.event_id == event.id
        assert frame.update.text == "Order 1002 is now delayed"
        await resumed.aclose()
