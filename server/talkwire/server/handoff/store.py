"""The handoff steps, each one transaction over the session tables.

A session's handoff lives in ``talkwire_handoffs`` (one row per session that
was ever handed off; no row means ``bot``). Every step below is one method and
one transaction that changes the row with a *conditional* ``UPDATE`` (the state
it expects is in the ``WHERE``; a row count of 0 means someone else got there
first) and appends the durable frame the user sees in the same transaction, so
the state and the frame never disagree, across replicas and crashes:

==================  ==========================  =============================
step                from -> to                  frame appended
==================  ==========================  =============================
:meth:`queue`       bot -> queued               ``handoff`` QUEUED (position)
:meth:`accept`      queued -> agent             ``handoff`` ACCEPTED
:meth:`release`     agent -> bot                ``handoff`` ENDED
:meth:`transfer`    agent -> queued (new queue) ``handoff`` QUEUED
:meth:`close`       agent -> bot, session closed ``handoff`` ENDED (closed)
:meth:`requeue_stale` agent -> queued (timeout) ``handoff`` QUEUED
==================  ==========================  =============================

These are the points where outbound conversation events (``handoff.*``) belong:
written in the same transaction, by the same method.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from talkwire.server import myhot, pghot, schema, sqlitehot
from talkwire.server.errors import (
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
)
from talkwire.server.frames import StoredFrame
from talkwire.server.handoff.frames import handoff_frame
from talkwire.server.identity import Identity
from talkwire.server.outbound import record as kinds
from talkwire.server.store import SessionStore
from talkwire.v1 import chat_pb2

__all__ = ["HandoffRecord", "HandoffStep", "HandoffStore"]

_H = schema.handoffs
_S = schema.sessions
_HELD = (schema.HANDOFF_QUEUED, schema.HANDOFF_AGENT)


@dataclass(frozen=True, slots=True)
class HandoffRecord:
    """A session's handoff row."""

    session_id: str
    state: int
    queue: str
    reason: str
    subject: str
    queued_at: float
    agent: str | None
    agent_name: str
    agent_seen_at: float | None
    pin_seq: int
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def held(self) -> bool:
        """Queued or with an agent: user turns go to the agent, not to the bot."""
        return self.state in _HELD


@dataclass(frozen=True, slots=True)
class HandoffStep:
    """What a step did: the row after it and the frames it appended (per session)."""

    record: HandoffRecord
    frames: Mapping[str, Sequence[StoredFrame]]
    position: int = 0


def _record(row: Mapping[Any, Any]) -> HandoffRecord:
    seen = row["agent_seen_at"]
    return HandoffRecord(
        session_id=row["session_id"],
        state=int(row["state"]),
        queue=row["queue"],
        reason=row["reason"],
        subject=row["subject"],
        queued_at=float(row["queued_at"]),
        agent=row["agent"],
        agent_name=row["agent_name"],
        agent_seen_at=None if seen is None else float(seen),
        pin_seq=int(row["pin_seq"]),
        context=json.loads(row["context"] or "{}"),
    )


class HandoffStore:
    """The handoff steps over a :class:`SessionStore`'s database."""

    def __init__(self, store: SessionStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    # -- reads -------------------------------------------------------------

    async def get(self, session_id: str) -> HandoffRecord | None:
        """The session's handoff row (``None``: never handed off)."""
        raw = self._store.sqlite
        if raw is not None:  # every turn asks: the raw SQLite read
            row = await raw.read_point(lambda conn: sqlitehot.handoff_row(conn, session_id))
            return None if row is None else _record(row)
        pg = self._store.pg
        if pg is not None:  # the asyncpg point read
            found = await pg.read_pg(lambda conn: pghot.handoff_row(conn, session_id))
            return None if found is None else _record(found)
        my = self._store.my
        if my is not None:  # the asyncmy point read
            got = await my.read_my(lambda cur: myhot.handoff_row(cur, session_id))
            return None if got is None else _record(got)
        return await self._store.reading(lambda conn: self._get(conn, session_id))

    async def waiting(self, queues: Sequence[str] | None = None) -> list[tuple[HandoffRecord, int]]:
        """Queued active sessions (``queues``: only these), oldest first, with positions."""
        query = (
            sa.select(_H)
            .join(_S, _S.c.id == _H.c.session_id)
            .where(_H.c.state == schema.HANDOFF_QUEUED, _S.c.state == schema.ACTIVE)
            .order_by(_H.c.queued_at, _H.c.session_id)
        )
        if queues is not None:
            query = query.where(_H.c.queue.in_(list(queues)))

        def tx(conn: Connection) -> list[tuple[HandoffRecord, int]]:
            positions: dict[str, int] = {}
            out = []
            for row in conn.execute(query).mappings():
                rec = _record(row)
                positions[rec.queue] = positions.get(rec.queue, 0) + 1
                out.append((rec, positions[rec.queue]))
            return out

        return await self._store.reading(tx)

    # -- steps (one transaction each) ----------------------------------------

    async def queue(
        self,
        session_id: str,
        *,
        queue: str,
        reason: str,
        context: Mapping[str, Any],
        frame_id: str = "",
    ) -> HandoffStep:
        """bot -> queued. ``FAILED_PRECONDITION`` when already queued or with an agent."""

        def tx(conn: Connection) -> HandoffStep:
            return self.queue_in(
                conn, session_id, queue=queue, reason=reason, context=context, frame_id=frame_id
            )

        return await self.commit_queue(session_id, tx)

    async def commit_queue(
        self, session_id: str, step: Callable[[Connection], HandoffStep]
    ) -> HandoffStep:
        """Run a queue step (:meth:`queue_in`) as its own transaction."""
        try:
            return await self._store.transaction(step)
        except IntegrityError:  # a concurrent queue of the same session inserted first
            raise FailedPreconditionError(
                f"session {session_id} is already queued or with an agent"
            ) from None

    def queue_in(
        self,
        conn: Connection,
        session_id: str,
        *,
        queue: str,
        reason: str,
        context: Mapping[str, Any],
        frame_id: str = "",
    ) -> HandoffStep:
        """The queue step inside a caller's transaction (a turn that asks for a person
        commits its own reply and this step together). Raises ``FAILED_PRECONDITION``
        (or the driver's ``IntegrityError`` on a concurrent first queue)."""
        now = self._clock()
        session = conn.execute(
            sa.select(_S.c.subject, _S.c.floor_seq).where(
                _S.c.id == session_id, _S.c.state == schema.ACTIVE
            )
        ).first()
        if session is None:
            raise NotFoundError(f"session {session_id} not found or closed")
        values = {
            "state": schema.HANDOFF_QUEUED,
            "queue": queue,
            "reason": reason,
            "subject": session[0],
            "queued_at": now,
            "agent": None,
            "agent_name": "",
            "agent_seen_at": None,
            "pin_seq": int(session[1]),
            "context": json.dumps(context),
            "updated_at": now,
        }
        updated = conn.execute(
            _H.update()
            .where(_H.c.session_id == session_id, _H.c.state == schema.HANDOFF_BOT)
            .values(values)
        ).rowcount
        if not updated:
            if self._get(conn, session_id) is not None:
                raise FailedPreconditionError(
                    f"session {session_id} is already queued or with an agent"
                )
            conn.execute(_H.insert().values(session_id=session_id, **values))
        position = self._position(conn, queue, now, session_id)
        frames = self._store.append_in(
            conn,
            session_id,
            [
                handoff_frame(
                    chat_pb2.HANDOFF_STATE_QUEUED,
                    queue=queue,
                    reason=reason,
                    position=position,
                    in_reply_to=frame_id,
                )
            ],
        )
        self._event(
            conn,
            session_id,
            kinds.HANDOFF_QUEUED,
            queue=queue,
            reason=reason,
            position=position,
            context=dict(context),
        )
        return HandoffStep(self._must(conn, session_id), {session_id: frames}, position)

    async def accept(
        self, session_id: str, agent: Identity, *, may_serve: Callable[[str], bool]
    ) -> HandoffStep:
        """queued -> agent: one conditional UPDATE; a loser gets ``FAILED_PRECONDITION``."""
        now = self._clock()
        name = str(agent.claims.get("name") or agent.subject)

        def tx(conn: Connection) -> HandoffStep:
            current = self._get(conn, session_id)
            if current is None or current.state == schema.HANDOFF_BOT:
                if current is None and not self._session_exists(conn, session_id):
                    raise NotFoundError(f"session {session_id} not found")
                raise FailedPreconditionError(f"session {session_id} is not waiting for an agent")
            if not may_serve(current.queue):
                raise PermissionDeniedError(f"not allowed to serve queue {current.queue!r}")
            won = conn.execute(
                _H.update()
                .where(
                    _H.c.session_id == session_id,
                    _H.c.state == schema.HANDOFF_QUEUED,
                    _H.c.queue == current.queue,
                )
                .values(
                    state=schema.HANDOFF_AGENT,
                    agent=agent.subject,
                    agent_name=name,
                    agent_seen_at=now,
                    updated_at=now,
                )
            ).rowcount
            if not won:
                holder = current.agent if current.state == schema.HANDOFF_AGENT else None
                who = "you" if holder == agent.subject else "another agent"
                raise FailedPreconditionError(f"session {session_id} was already accepted by {who}")
            frames = self._store.append_in(
                conn,
                session_id,
                [
                    handoff_frame(
                        chat_pb2.HANDOFF_STATE_ACCEPTED, queue=current.queue, agent_name=name
                    )
                ],
            )
            self._event(
                conn,
                session_id,
                kinds.HANDOFF_ACCEPTED,
                queue=current.queue,
                agent=agent.subject,
                agent_name=name,
            )
            return HandoffStep(self._must(conn, session_id), {session_id: frames})

        return await self._store.transaction(tx)

    async def release(self, session_id: str, agent: str, *, reason: str = "") -> HandoffStep:
        """agent -> bot; only the agent holding the session may release it."""
        return await self._end(session_id, agent, reason=reason, close=False)

    async def close(self, session_id: str, agent: str, *, reason: str = "") -> HandoffStep:
        """agent -> bot and the session closed (its subscriptions dropped, frames kept)."""
        return await self._end(session_id, agent, reason=reason, close=True)

    async def _end(self, session_id: str, agent: str, *, reason: str, close: bool) -> HandoffStep:
        now = self._clock()

        def tx(conn: Connection) -> HandoffStep:
            current = self._held_by(conn, session_id, agent, now)
            conn.execute(
                _H.update()
                .where(_H.c.session_id == session_id)
                .values(state=schema.HANDOFF_BOT, updated_at=now, reason=reason or current.reason)
            )
            frames = self._store.append_in(
                conn,
                session_id,
                [
                    handoff_frame(
                        chat_pb2.HANDOFF_STATE_ENDED,
                        queue=current.queue,
                        reason=reason,
                        agent_name=current.agent_name,
                        closed=close,
                    )
                ],
            )
            self._event(
                conn,
                session_id,
                kinds.HANDOFF_RELEASED,
                queue=current.queue,
                agent=agent,
                reason=reason,
                closed=close,
            )
            if close:
                conn.execute(
                    _S.update()
                    .where(_S.c.id == session_id)
                    .values(state=schema.CLOSED, replica=None, last_active_at=now)
                )
                conn.execute(
                    schema.subscriptions.delete().where(
                        schema.subscriptions.c.session_id == session_id
                    )
                )
                self._event(conn, session_id, kinds.SESSION_CLOSED, reason="closed by the agent")
            return HandoffStep(self._must(conn, session_id), {session_id: frames})

        return await self._store.transaction(tx)

    async def transfer(
        self, session_id: str, agent: str, *, queue: str, reason: str = ""
    ) -> HandoffStep:
        """agent -> queued in ``queue`` (at its end); the user sees the new position."""
        now = self._clock()

        def tx(conn: Connection) -> HandoffStep:
            current = self._held_by(conn, session_id, agent, now)
            conn.execute(
                _H.update()
                .where(_H.c.session_id == session_id)
                .values(
                    state=schema.HANDOFF_QUEUED,
                    queue=queue,
                    reason=reason or current.reason,
                    queued_at=now,
                    agent=None,
                    agent_name="",
                    agent_seen_at=None,
                    updated_at=now,
                )
            )
            position = self._position(conn, queue, now, session_id)
            frames = self._store.append_in(
                conn,
                session_id,
                [
                    handoff_frame(
                        chat_pb2.HANDOFF_STATE_QUEUED,
                        queue=queue,
                        reason=reason or current.reason,
                        position=position,
                    )
                ],
            )
            self._event(
                conn,
                session_id,
                kinds.HANDOFF_TRANSFERRED,
                from_queue=current.queue,
                queue=queue,
                agent=agent,
                reason=reason,
                position=position,
            )
            return HandoffStep(self._must(conn, session_id), {session_id: frames}, position)

        return await self._store.transaction(tx)

    async def requeue_stale(self, away: float) -> HandoffStep | None:
        """agent -> queued for every session whose agent was away longer than ``away`` s.

        The queue keeps its place (``queued_at`` unchanged): the customer waited already.
        """
        now = self._clock()
        cutoff = now - away
        stale = (
            sa.select(_H)
            .where(_H.c.state == schema.HANDOFF_AGENT, _H.c.agent_seen_at < cutoff)
            .order_by(_H.c.session_id)
        )

        def tx(conn: Connection) -> HandoffStep | None:
            frames: dict[str, Sequence[StoredFrame]] = {}
            last: HandoffRecord | None = None
            for row in conn.execute(stale).mappings().all():
                rec = _record(row)
                moved = conn.execute(
                    _H.update()
                    .where(
                        _H.c.session_id == rec.session_id,
                        _H.c.state == schema.HANDOFF_AGENT,
                        _H.c.agent_seen_at < cutoff,
                    )
                    .values(
                        state=schema.HANDOFF_QUEUED,
                        agent=None,
                        agent_name="",
                        agent_seen_at=None,
                        updated_at=now,
                    )
                ).rowcount
                if not moved or not self._session_exists(conn, rec.session_id, active=True):
                    continue
                position = self._position(conn, rec.queue, rec.queued_at, rec.session_id)
                frames[rec.session_id] = self._store.append_in(
                    conn,
                    rec.session_id,
                    [
                        handoff_frame(
                            chat_pb2.HANDOFF_STATE_QUEUED,
                            queue=rec.queue,
                            reason="the agent did not come back; waiting for the next agent",
                            position=position,
                        )
                    ],
                )
                self._event(
                    conn,
                    rec.session_id,
                    kinds.HANDOFF_REQUEUED,
                    queue=rec.queue,
                    agent=rec.agent or "",
                    reason="agent timeout",
                    position=position,
                )
                last = self._must(conn, rec.session_id)
            return None if last is None else HandoffStep(last, frames)

        return await self._store.transaction(tx)

    def _event(self, conn: Connection, session_id: str, kind: str, **data: Any) -> None:
        """A conversation event in the step's transaction (the session row is locked)."""
        self._store.events.record(conn, session_id, kind, data=data)

    # -- agent traffic (not state changes) ------------------------------------

    async def agent_append(
        self, session_id: str, agent: str, templates: Sequence[bytes]
    ) -> list[StoredFrame]:
        """Append the agent's frames if (and only if) it still holds the session."""
        now = self._clock()

        def tx(conn: Connection) -> list[StoredFrame]:
            self._held_by(conn, session_id, agent, now)
            return self._store.append_in(conn, session_id, templates)

        return await self._store.transaction(tx)

    async def seen(self, session_id: str, agent: str, *, pin_seq: int | None = None) -> None:
        """The agent is alive on the session (and has every frame up to ``pin_seq``)."""
        now = self._clock()

        def tx(conn: Connection) -> None:
            self._held_by(conn, session_id, agent, now)
            if pin_seq is not None:
                conn.execute(
                    _H.update()
                    .where(_H.c.session_id == session_id, _H.c.pin_seq < pin_seq)
                    .values(pin_seq=pin_seq)
                )

        await self._store.transaction(tx)

    async def user_append(self, session_id: str, template: bytes) -> list[StoredFrame] | None:
        """Store a user turn while the session is held; ``None``: it is back with the bot."""

        def tx(conn: Connection) -> list[StoredFrame] | None:
            current = self._get(conn, session_id)
            if current is None or not current.held:
                return None
            return self._store.append_in(conn, session_id, [template])

        return await self._store.transaction(tx)

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _get(conn: Connection, session_id: str) -> HandoffRecord | None:
        row = conn.execute(sa.select(_H).where(_H.c.session_id == session_id)).mappings().first()
        return None if row is None else _record(row)

    def _must(self, conn: Connection, session_id: str) -> HandoffRecord:
        rec = self._get(conn, session_id)
        assert rec is not None  # noqa: S101 - written in this transaction
        return rec

    @staticmethod
    def _session_exists(conn: Connection, session_id: str, *, active: bool = False) -> bool:
        query = sa.select(_S.c.id).where(_S.c.id == session_id)
        if active:
            query = query.where(_S.c.state == schema.ACTIVE)
        return conn.execute(query).first() is not None

    def _held_by(self, conn: Connection, session_id: str, agent: str, now: float) -> HandoffRecord:
        """Refresh the agent's liveness if it holds the session; else the precise refusal."""
        touched = conn.execute(
            _H.update()
            .where(
                _H.c.session_id == session_id,
                _H.c.state == schema.HANDOFF_AGENT,
                _H.c.agent == agent,
            )
            .values(agent_seen_at=now)
        ).rowcount
        current = self._get(conn, session_id)
        if touched and current is not None:
            return current
        if current is None and not self._session_exists(conn, session_id):
            raise NotFoundError(f"session {session_id} not found")
        if current is not None and current.state == schema.HANDOFF_AGENT:
            raise PermissionDeniedError(f"session {session_id} is held by another agent")
        raise FailedPreconditionError(
            f"session {session_id} is not with you: it was released, transferred or "
            "went back to the queue (accept it first)"
        )

    @staticmethod
    def _position(conn: Connection, queue: str, queued_at: float, session_id: str) -> int:
        ahead = conn.execute(
            sa.select(sa.func.count())
            .select_from(_H)
            .where(
                _H.c.state == schema.HANDOFF_QUEUED,
                _H.c.queue == queue,
                sa.or_(
                    _H.c.queued_at < queued_at,
                    sa.and_(_H.c.queued_at == queued_at, _H.c.session_id < session_id),
                ),
            )
        ).scalar()
        return int(ahead or 0) + 1
