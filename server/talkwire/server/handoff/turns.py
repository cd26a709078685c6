"""The turn router: while a person holds a session, user turns go to the agent.

:class:`HandoffTurns` wraps the dialogue engine (any
:class:`~talkwire.server.turns.TurnHandler`). Per turn it reads the session's
handoff state: queued or with an agent, the turn is stored as a durable
``reply`` authored by the user (the agent's stream receives it; the user gets it
as the receipt) and the engine is not called. With the bot, the engine runs; a
handoff the engine asked for (:func:`~talkwire.server.handoff.signal.request_handoff`)
or a gateway's ``talkwire.handoff`` action queues the session -- in the turn's own
commit, so the ``QUEUED`` frame follows the bot's reply and a crash keeps both or
neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from talkwire.server.errors import FailedPreconditionError, TalkwireError
from talkwire.server.frames import StoredFrame, error_template
from talkwire.server.handoff.context import remember_user_turn
from talkwire.server.handoff.desk import HandoffDesk
from talkwire.server.handoff.frames import authored_reply
from talkwire.server.handoff.signal import HANDOFF_ACTION, HandoffRequest, take_request
from talkwire.server.handoff.store import HandoffStep
from talkwire.server.hub import SessionHub
from talkwire.server.turns import Turn, TurnContext, TurnHandler

__all__ = ["CommitsWith", "HandoffTurns"]


def _text_of(turn: Turn) -> str:
    if turn.text is not None:
        return turn.text
    label = turn.parameters.get("label") if turn.parameters else None
    if turn.parameters:
        return f"[{turn.intent}] {label or json.dumps(dict(turn.parameters), default=str)}"
    return f"[{turn.intent}]"


class HandoffTurns:
    """A TurnHandler: the agent while a handoff holds the session, else ``inner``."""

    def __init__(self, inner: TurnHandler, *, desk: HandoffDesk, hub: SessionHub) -> None:
        self._inner = inner
        self._desk = desk
        self._hub = hub

    @property
    def inner(self) -> TurnHandler:
        return self._inner

    async def handle(self, turn: Turn, ctx: TurnContext) -> None:
        text = _text_of(turn)
        current = await self._desk.handoffs.get(ctx.session_id)
        if current is not None and current.held:
            template = authored_reply(
                "user", text, author_id=ctx.identity.subject, in_reply_to=turn.frame_id
            )
            frames = await self._desk.handoffs.user_append(ctx.session_id, template)
            if frames is not None:
                self._hub.deliver({ctx.session_id: frames})
                return
            # released between the read and the append: the bot answers
        remember_user_turn(ctx.state, text, keep=self._desk.settings.transcript_turns)
        if turn.intent == HANDOFF_ACTION:
            params = turn.parameters or {}
            request: HandoffRequest | None = HandoffRequest(
                str(params.get("queue") or ""), str(params.get("reason") or "asked for a person")
            )
        else:
            await self._inner.handle(turn, ctx)
            request = take_request(ctx.state)
        if request is None:
            return
        try:
            step = await self._desk.queue_step(
                ctx.session_id,
                queue=request.queue,
                reason=request.reason,
                state=ctx.state,
                frame_id=turn.frame_id,
            )
        except TalkwireError as exc:
            ctx.error(exc.code, exc.message, retriable=exc.retriable)
            return
        if isinstance(ctx, CommitsWith):
            ctx.commit_with(lambda conn: self._queue_in(conn, ctx.session_id, step, turn.frame_id))
            return
        try:  # a context without a commit hook: the step commits on its own
            self._desk.deliver(await self._desk.handoffs.commit_queue(ctx.session_id, step))
        except TalkwireError as exc:
            ctx.error(exc.code, exc.message, retriable=exc.retriable)

    def _queue_in(
        self,
        conn: Connection,
        session_id: str,
        step: Callable[[Connection], HandoffStep],
        frame_id: str,
    ) -> list[StoredFrame]:
        """The queue step inside the turn's commit. Someone else queued the session since
        the turn read it: the turn still commits, with an ``error`` frame instead."""
        try:
            with conn.begin_nested():
                return list(step(conn).frames.get(session_id, ()))
        except (FailedPreconditionError, IntegrityError):
            error = error_template(
                FailedPreconditionError("the session is already queued or with an agent"),
                frame_id,
            )
            return self._desk.store.append_in(conn, session_id, [error])


@runtime_checkable
class CommitsWith(Protocol):
    """A turn context that can run a step inside the turn's own commit."""

    def commit_with(self, step: Callable[[Connection], list[StoredFrame]]) -> None: ...
