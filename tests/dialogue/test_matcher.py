from __future__ import annotations

import pytest

from talkwire.server.dialogue import (
    IntentSpec,
    Matcher,
    NGramMatcher,
    demo_bot_path,
    load_bot,
    load_matcher,
)
from talkwire.server.dialogue.engine import intent_specs
from talkwire.server.errors import ConfigError

from .heldout import HELDOUT, OUT_OF_SCOPE


@pytest.fixture(scope="module")
def demo_matcher() -> Matcher:
    bot = load_bot(demo_bot_path())
    return load_matcher(bot.matcher_name, intent_specs(bot), bot.matcher_options)


def test_heldout_phrases_are_not_examples() -> None:
    bot = load_bot(demo_bot_path())
    examples = {e.lower() for i in bot.intents.values() for e in i.examples}
    assert len(HELDOUT) >= 40
    assert not [p for p, _ in HELDOUT if p.lower() in examples]


def test_heldout_accuracy(demo_matcher: Matcher) -> None:
    wrong = [(p, want, demo_matcher.match(p).intent) for p, want in HELDOUT]
    wrong = [w for w in wrong if w[1] != w[2]]
    accuracy = 1 - len(wrong) / len(HELDOUT)
    assert accuracy >= 0.9, wrong


def test_out_of_scope_is_not_matched(demo_matcher: Matcher) -> None:
    for phrase in OUT_OF_SCOPE:
        assert demo_matcher.match(phrase).intent is None, phrase


def test_builtin_resolves_through_entry_points() -> None:
    matcher = load_matcher("builtin", [IntentSpec("a", ("hello world",))])
    assert isinstance(matcher, NGramMatcher)
    assert isinstance(matcher, Matcher)
    with pytest.raises(ConfigError, match="no matcher 'nope'"):
        load_matcher("nope", [])


def test_patterns_numbers_ties_and_threshold() -> None:
    m = NGramMatcher(
        [
            IntentSpec("order", ("where is my order 42", "track my parcel")),
            IntentSpec("refund", ("i want my money back",), (r"\brefund\b",)),
            IntentSpec("a", ("alpha beta",)),
            IntentSpec("b", ("alpha beta",)),
        ],
        threshold=0.3,
    )
    assert m.match("where is my order 99817").intent == "order"  # numbers normalised
    refund = m.match("refund please")
    assert (refund.intent, refund.confidence) == ("refund", 1.0)
    tie = m.match("alpha beta")
    assert tie.is_tie(0.05)
    assert {c.intent for c in tie.alternatives[:2]} == {"a", "b"}
    low = m.match("completely unrelated words")
    assert low.intent is None
    assert not low.is_tie(0.05)
