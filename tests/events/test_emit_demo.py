"""`talkwire emit` (argument errors, Kafka path) and the demo feed."""

from __future__ import annotations

import argparse
import asyncio

import pytest
from aiokafka import AIOKafkaConsumer

from talkwire.clients.emit import add_emit_command
from talkwire.server.demo.events import demo_events, demo_events_config
from talkwire.server.events.decode import decode, struct_to_dict
from tests.events.conftest import create_topics


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="talkwire")
    add_emit_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_emit_bad_json_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(
        [
            "emit",
            "--bootstrap",
            "x:1",
            "--topic",
            "t",
            "--type",
            "t",
            "--key",
            "k",
            "--after",
            "{nope",
        ]
    )
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("talkwire emit: --after: not valid JSON")
    assert len(err.strip().splitlines()) == 1


def test_emit_unreachable_broker_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(
        [
            "emit",
            "--bootstrap",
            "127.0.0.1:1",
            "--topic",
            "t",
            "--type",
            "t",
            "--key",
            "k",
            "--timeout",
            "2",
        ]
    )
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("talkwire emit: ")
    assert "Traceback" not in err


@pytest.mark.kafka
async def test_emit_to_kafka(kafka_bootstrap: str, topic_name: str) -> None:
    await create_topics(kafka_bootstrap, topic_name)
    args = _parse(
        [
            "emit",
            "--bootstrap",
            kafka_bootstrap,
            "--topic",
            topic_name,
            "--format",
            "json",
            "--type",
            "order.status_changed",
            "--key",
            "order:1001",
            "--after",
            '{"id": 1001, "status": "shipped"}',
        ]
    )
    assert await asyncio.to_thread(args.func, args) == 0
    consumer = AIOKafkaConsumer(
        topic_name, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 20)
    finally:
        await consumer.stop()
    assert record.key == b"order:1001"
    event = decode("json", record.value, record.key, record.headers)
    assert event is not None
    assert struct_to_dict(event.after) == {"id": 1001, "status": "shipped"}


@pytest.mark.kafka
async def test_demo_events_produces_order_updates() -> None:
    async with demo_events(interval=0.05) as bootstrap:
        cfg = demo_events_config(bootstrap)
        (topic,) = cfg["topics"]
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 20)
        finally:
            await consumer.stop()
    event = decode("json", record.value)
    assert event is not None
    assert event.text.startswith("Order 1001 is now ")
    assert list(event.keys) == ["order:1001"]
