"""How the dialogue engine asks for a person: a request left in the turn's state.

The engine (a bot intent with ``handoff:``, or the ``handoff.after_fallbacks``
rule) calls :func:`request_handoff`; the handoff turn router takes the request
with :func:`take_request` once the engine's turn is done and queues the session.
The request never outlives the turn: it is taken before the state is saved.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HANDOFF_ACTION", "HandoffRequest", "request_handoff", "take_request"]

HANDOFF_ACTION = "talkwire.handoff"
"""The structured ``action`` intent a gateway sends to ask for a person (``queue``, ``reason``)."""

_KEY = "handoff_request"


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    """Queue ``queue`` ("" -> the default queue) with ``reason``."""

    queue: str = ""
    reason: str = ""


def request_handoff(state: MutableMapping[str, Any], queue: str = "", reason: str = "") -> None:
    """Ask for a person at the end of this turn."""
    state[_KEY] = {"queue": queue, "reason": reason}


def take_request(state: MutableMapping[str, Any]) -> HandoffRequest | None:
    """The request this turn made, removed from the state (``None``: none)."""
    raw = state.pop(_KEY, None)
    if not isinstance(raw, dict):
        return None
    return HandoffRequest(str(raw.get("queue") or ""), str(raw.get("reason") or ""))
