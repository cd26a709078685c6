"""The live demo tells one story: the push and the next answer come from the same CRM row.

The demo's CDC feed runs on a real Tansu broker; the server consumes its
Debezium topics. A row changed in the demo CRM (as the warehouse, the bot or a
user with ``sqlite3`` would) is pushed to the subscribed session, and the
cached ``crm.order_status`` / ``erp.get_balance`` answers are dropped by the
event's key, so the next answer agrees with the push within the cache TTL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from talkwire.clients import ChatClient
from talkwire.server.app import Application
from talkwire.server.demo.events import demo_events, demo_events_config
from talkwire.v1 import chat_pb2
from tests.conftest import make_config

pytestmark = pytest.mark.kafka


@pytest.fixture
async def story(make_app: Any, tmp_path: Path) -> AsyncIterator[tuple[Application, Path]]:
    crm = tmp_path / "demo-crm.db"
    # The warehouse stays still here: the test changes the rows itself.
    async with demo_events(crm, interval=3600) as bootstrap:
        config = make_config(
            tmp_path,
            demo=True,
            server={"handler": "auto", "data_dir": str(tmp_path)},
            events=demo_events_config(bootstrap),
        )
        app: Application = await make_app(config)
        yield app, crm
        await app.aclose()


async def _until(session: Any, kind: str) -> chat_pb2.ConverseResponse:
    frame = await session.wait_for(lambda f: f.WhichOneof("frame") == kind, timeout=60)
    assert isinstance(frame, chat_pb2.ConverseResponse)
    return frame


async def test_a_crm_row_change_is_pushed_and_the_next_answer_agrees(
    story: tuple[Application, Path],
) -> None:
    app, crm = story
    async with ChatClient(app.target, token="alice-token") as client:
        session = await client.open(channel="web")
        await session.send("where is my order 1001")
        first = await _until(session, "reply")
        assert first.reply.text == "Order 1001 (Espresso machine) is shipped, ETA 2025-06-03."
        with sqlite3.connect(crm) as db:
            db.execute("UPDATE orders SET status = 'out for delivery' WHERE id = 1001")
        update = await _until(session, "update")
        assert update.update.key == "order:1001"
        assert update.update.text == "Order 1001 (Espresso machine) is now out for delivery."
        # Within the 30 s cache TTL: the event's key dropped the cached answer.
        await session.send("where is my order 1001")
        again = await _until(session, "reply")
        assert again.reply.text == (
            "Order 1001 (Espresso machine) is out for delivery, ETA 2025-06-03."
        )
        await session.aclose()


async def test_a_payment_is_pushed_as_the_new_balance(story: tuple[Application, Path]) -> None:
    app, _ = story
    async with ChatClient(app.target, token="alice-token") as client:
        session = await client.open(channel="web")
        await session.send("what's my balance")
        assert (await _until(session, "reply")).reply.text == "Your balance is 120.50 EUR."
        await session.send("I want to pay 20 EUR")
        await _until(session, "prompt")
        await session.send("yes")
        paid = await _until(session, "reply")
        assert paid.reply.text.endswith("Your balance is now 100.50 EUR.")
        update = await _until(session, "update")
        assert update.update.key == "balance:c-100"
        assert update.update.text == "Your balance is now 100.50 EUR."
        await session.send("what's my balance")
        assert (await _until(session, "reply")).reply.text == "Your balance is 100.50 EUR."
        await session.aclose()
