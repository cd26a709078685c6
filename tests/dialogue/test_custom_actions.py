from __future__ import annotations

from typing import Any

import pytest

from talkwire.server.dialogue import ActionContext, DialogueEngine, load_bot
from talkwire.server.errors import ConfigError

from .conftest import Conversation, RecordingContext

BOT = {
    "bot": {
        "intents": {
            "summary": {
                "examples": ["summarise my account"],
                "action": {"custom": "summary", "params": {"who": "{user.customer_id}"}},
                "reply": "You have {result.orders} orders; balance {result.balance|num:2}.",
            },
            "shout": {
                "examples": ["shout order 1001"],
                "slots": {"order_id": {"type": "integer", "prompt": "Which order?"}},
                "action": {"custom": "shout"},
            },
        }
    }
}


async def summary(actx: ActionContext) -> dict[str, Any]:
    assert actx.params == {"who": "c-100"}
    orders = await actx.invoke("crm", "list_orders", {"customer_id": actx.params["who"]})
    balance = await actx.invoke("erp", "get_balance", {"customer_id": actx.params["who"]})
    return {"orders": len(orders), "balance": balance["balance"]}


def shout(actx: ActionContext) -> None:
    actx.reply(f"ORDER {actx.slots['order_id']}!")


async def test_custom_actions(registry: Any) -> None:
    engine = DialogueEngine(load_bot(BOT), registry, actions={"summary": summary, "shout": shout})
    conv = Conversation(engine, RecordingContext())
    frame = await conv.say("summarise my account")
    assert frame.text == "You have 2 orders; balance 120.50."
    frame = await conv.press("shout", order_id=1001)
    assert frame.text == "ORDER 1001!"


async def test_unknown_custom_action_and_connector(registry: Any) -> None:
    with pytest.raises(ConfigError, match=r"bot\.intents\.summary\.action\.custom.*'summary'"):
        DialogueEngine(load_bot(BOT), registry, actions={"shout": shout})
    bad = {"intents": {"x": {"examples": ["x"], "action": {"connector": "crmx", "operation": "y"}}}}
    with pytest.raises(ConfigError, match=r"bot\.intents\.x\.action\.connector.*'crmx'"):
        DialogueEngine(load_bot(bad), registry)
    bad["intents"]["x"]["action"]["connector"] = "crm"
    with pytest.raises(ConfigError, match=r"no operation 'y'"):
        DialogueEngine(load_bot(bad), registry)


async def test_both_subject_spellings_render_the_subject(registry: Any) -> None:
    """Bot params and replies: ``{user.sub}`` and deprecated ``{user.subject}`` agree."""
    seen: dict[str, Any] = {}

    def whoami(actx: ActionContext) -> dict[str, Any]:
        seen.update(actx.params)
        return {"ok": True}

    bot = {
        "intents": {
            "whoami": {
                "examples": ["who am i"],
                "action": {
                    "custom": "whoami",
                    "params": {"a": "{user.sub}", "b": "{user.subject}"},
                },
                "reply": "{user.sub} / {user.subject}",
            }
        }
    }
    engine = DialogueEngine(load_bot(bot), registry, actions={"whoami": whoami})
    frame = await Conversation(engine, RecordingContext()).say("who am i")
    assert frame.text == "alice / alice"
    assert seen == {"a": "alice", "b": "alice"}
