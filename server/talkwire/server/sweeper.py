"""The expiry sweeper: ends idle sessions and trims what the store keeps.

Every ``server.sweep_interval`` seconds one pass expires the sessions idle for
longer than ``store.session_ttl`` (except those attached anywhere: the hub asks
its cluster's registry), closes their streams, prunes the outbox to its
retention window and forgets processed event ids older than
``store.dedup_window`` (and idempotency keys past their window). A failed pass
is logged and retried at the next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self

from talkwire.server.aio import Periodic
from talkwire.server.hub import SessionHub
from talkwire.server.store import SessionStore

__all__ = ["Sweeper"]

log = logging.getLogger(__name__)


class Sweeper:
    """Runs the expiry pass periodically while entered; :meth:`sweep_now` runs one at once."""

    def __init__(
        self,
        store: SessionStore,
        hub: SessionHub,
        *,
        interval: float,
        session_ttl: float,
        dedup_window: float,
        also: Sequence[Callable[[], Awaitable[object]]] = (),
    ) -> None:
        """``also``: more expiry passes run on every tick (e.g. idempotency keys)."""
        self._store = store
        self._hub = hub
        self._session_ttl = session_ttl
        self._dedup_window = dedup_window
        self._also = tuple(also)
        self._periodic = Periodic(self._pass, interval, name="talkwire-sweeper")

    async def __aenter__(self) -> Self:
        await self._periodic.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the periodic pass. Idempotent."""
        await self._periodic.aclose()

    async def _pass(self) -> None:
        await self.sweep_now()
        await self._store.forget_processed(self._dedup_window)
        for forget in self._also:
            await forget()

    async def sweep_now(self) -> list[str]:
        """Run one expiry + retention pass now; return the sessions that expired."""
        expired = await self._store.expire_idle(self._session_ttl, keep=await self._hub.live_ids())
        for session_id in expired:
            self._hub.close_session(session_id, "expired")
        await self._store.prune()
        return expired
