"""The demo bot end to end: real gRPC server, the client library, SQL and REST connectors."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from talkwire.clients import ChatClient
from talkwire.server.app import Application
from talkwire.v1 import chat_pb2


@pytest.fixture
async def alice(demo_app: Application) -> AsyncIterator[Any]:
    async with ChatClient(demo_app.target, token="alice-token") as client:
        session = await client.open(channel="web")
        yield session
        await session.aclose()


async def _answer(session: Any, *kinds: str) -> list[chat_pb2.ConverseResponse]:
    """Frames up to and including the first reply/prompt/error (the turn's answer)."""
    frames = []
    while True:
        frame = await session.next_frame(timeout=10)
        frames.append(frame)
        if frame.WhichOneof("frame") in (kinds or ("reply", "prompt", "error")):
            return frames


async def test_order_status_in_words_subscribes_to_the_order(
    alice: Any, demo_app: Application
) -> None:
    await alice.send("where is my order 1001")
    frames = await _answer(alice)
    reply = frames[-1].reply
    assert "1001" in reply.text
    assert "shipped" in reply.text
    subs = [f.subscription.key for f in frames if f.WhichOneof("frame") == "subscription"]
    assert subs == ["order:1001"]
    assert await demo_app.store.subscriptions(alice.session_id) == ["order:1001"]


async def test_missing_order_number_is_prompted_then_filled(alice: Any) -> None:
    await alice.send("where is my order")
    prompt = (await _answer(alice))[-1]
    assert prompt.WhichOneof("frame") == "prompt"
    assert prompt.prompt.slot == "order_id"
    await alice.send("1001")
    reply = (await _answer(alice, "reply"))[-1].reply
    assert "1001" in reply.text
    assert "shipped" in reply.text


async def test_balance_comes_from_the_rest_erp(alice: Any) -> None:
    await alice.send("what's my balance")
    reply = (await _answer(alice))[-1].reply
    assert reply.text == "Your balance is 120.50 EUR."


async def test_open_ticket_writes_a_row(alice: Any, tmp_path: Path) -> None:
    await alice.send("open a ticket: printer broken")
    reply = (await _answer(alice))[-1].reply
    with sqlite3.connect(tmp_path / "demo-crm.db") as db:
        row = db.execute(
            "SELECT id, customer_id FROM tickets WHERE subject = 'printer broken'"
        ).fetchone()
    assert row is not None
    assert row[1] == "c-100"
    assert f"#{row[0]}" in reply.text


async def test_no_intent_falls_back_with_suggestions(alice: Any) -> None:
    await alice.send("purple elephants dance quietly")
    reply = (await _answer(alice))[-1].reply
    assert reply.quick_replies, "the fallback offers what the bot can do"
    assert {qr.intent for qr in reply.quick_replies} >= {"balance", "order_status"}


async def test_button_action_gives_the_same_answer_as_words(alice: Any) -> None:
    await alice.send("where is my order 1001")
    by_words = (await _answer(alice, "reply"))[-1].reply.text
    await alice.action("order_status", {"order_id": 1001})
    by_button = (await _answer(alice, "reply"))[-1].reply.text
    assert by_button == by_words


async def test_customer_cannot_see_another_customers_order(
    alice: Any, demo_app: Application
) -> None:
    await alice.send("where is my order 2001")  # 2001 belongs to Bob (c-200)
    frames = await _answer(alice)
    assert "couldn't find" in frames[-1].reply.text
    assert "order:2001" not in await demo_app.store.subscriptions(alice.session_id)
    # Subscribing directly is refused by the policy too.
    await alice.subscribe("order:2001")
    error = (await _answer(alice, "error"))[-1].error
    assert error.code == "PERMISSION_DENIED"
