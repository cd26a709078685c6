"""The dialogue engine: bot definitions, intent matching, slot filling, connector actions.

Public API:

- :func:`load_bot` / :func:`load_bot_text` -> :class:`BotDefinition` (validated;
  errors are :class:`~talkwire.server.errors.ConfigError` naming key and line);
- :class:`DialogueEngine` (a ``TurnHandler``): ``DialogueEngine(bot, connectors,
  matcher=None, *, actions=None, llm=None)``;
- :class:`Matcher` protocol, :class:`MatchResult`, :class:`NGramMatcher`,
  :func:`load_matcher` (entry-point group ``talkwire.matchers``);
- :class:`ActionContext` for custom actions (entry-point group ``talkwire.actions``);
- :class:`LlmPolicy`, the optional OpenAI-compatible tool-calling policy;
- :func:`demo_bot_path`: the shipped demo bot definition.
"""

from __future__ import annotations

from pathlib import Path

from talkwire.server.dialogue.actions import ActionContext, RegistryLike
from talkwire.server.dialogue.botparser import load_bot, load_bot_text
from talkwire.server.dialogue.definition import BotDefinition
from talkwire.server.dialogue.engine import DialogueEngine
from talkwire.server.dialogue.llm import LlmPolicy
from talkwire.server.dialogue.matcher import (
    IntentSpec,
    Matcher,
    MatchResult,
    NGramMatcher,
    load_matcher,
)

__all__ = [
    "ActionContext",
    "BotDefinition",
    "DialogueEngine",
    "IntentSpec",
    "LlmPolicy",
    "MatchResult",
    "Matcher",
    "NGramMatcher",
    "RegistryLike",
    "demo_bot_path",
    "load_bot",
    "load_bot_text",
    "load_matcher",
]


def demo_bot_path() -> Path:
    """Path of the demo bot shipped with the server (``talkwire/server/demo/bot.yaml``)."""
    return Path(__file__).resolve().parent.parent / "demo" / "bot.yaml"
