"""The handoff desk: the steps of :class:`HandoffStore`, delivered to the live streams.

Used by the turn router (the bot or a gateway asks for a person) and by the
AgentService (agents accept, talk, transfer, release). Each step is committed
first (one transaction: state and frame), then its frames are offered to the
session's live feeds here and announced to the other replicas, exactly as a
turn's frames are. While it runs, a background task sends sessions whose agent
stayed away past ``handoff.agent_timeout`` back to their queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from sqlalchemy.engine import Connection

from talkwire.server.aio import Periodic
from talkwire.server.errors import InvalidArgumentError, TalkwireError
from talkwire.server.handoff.context import build_context
from talkwire.server.handoff.settings import HandoffSettings
from talkwire.server.handoff.store import HandoffStep, HandoffStore
from talkwire.server.hub import SessionHub
from talkwire.server.identity import Identity
from talkwire.server.store import SessionStore

__all__ = ["HandoffDesk", "check_queue_name"]

log = logging.getLogger(__name__)

_CONTEXT_FRAMES = 200  # the newest retained frames the context is built from


def check_queue_name(queue: str) -> None:
    """A queue name is 1 to 64 of ``[A-Za-z0-9_-]``."""
    if len(queue) > 64 or not queue.replace("_", "").replace("-", "").isalnum():
        raise InvalidArgumentError("queue: 1 to 64 letters, digits, '-' or '_'")


class HandoffDesk:
    """Handoff steps plus delivery; an async context manager (the timeout sweep)."""

    def __init__(
        self,
        *,
        store: SessionStore,
        hub: SessionHub,
        settings: HandoffSettings,
        handoffs: HandoffStore | None = None,
    ) -> None:
        self.settings = settings
        self.handoffs = handoffs or HandoffStore(store)
        self.store = store
        self._hub = hub
        self._sweep = Periodic(
            self._requeue_pass, settings.sweep_interval, name="talkwire-handoff-sweep"
        )

    async def __aenter__(self) -> Self:
        await self._sweep.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the timeout sweep. Idempotent."""
        await self._sweep.aclose()

    async def _requeue_pass(self) -> None:
        try:
            await self.requeue_stale()
        except TalkwireError as exc:
            log.warning("handoff timeout sweep skipped: %s", exc)

    def deliver(self, step: HandoffStep | None) -> None:
        if step is not None:
            self._hub.deliver(step.frames)

    # -- steps ---------------------------------------------------------------

    async def queue(
        self,
        session_id: str,
        *,
        queue: str = "",
        reason: str = "",
        state: Mapping[str, Any] | None = None,
        frame_id: str = "",
    ) -> HandoffStep:
        """bot -> queued, with the context the bot has (``state``: the turn's, else the store's)."""
        step = await self.queue_step(
            session_id, queue=queue, reason=reason, state=state, frame_id=frame_id
        )
        result = await self.handoffs.commit_queue(session_id, step)
        self.deliver(result)
        return result

    async def queue_step(
        self,
        session_id: str,
        *,
        queue: str = "",
        reason: str = "",
        state: Mapping[str, Any] | None = None,
        frame_id: str = "",
    ) -> Callable[[Connection], HandoffStep]:
        """Validate and gather the context; return the queue step to run in a transaction
        (:meth:`queue` runs it alone; a turn runs it in its own commit)."""
        queue = queue or self.settings.default_queue
        check_queue_name(queue)
        if len(reason) > 500:
            raise InvalidArgumentError("reason: at most 500 characters")
        if state is None:
            record = await self.store.get_session(session_id)
            state = {} if record is None else record.dialogue
        frames = await self.store.frames_after(session_id, 0)
        context = build_context(
            state, frames[-_CONTEXT_FRAMES:], keep=self.settings.transcript_turns
        )

        def step(conn: Connection) -> HandoffStep:
            return self.handoffs.queue_in(
                conn, session_id, queue=queue, reason=reason, context=context, frame_id=frame_id
            )

        return step

    async def accept(self, session_id: str, agent: Identity) -> HandoffStep:
        step = await self.handoffs.accept(session_id, agent, may_serve=self._may_serve(agent))
        self.deliver(step)
        return step

    async def release(self, session_id: str, agent: str, reason: str = "") -> HandoffStep:
        step = await self.handoffs.release(session_id, agent, reason=reason)
        self.deliver(step)
        return step

    async def close(self, session_id: str, agent: str, reason: str = "") -> HandoffStep:
        step = await self.handoffs.close(session_id, agent, reason=reason)
        self.deliver(step)
        self._hub.close_session(session_id, reason or "closed by the agent")
        return step

    async def transfer(
        self, session_id: str, agent: Identity, queue: str, reason: str = ""
    ) -> HandoffStep:
        check_queue_name(queue)
        step = await self.handoffs.transfer(session_id, agent.subject, queue=queue, reason=reason)
        self.deliver(step)
        return step

    async def requeue_stale(self) -> HandoffStep | None:
        step = await self.handoffs.requeue_stale(self.settings.agent_timeout)
        self.deliver(step)
        return step

    def _may_serve(self, agent: Identity) -> Callable[[str], bool]:
        return lambda queue: self.settings.may_serve(agent, queue)
