"""`talkwire emit` (argument errors, Kafka path) and the demo feed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from talkwire.clients.emit import add_emit_command
from talkwire.server.demo.events import demo_events, demo_events_config
from talkwire.server.demo.warehouse import LIFECYCLE
from talkwire.server.events.decode import decode, struct_to_dict
from talkwire.server.events.routing import parse_topics
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


async def _next_record(bootstrap: str, topic: str) -> Any:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        return await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_demo_warehouse_changes_the_crm_and_cdc_emits_debezium(tmp_path: Path) -> None:
    crm = tmp_path / "demo-crm.db"
    async with demo_events(crm, interval=0.2) as bootstrap:
        cfg = demo_events_config(bootstrap)
        assert cfg["topics"]["demo.crm.orders"]["format"] == "debezium"
        record = await _next_record(bootstrap, "demo.crm.orders")
    event = decode("debezium", record.value, record.key, record.headers, topic=record.topic)
    assert event is not None
    assert event.type == "orders.update"
    before, after = struct_to_dict(event.before), struct_to_dict(event.after)
    assert json.loads(record.key) == {"id": after["id"]}
    assert before["id"] == after["id"]
    assert before["status"] != after["status"]
    with sqlite3.connect(crm) as db:
        (status,) = db.execute("SELECT status FROM orders WHERE id = ?", (after["id"],)).fetchone()
    # The warehouse may have moved it on since; the change was a real row change either way.
    assert after["status"] in LIFECYCLE
    assert status in LIFECYCLE


@pytest.mark.kafka
async def test_any_row_change_of_the_demo_crm_is_a_cdc_event(tmp_path: Path) -> None:
    crm = tmp_path / "demo-crm.db"
    async with demo_events(crm, interval=3600) as bootstrap:
        with sqlite3.connect(crm) as db:
            db.execute("UPDATE accounts SET balance = 99.5 WHERE customer_id = 'c-100'")
        record = await _next_record(bootstrap, "demo.crm.accounts")
    event = decode("debezium", record.value, record.key, record.headers, topic=record.topic)
    assert event is not None
    assert struct_to_dict(event.before)["balance"] == 120.5
    assert struct_to_dict(event.after)["balance"] == 99.5
    route = parse_topics(demo_events_config(bootstrap)["topics"])["demo.crm.accounts"]
    assert route.derive_keys(event) == ["balance:c-100"]
    assert route.render_text(event) == "Your balance is now 99.50 EUR."
