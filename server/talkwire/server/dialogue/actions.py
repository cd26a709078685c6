"""Custom actions and the connector-registry view the dialogue engine needs.

A custom action is a callable registered in the entry-point group
``talkwire.actions`` (or passed to :class:`DialogueEngine` as ``actions=``)
and named in the bot definition as ``action: {custom: NAME, params: {...}}``.
It is called with one :class:`ActionContext` and may be sync or async::

    async def refund(actx: ActionContext) -> Any:
        order = await actx.invoke("crm", "order_status", {"order_id": actx.slots["order_id"]})
        await actx.subscribe(f"order:{actx.slots['order_id']}")
        return order                       # rendered with the intent's reply / not_found

It can reply by itself (``actx.reply(...)``); then the engine adds nothing. Any
value it returns is the intent's ``result``. ``actx.invoke`` always injects the
caller's identity into the :class:`CallContext`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from talkwire.connectors.base import CallContext, Connector
from talkwire.server.identity import Identity
from talkwire.server.turns import QuickReply, TurnContext

__all__ = [
    "ACTION_GROUP",
    "ActionContext",
    "CustomAction",
    "RegistryLike",
    "load_actions",
]

ACTION_GROUP = "talkwire.actions"


class RegistryLike(Protocol):
    """The part of ``talkwire.connectors.registry.ConnectorRegistry`` the engine uses."""

    def get(self, name: str) -> Connector: ...

    async def invoke(
        self,
        connector: str,
        operation: str,
        params: Mapping[str, Any],
        ctx: CallContext | None = None,
    ) -> Any: ...

    def invalidate(self, keys: Iterable[str]) -> int: ...


@dataclass
class ActionContext:
    """What a custom action gets: slots, params, identity, connectors and the turn context."""

    intent: str
    slots: Mapping[str, Any]
    params: Mapping[str, Any]
    identity: Identity
    connectors: RegistryLike
    ctx: TurnContext
    call_context: CallContext
    replied: bool = field(default=False)

    async def invoke(self, connector: str, operation: str, params: Mapping[str, Any]) -> Any:
        """Call a connector operation as the caller (identity injected)."""
        return await self.connectors.invoke(connector, operation, params, self.call_context)

    def reply(
        self,
        text: str,
        *,
        quick_replies: Sequence[QuickReply] = (),
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.replied = True
        self.ctx.reply(text, quick_replies=quick_replies, data=data, intent=self.intent)

    async def subscribe(self, key: str) -> None:
        await self.ctx.subscribe(key)


CustomAction = Callable[[ActionContext], Awaitable[Any] | Any]


def load_actions() -> dict[str, CustomAction]:
    """Every action registered in the ``talkwire.actions`` entry-point group, by name.

    Entry points are loaded lazily by the engine; this helper loads them all.
    """
    out: dict[str, CustomAction] = {}
    for ep in entry_points(group=ACTION_GROUP):
        out[ep.name] = ep.load()
    return out


def find_action(name: str) -> CustomAction | None:
    """Load one entry point of ``talkwire.actions`` by name (``None`` if absent)."""
    for ep in entry_points(group=ACTION_GROUP):
        if ep.name == name:
            loaded: CustomAction = ep.load()
            return loaded
    return None
