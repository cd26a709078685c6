from __future__ import annotations

from pathlib import Path

import pytest

from talkwire.server.dialogue import demo_bot_path, load_bot, load_bot_text
from talkwire.server.errors import ConfigError

GOOD = """\
bot:
  name: t
  slots:
    order_id: {type: integer, prompt: "Which order?"}
  intents:
    status:
      examples: [where is my order]
      slots: [order_id]
      action:
        connector: crm
        operation: order_status
        params: {order_id: "{order_id}", customer_id: "{user.customer_id}"}
      reply: "Order {order_id} is {result.status}."
"""


def test_demo_bot_loads() -> None:
    bot = load_bot(demo_bot_path())
    assert {"balance", "order_status", "open_ticket", "ticket_status", "list_orders", "help"} <= (
        set(bot.intents)
    )
    assert bot.help_intent == "help"
    assert bot.llm is None  # the LLM policy is off by default
    order = bot.intents["order_status"]
    assert [s.name for s in order.slots] == ["order_id"]
    assert order.action is not None
    assert order.action.connector == "crm"


def test_loads_from_mapping_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(GOOD)
    assert set(load_bot(path).intents) == {"status"}
    assert set(load_bot(str(path)).intents) == {"status"}
    import yaml

    data = yaml.safe_load(GOOD)
    assert set(load_bot(data).intents) == {"status"}
    assert set(load_bot(data["bot"]).intents) == {"status"}


@pytest.mark.parametrize(
    ("old", "new", "key", "line"),
    [
        ("      reply: ", "      replyy: ", "bot.intents.status.replyy", 13),
        ("      slots: [order_id]", "      slots: [order_no]", "bot.intents.status.slots[0]", 8),
        ("{type: integer,", "{type: integr,", "bot.slots.order_id.type", 4),
        ('"Order {order_id} is', '"Order {order_id is', "bot.intents.status.reply", 13),
        ("        operation: order_status\n", "", "bot.intents.status.action", 9),
        ("      examples: [where is my order]", "      patterns: ['(']", "patterns[0]", 7),
        ("  name: t", "  name: t\n  fallbak: {}", "bot.fallbak", 3),
    ],
)
def test_validation_names_key_and_line(old: str, new: str, key: str, line: int) -> None:
    text = GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(ConfigError) as info:
        load_bot_text(text, source="bot.yaml")
    message = str(info.value)
    assert key in message
    assert f"bot.yaml, line {line}" in message


def test_validation_without_bot_wrapper_keeps_lines() -> None:
    text = "intents:\n  x:\n    examples: [hi]\n    reply: 12\n    colour: red\n"
    with pytest.raises(ConfigError, match=r"bot\.intents\.x\.colour \(t\.yaml, line 5\)"):
        load_bot_text(text, source="t.yaml")


def test_validation_cross_references() -> None:
    text = GOOD + "  fallback: {suggestions: [status, nope]}\n"
    with pytest.raises(ConfigError, match=r"bot\.fallback\.suggestions\[1\].*line 14"):
        load_bot_text(text, source="bot.yaml")
    with pytest.raises(ConfigError, match="needs an 'action' or a 'reply'"):
        load_bot({"intents": {"x": {"examples": ["hi"]}}})
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_bot_text("bot: [unclosed", source="bot.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_bot("/nonexistent/bot.yaml")
