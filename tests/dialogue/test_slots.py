from __future__ import annotations

import datetime as dt
from typing import Any

from talkwire.server.dialogue import DialogueEngine, load_bot
from talkwire.server.dialogue.definition import SlotDef
from talkwire.server.dialogue.slots import MISSING, extract, validate

from .conftest import Conversation, RecordingContext


def slot(name: str, spec: dict[str, Any]) -> SlotDef:
    bot = load_bot({"slots": {name: spec}, "intents": {"x": {"reply": "x", "slots": [name]}}})
    return bot.intents["x"].slots[0]


async def test_extractors() -> None:
    today = dt.date(2026, 3, 10)
    date = slot("day", {"type": "date"})
    for text, want in [
        ("deliver it on 2026-12-01", "2026-12-01"),
        ("tomorrow please", "2026-03-11"),
        ("on 5/4/2026", "2026-04-05"),
        ("3rd of... no, 4 june", "2026-06-04"),
        ("march 7, 2027", "2027-03-07"),
    ]:
        assert await extract(date, text, prompted=False, today=today) == want, text
    assert await extract(date, "no date here", prompted=True, today=today) is MISSING

    colour = slot("colour", {"type": "enum", "values": {"red": ["crimson"], "dark blue": []}})
    assert await extract(colour, "I like CRIMSON", prompted=False) == "red"
    assert await extract(colour, "the dark blue one", prompted=False) == "dark blue"
    assert await extract(colour, "bluish", prompted=False) is MISSING

    number = slot("n", {"type": "number", "validate": {"min": 1, "max": 10}})
    assert await extract(number, "about 2.5 kg", prompted=False) == 2.5
    assert validate(number, 5)
    assert not validate(number, 11)

    code = slot("code", {"type": "regex", "pattern": "\\b(?P<value>[A-Z]{2}-\\d{4})\\b"})
    assert await extract(code, "voucher ab-1234 please", prompted=False) == "ab-1234"

    text = slot("note", {"type": "text", "validate": {"max_length": 5}})
    assert await extract(text, "anything", prompted=False) is MISSING
    assert await extract(text, " hello ", prompted=True) == "hello"
    assert not validate(text, "too long")


async def test_entity_slot_looks_up_through_a_connector(registry: Any) -> None:
    bot = load_bot(
        {
            "intents": {
                "pick": {
                    "examples": ["pick an order"],
                    "slots": {
                        "order": {
                            "type": "entity",
                            "pattern": "order (\\w+)",
                            "prompt": "Which order?",
                            "lookup": {
                                "connector": "crm",
                                "operation": "order_status",
                                "params": {
                                    "order_id": "{value}",
                                    "customer_id": "{user.customer_id}",
                                },
                                "field": "item",
                            },
                        }
                    },
                    "reply": "You picked {order}.",
                }
            }
        }
    )
    conv = Conversation(DialogueEngine(bot, registry), RecordingContext())
    assert (await conv.say("pick order 1002")).text == "You picked Coffee beans 1kg."
    prompt = await conv.say("pick order 2001")  # Bob's order: not an entity Alice can use
    assert (prompt.kind, prompt.slot) == ("prompt", "order")
    assert (await conv.say("1001")).text == "You picked Espresso machine."
