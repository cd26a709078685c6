"""The turn-handling seam between the session core and the dialogue engine.

The session core hands every ``message`` and ``action`` frame to a
:class:`TurnHandler`, one turn at a time per session. The handler answers
through the :class:`TurnContext`: the frames it emits and the dialogue state it
changes are committed to the SessionStore in one transaction when the turn
ends, then delivered. :class:`EchoHandler` is the trivial handler used by tests
and benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from talkwire.server.identity import Identity

__all__ = [
    "AllowAllPolicy",
    "EchoHandler",
    "QuickReply",
    "SubscriptionPolicy",
    "Turn",
    "TurnContext",
    "TurnHandler",
]


@dataclass(frozen=True, slots=True)
class QuickReply:
    """A button: pressing it sends an ``action`` frame with this intent and parameters."""

    label: str
    intent: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Turn:
    """One user frame: free text (``text``) or a structured action (``intent``)."""

    frame_id: str
    text: str | None = None
    intent: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_action(self) -> bool:
        return self.intent is not None


class TurnContext(Protocol):
    """What a handler may read and do during one turn."""

    @property
    def session_id(self) -> str: ...

    @property
    def identity(self) -> Identity: ...

    @property
    def locale(self) -> str: ...

    @property
    def state(self) -> MutableMapping[str, Any]:
        """The session's dialogue state; changes persist with the turn's frames."""
        ...

    def reply(
        self,
        text: str,
        *,
        quick_replies: Sequence[QuickReply] = (),
        data: Mapping[str, Any] | None = None,
        intent: str = "",
    ) -> None:
        """Queue a ``reply`` frame."""
        ...

    def prompt(
        self,
        slot: str,
        text: str,
        *,
        quick_replies: Sequence[QuickReply] = (),
        intent: str = "",
    ) -> None:
        """Queue a ``prompt`` frame asking for ``slot``."""
        ...

    def error(self, code: grpc.StatusCode, message: str, *, retriable: bool = False) -> None:
        """Queue a recoverable per-turn ``error`` frame."""
        ...

    async def subscribe(self, key: str) -> None:
        """Subscribe the session to ``key``; raises ``PermissionDeniedError`` if policy refuses."""
        ...

    async def unsubscribe(self, key: str) -> None: ...


class TurnHandler(Protocol):
    """Turns one user frame into reply frames (and connector calls)."""

    async def handle(self, turn: Turn, ctx: TurnContext) -> None: ...


class SubscriptionPolicy(Protocol):
    """Decides whether an identity may subscribe to a key."""

    async def allowed(self, identity: Identity, key: str) -> bool: ...


class AllowAllPolicy:
    """Allows every key; for tests and the echo handler only."""

    async def allowed(self, identity: Identity, key: str) -> bool:
        return True


class EchoHandler:
    """Replies with the user's text (or the action's intent); the testing handler."""

    async def handle(self, turn: Turn, ctx: TurnContext) -> None:
        if turn.text is not None:
            ctx.reply(turn.text)
        else:
            ctx.reply(f"action:{turn.intent}", data=dict(turn.parameters))
