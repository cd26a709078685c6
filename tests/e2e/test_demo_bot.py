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


def _order_status(tmp_path: Path, order_id: int) -> str:
    with sqlite3.connect(tmp_path / "demo-crm.db") as db:
        row = db.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()
    return str(row[0])


async def test_cancel_order_asks_for_confirmation_then_cancels(
    alice: Any, tmp_path: Path, demo_app: Application
) -> None:
    await alice.send("cancel my order 1002")
    confirm = (await _answer(alice))[-1]
    assert confirm.WhichOneof("frame") == "prompt", "a write asks before it runs"
    assert confirm.prompt.slot == "_confirm"
    assert "1002" in confirm.prompt.text
    assert [q.intent for q in confirm.prompt.quick_replies] == ["_confirm", "_decline"]
    assert _order_status(tmp_path, 1002) == "processing", "nothing written before the yes"
    await alice.send("yes")
    reply = (await _answer(alice, "reply", "error"))[-1]
    assert reply.reply.text == "Order 1002 (Coffee beans 1kg) is cancelled."
    assert _order_status(tmp_path, 1002) == "cancelled"
    assert "order:1002" in await demo_app.store.subscriptions(alice.session_id)
    # The cached answer was dropped by nothing but time before; the row is the truth now.
    await alice.send("where is my order 1002")
    assert "cancelled" in (await _answer(alice, "reply"))[-1].reply.text


async def test_cancel_declined_with_the_no_button_writes_nothing(
    alice: Any, tmp_path: Path
) -> None:
    await alice.send("cancel order 1002")
    await _answer(alice)
    await alice.action("_decline", {})
    reply = (await _answer(alice, "reply"))[-1].reply
    assert reply.text == "OK, I won't do that."
    assert _order_status(tmp_path, 1002) == "processing"


async def test_a_delivered_or_foreign_order_is_not_cancelled(alice: Any, tmp_path: Path) -> None:
    await alice.send("cancel my order 2002")  # Bob's
    await _answer(alice)
    await alice.action("_confirm", {})
    reply = (await _answer(alice, "reply"))[-1].reply
    assert reply.text.startswith("I couldn't cancel order 2002")
    assert _order_status(tmp_path, 2002) == "backordered"


async def test_pay_asks_for_the_amount_confirms_and_shows_the_new_balance(
    alice: Any, tmp_path: Path
) -> None:
    await alice.send("I want to pay 20 EUR")
    confirm = (await _answer(alice))[-1]
    assert confirm.WhichOneof("frame") == "prompt"
    assert confirm.prompt.text == "Pay 20.00 towards your balance?"
    await alice.send("ok")
    reply = (await _answer(alice, "reply", "error"))[-1].reply
    assert reply.text.startswith("Paid 20.00 EUR (payment #")
    assert reply.text.endswith("Your balance is now 100.50 EUR.")
    with sqlite3.connect(tmp_path / "demo-crm.db") as db:
        (balance,) = db.execute(
            "SELECT balance FROM accounts WHERE customer_id = 'c-100'"
        ).fetchone()
    assert balance == pytest.approx(100.50), "the ERP writes the one demo database"
    await alice.send("what's my balance")
    assert (await _answer(alice, "reply"))[-1].reply.text == "Your balance is 100.50 EUR."


async def test_pay_without_an_amount_prompts_for_it(alice: Any) -> None:
    await alice.send("I'd like to make a payment")
    prompt = (await _answer(alice))[-1].prompt
    assert prompt.slot == "amount"
    await alice.send("15")
    confirm = (await _answer(alice))[-1].prompt
    assert confirm.text == "Pay 15.00 towards your balance?"


async def test_a_new_intent_interrupts_a_slot_prompt(alice: Any, tmp_path: Path) -> None:
    await alice.send("ticket status")
    prompt = (await _answer(alice))[-1]
    assert prompt.prompt.slot == "ticket_id"
    await alice.send("can I get a refund for order 1001?")
    reply = (await _answer(alice, "reply", "error"))[-1].reply
    assert "couldn't find ticket" not in reply.text
    assert "refund order 1001" in reply.text
    with sqlite3.connect(tmp_path / "demo-crm.db") as db:
        row = db.execute(
            "SELECT customer_id FROM tickets WHERE subject = 'Refund request for order 1001'"
        ).fetchone()
    assert row == ("c-100",)


async def test_a_bare_number_still_answers_the_slot_prompt(alice: Any) -> None:
    await alice.send("ticket status")
    await _answer(alice)
    await alice.send("1")
    reply = (await _answer(alice, "reply"))[-1].reply
    assert reply.text == "Ticket #1 (Espresso machine leaks) is open."


async def test_without_kafka_a_write_still_drops_the_cached_answer(alice: Any) -> None:
    await alice.send("what's my balance")
    assert (await _answer(alice, "reply"))[-1].reply.text == "Your balance is 120.50 EUR."
    await alice.send("where is my order 1002")
    assert "processing" in (await _answer(alice, "reply"))[-1].reply.text
    # Both answers are cached now (10 s / 30 s); the writes' `invalidate` keys drop them.
    await alice.send("I want to pay 20 EUR")
    await _answer(alice)
    await alice.send("yes")
    await _answer(alice, "reply")
    await alice.send("cancel my order 1002")
    await _answer(alice)
    await alice.send("yes")
    await _answer(alice, "reply")
    await alice.send("what's my balance")
    assert (await _answer(alice, "reply"))[-1].reply.text == "Your balance is 100.50 EUR."
    await alice.send("where is my order 1002")
    assert "cancelled" in (await _answer(alice, "reply"))[-1].reply.text


async def test_talk_to_a_person_queues_a_handoff_with_context(alice: Any) -> None:
    await alice.send("where is my order 1001")
    await _answer(alice, "reply")
    await alice.send("can I talk to a real person")
    frames = await _answer(alice, "handoff")  # the bot's reply, then the QUEUED frame
    assert [f.WhichOneof("frame") for f in frames[-2:]] == ["reply", "handoff"]
    assert frames[-2].reply.text == "Connecting you to a person. Someone will be with you shortly."
    handoff = frames[-1].handoff
    assert handoff.state == chat_pb2.HANDOFF_STATE_QUEUED
    assert (handoff.queue, handoff.reason, handoff.position) == ("general", "asked for a person", 1)
    # While queued the bot is quiet: the next words are stored for the agent, not answered.
    await alice.send("where is my order 1002")
    receipt = (await _answer(alice, "reply"))[-1].reply
    assert receipt.author.role == "user"
    assert receipt.text == "where is my order 1002"


async def test_a_closed_conversation_lands_in_the_crm_notes(
    alice: Any, demo_app: Application, tmp_path: Path
) -> None:
    from talkwire.clients import AdminClient
    from tests.support.waiting import eventually

    await alice.send("where is my order 1001")
    await _answer(alice, "reply")
    async with AdminClient(demo_app.target, token="admin-token") as admin:
        await admin.close_session(alice.session_id, reason="done")

    def notes() -> list[tuple[str, str, str]]:
        with sqlite3.connect(tmp_path / "demo-crm.db") as db:
            return db.execute("SELECT customer, session_id, body FROM notes").fetchall()

    [(customer, session_id, body)] = await eventually(notes, message="a CRM note")
    assert (customer, session_id) == ("alice", alice.session_id)
    assert "where is my order 1001" in body
    assert "Order 1001 (Espresso machine)" in body
