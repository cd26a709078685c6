"""A bad ``handoff`` section or bot handoff rule: one line naming the key, exit 2."""

from __future__ import annotations

from pathlib import Path

from tests.config.test_cli_errors import _serve

_BASE = (
    "server: {listen: '127.0.0.1:0', handler: dialogue}\nstore: {url: 'sqlite+aiosqlite:///s.db'}\n"
)
_BOT = "bot:\n  intents:\n    greet: {examples: [hi], reply: Hi}\n"


def test_agent_timeout_must_be_positive(tmp_path: Path) -> None:
    code, err = _serve(tmp_path, _BASE + _BOT + "handoff:\n  agent_timeout: -1\n")
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("talkwire: handoff.agent_timeout (")
    assert "expected a positive number, got -1" in err[0]


def test_queue_requirements_are_a_mapping(tmp_path: Path) -> None:
    body = _BASE + _BOT + "handoff:\n  queues:\n    billing: {require: [team]}\n"
    code, err = _serve(tmp_path, body)
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("talkwire: handoff.queues.billing.require (")


def test_bot_handoff_rule_bad_queue(tmp_path: Path) -> None:
    bot = (
        "bot:\n  handoff: {after_fallbacks: 2, queue: 'no spaces'}\n"
        "  intents:\n    greet: {examples: [hi], reply: Hi}\n"
    )
    code, err = _serve(tmp_path, _BASE + bot)
    assert code == 2
    assert len(err) == 1
    assert "bot.handoff.queue" in err[0]
    assert "bad queue name 'no spaces'" in err[0]
