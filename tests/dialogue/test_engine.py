"""The dialogue engine over the REAL demo connectors (SQLite CRM, REST ERP on loopback)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import grpc

from talkwire.server.dialogue import DialogueEngine
from talkwire.server.dialogue.engine import STATE_KEY

from .conftest import ALICE, Conversation, RecordingContext


async def test_order_status_in_one_sentence_subscribes(alice: Conversation) -> None:
    frame = await alice.say("where is my order 1001")
    assert frame.kind == "reply"
    assert frame.text == "Order 1001 (Espresso machine) is shipped, ETA 2025-06-03."
    assert frame.intent == "order_status"
    assert alice.ctx.subscriptions == ["order:1001"]
    assert frame.data is not None
    assert frame.data["result"]["status"] == "shipped"
    assert [q.intent for q in frame.quick_replies] == ["list_orders", "open_ticket"]
    assert frame.quick_replies[1].parameters == {"subject": "Order 1001"}


async def test_order_status_multi_turn_via_state(alice: Conversation) -> None:
    prompt = await alice.say("where is my order")
    assert prompt.kind == "prompt"
    assert prompt.slot == "order_id"
    assert prompt.intent == "order_status"
    assert alice.ctx.subscriptions == []
    # the pending question lives in the (JSON) dialogue state the core persists
    import json

    saved = json.loads(json.dumps(dict(alice.ctx.state)))
    assert saved[STATE_KEY]["pending"]["awaiting"] == "order_id"
    # a "restarted" engine with only the persisted state continues the dialogue
    fresh = Conversation(alice.engine, RecordingContext(identity=ALICE, state=saved))
    answer = await fresh.say("1001")
    assert answer.text == "Order 1001 (Espresso machine) is shipped, ETA 2025-06-03."
    assert fresh.ctx.subscriptions == ["order:1001"]
    assert "pending" not in fresh.ctx.state[STATE_KEY]


async def test_bad_answer_reprompts_then_cancel(alice: Conversation) -> None:
    await alice.say("track my order")
    again = await alice.say("hmm not sure")
    assert again.kind == "prompt"
    assert again.text.startswith("That doesn't look like an order number.")
    done = await alice.say("cancel")
    assert done.kind == "reply"
    assert "leave it there" in done.text
    assert "pending" not in alice.ctx.state[STATE_KEY]


async def test_topic_switch_while_prompted(alice: Conversation) -> None:
    await alice.say("where is my order")
    frame = await alice.say("what's my balance")
    assert frame.intent == "balance"
    assert frame.text.startswith("Your balance is")


async def test_balance_from_rest_erp_with_thousands(alice: Conversation, crm_db: Path) -> None:
    frame = await alice.say("what's my balance")
    assert frame.text == "Your balance is 120.50 EUR."
    with sqlite3.connect(crm_db) as db:
        db.execute("UPDATE accounts SET balance = 1234.5 WHERE customer_id = 'c-100'")
    alice.engine.connectors.invalidate(["balance:c-100"])
    frame = await alice.say("how much money is in my account")
    assert frame.text == "Your balance is 1,234.50 EUR."


async def test_open_ticket_writes_a_row(alice: Conversation, crm_db: Path) -> None:
    frame = await alice.say("open a ticket: printer broken")
    assert frame.kind == "reply", frame
    with sqlite3.connect(crm_db) as db:
        rows = db.execute(
            "SELECT id, customer_id, status FROM tickets WHERE subject = 'printer broken'"
        ).fetchall()
    assert len(rows) == 1
    ticket_id, customer, status = rows[0]
    assert (customer, status) == ("c-100", "open")
    assert f"ticket #{ticket_id}" in frame.text
    assert f"ticket:{ticket_id}" in alice.ctx.subscriptions
    # the button offered with the reply checks that ticket
    button = frame.quick_replies[0]
    assert (button.intent, button.parameters) == ("ticket_status", {"ticket_id": ticket_id})
    status_frame = await alice.press(button.intent, **button.parameters)
    assert status_frame.text == f"Ticket #{ticket_id} (printer broken) is open."


async def test_open_ticket_asks_for_subject(alice: Conversation, crm_db: Path) -> None:
    prompt = await alice.say("I want to open a support ticket")
    assert (prompt.kind, prompt.slot) == ("prompt", "subject")
    frame = await alice.say("The coffee grinder makes a loud noise")
    assert frame.kind == "reply"
    with sqlite3.connect(crm_db) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM tickets WHERE subject = 'The coffee grinder makes a loud noise'"
        ).fetchone()
    assert count == 1


async def test_fallback_with_suggestions(alice: Conversation) -> None:
    frame = await alice.say("blorp zzyx quux")
    assert frame.kind == "reply"
    assert frame.intent == "fallback"
    intents = [q.intent for q in frame.quick_replies]
    assert {"balance", "order_status", "open_ticket", "help"} <= set(intents)
    assert all(q.label for q in frame.quick_replies)


async def test_help_lists_what_the_bot_does(alice: Conversation) -> None:
    frame = await alice.say("what can you do")
    assert frame.intent == "help"
    assert "balance" in frame.text
    assert "order_status" in [q.intent for q in frame.quick_replies]


async def test_action_frame_equals_words(engine: DialogueEngine) -> None:
    words = Conversation(engine, RecordingContext())
    button = Conversation(engine, RecordingContext(session_id="s-3"))
    by_words = await words.say("where is my order 1001")
    by_button = await button.press("order_status", order_id="1001")
    assert by_button.text == by_words.text
    assert button.ctx.subscriptions == words.ctx.subscriptions == ["order:1001"]
    # parameters of an action frame are validated like words
    bad = await button.press("order_status", order_id="abc")
    assert (bad.kind, bad.slot) == ("prompt", "order_id")
    unknown = await button.press("drop_tables")
    assert (unknown.kind, unknown.code) == ("error", grpc.StatusCode.INVALID_ARGUMENT)


async def test_action_frame_cannot_override_identity(alice: Conversation) -> None:
    frame = await alice.press("order_status", order_id=2001, customer_id="c-200")
    assert frame.text == "I couldn't find order 2001."


async def test_customer_scoping(alice: Conversation, bob: Conversation) -> None:
    frame = await alice.say("where is my order 2001")
    assert frame.kind == "reply"
    assert frame.text == "I couldn't find order 2001."
    assert "Standing desk" not in frame.text
    assert alice.ctx.subscriptions == []  # nothing found, nothing subscribed
    mine = await bob.say("where is my order 2001")
    assert mine.text == "Order 2001 (Standing desk) is delivered, ETA 2025-05-20."


async def test_list_orders_renders_rows(alice: Conversation) -> None:
    frame = await alice.say("show my orders")
    assert frame.text == (
        "Your orders:\n#1001 Espresso machine: shipped\n#1002 Coffee beans 1kg: processing"
    )


async def test_missing_claim_is_denied_not_crashed(engine: DialogueEngine) -> None:
    from talkwire.server.identity import Identity

    anon = Conversation(engine, RecordingContext(identity=Identity("anon")))
    frame = await anon.say("what's my balance")
    assert (frame.kind, frame.code) == ("error", grpc.StatusCode.PERMISSION_DENIED)


async def test_refused_subscription_still_answers(engine: DialogueEngine) -> None:
    conv = Conversation(engine, RecordingContext(denied_prefixes=("order:",)))
    frame = await conv.say("where is my order 1001")
    assert frame.text.startswith("Order 1001")
    assert conv.ctx.subscriptions == []


async def test_connector_failure_is_a_friendly_retriable_error(
    bot: Any, crm_url: str, alice: Conversation
) -> None:
    # an ERP that is not listening: the REST connector fails with UNAVAILABLE
    import socket

    from talkwire.connectors.registry import ConnectorRegistry
    from talkwire.server.demo.connectors import demo_connector_sections

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    sections = demo_connector_sections(crm_url, dead)
    sections["erp"]["retries"] = {"attempts": 1}
    async with ConnectorRegistry(sections) as registry:
        conv = Conversation(DialogueEngine(bot, registry), RecordingContext())
        frame = await conv.say("what's my balance")
        assert frame.kind == "error"
        assert frame.code == grpc.StatusCode.UNAVAILABLE
        assert frame.retriable is True
        assert "try again" in frame.text
        assert "127.0.0.1" not in frame.text
        # the session goes on
        ok = await conv.say("where is my order 1001")
        assert ok.text.startswith("Order 1001")


async def test_clarifying_question_on_a_tie(engine: DialogueEngine) -> None:
    from talkwire.server.dialogue.matcher import Candidate, MatchResult

    class TieMatcher:
        def match(self, text: str) -> MatchResult:
            cands = (Candidate("order_status", 0.61), Candidate("list_orders", 0.6))
            return MatchResult("order_status", 0.61, cands)

    tie = DialogueEngine(engine.bot, engine.connectors, TieMatcher())
    conv = Conversation(tie, RecordingContext())
    frame = await conv.say("orders 1001 please")
    assert frame.intent == "clarify"
    assert [(q.intent, dict(q.parameters)) for q in frame.quick_replies] == [
        ("order_status", {"order_id": 1001}),
        ("list_orders", {}),
    ]
    answer = await conv.press("order_status", **frame.quick_replies[0].parameters)
    assert answer.text.startswith("Order 1001 (Espresso machine)")


async def test_a_clearly_different_intent_interrupts_a_slot_prompt(
    alice: Conversation, crm_db: Path
) -> None:
    prompt = await alice.say("ticket status")
    assert (prompt.kind, prompt.slot) == ("prompt", "ticket_id")
    # "1001" would fit the ticket_id slot, but the sentence asks for something else.
    frame = await alice.say("can I get a refund for order 1001?")
    assert frame.kind == "reply"
    assert frame.intent == "refund"
    assert "couldn't find ticket" not in frame.text
    with sqlite3.connect(crm_db) as db:
        assert db.execute(
            "SELECT count(*) FROM tickets WHERE subject = 'Refund request for order 1001'"
        ).fetchone() == (1,)


async def test_a_value_with_filler_words_still_answers_the_prompt(alice: Conversation) -> None:
    await alice.say("where is my order")
    frame = await alice.say("it's order 1001")
    assert frame.intent == "order_status"
    assert frame.text.startswith("Order 1001 (Espresso machine) is")


async def test_confirmation_survives_a_restart_and_another_intent_interrupts_it(
    alice: Conversation, crm_db: Path
) -> None:
    import json

    confirm = await alice.say("cancel my order 1002")
    assert (confirm.kind, confirm.slot) == ("prompt", "_confirm")
    saved = json.loads(json.dumps(dict(alice.ctx.state)))
    fresh = Conversation(alice.engine, RecordingContext(identity=ALICE, state=saved))
    again = await fresh.say("hmm")
    assert again.text.startswith("Please answer yes or no.")
    other = await fresh.say("what's my balance")
    assert other.intent == "balance"
    with sqlite3.connect(crm_db) as db:
        assert db.execute("SELECT status FROM orders WHERE id = 1002").fetchone() == (
            "processing",
        ), "an interrupted confirmation writes nothing"
    nothing = await fresh.say("yes")
    assert nothing.intent != "cancel_order"
