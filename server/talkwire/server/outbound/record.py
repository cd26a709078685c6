"""Writing conversation events inside a store transaction (the transactional outbox).

An event is one row of ``talkwire_conversation_events`` (kept: transcripts read it) and,
for every sink whose ``on:`` list takes its kind, one row of ``talkwire_outbound_pending``
(deleted by the relay once that sink has the event). Both are written by the same
transaction as the frame or state change the event describes, so a crash either keeps
both or neither.

Adding an event from any store transaction is one call::

    store.events.record(conn, session_id, "handoff.queued", data={"queue": "billing"})

``conn`` is the SQLAlchemy ``Connection`` of the transaction. The caller must hold the
session's row lock (any ``UPDATE`` of the session row in that transaction takes it), so
that a session's events get ids in commit order.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import Connection

from talkwire.server import myhot, pghot, schema, sqlitehot

__all__ = [
    "FRAME_APPENDED",
    "HANDOFF_ACCEPTED",
    "HANDOFF_QUEUED",
    "HANDOFF_RELEASED",
    "HANDOFF_REQUEUED",
    "HANDOFF_TRANSFERRED",
    "KINDS",
    "SESSION_CLOSED",
    "SESSION_EXPIRED",
    "SESSION_OPENED",
    "SESSION_RESUMED",
    "SUBSCRIPTION_CHANGED",
    "TURN_RECEIVED",
    "EventRecorder",
    "EventRow",
    "SinkRoute",
]

SESSION_OPENED = "session.opened"
SESSION_RESUMED = "session.resumed"
TURN_RECEIVED = "turn.received"
FRAME_APPENDED = "frame.appended"
SUBSCRIPTION_CHANGED = "subscription.changed"
SESSION_CLOSED = "session.closed"
SESSION_EXPIRED = "session.expired"
HANDOFF_QUEUED = "handoff.queued"
HANDOFF_ACCEPTED = "handoff.accepted"
HANDOFF_RELEASED = "handoff.released"
HANDOFF_TRANSFERRED = "handoff.transferred"
HANDOFF_REQUEUED = "handoff.requeued"

KINDS = (
    SESSION_OPENED,
    SESSION_RESUMED,
    TURN_RECEIVED,
    FRAME_APPENDED,
    SUBSCRIPTION_CHANGED,
    SESSION_CLOSED,
    SESSION_EXPIRED,
    HANDOFF_QUEUED,
    HANDOFF_ACCEPTED,
    HANDOFF_RELEASED,
    HANDOFF_TRANSFERRED,
    HANDOFF_REQUEUED,
)
"""The kinds talkwire writes today. The set is open: later kinds are plain strings too
(at most 64 characters); a sink's ``on:`` may name a family such as ``handoff.*``.
An agent closing the session writes ``handoff.released`` then ``session.closed``."""

_E = schema.conversation_events
_P = schema.outbound_pending
_INSERT_EVENT = _E.insert()
_INSERT_EVENTS_RETURNING = _E.insert().returning(_E.c.id, sort_by_parameter_order=True)
_INSERT_PENDING = _P.insert()


@dataclass(frozen=True, slots=True)
class SinkRoute:
    """Which kinds one sink takes: ``kinds`` exact names, ``prefixes`` from ``name.*``."""

    sink: str
    kinds: frozenset[str] | None = None  # None: every kind
    prefixes: tuple[str, ...] = ()

    def takes(self, kind: str) -> bool:
        if self.kinds is None:
            return True
        return kind in self.kinds or any(kind.startswith(p) for p in self.prefixes)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event to write: ``body`` is the frame / turn bytes, or ``data`` as JSON."""

    session_id: str
    kind: str
    body: bytes = b""
    seq: int = 0
    data: Mapping[str, Any] | None = None


class EventRecorder:
    """Writes conversation events (and their per-sink outbox rows) in the caller's transaction.

    ``routes`` are the sinks of the ``outbound:`` section; with ``enabled=False`` nothing
    is written at all (no transcripts, no outbound events).
    """

    def __init__(
        self,
        routes: Iterable[SinkRoute] = (),
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes = tuple(routes)
        self.enabled = enabled
        self._clock = clock
        self._sinks_of: dict[str, tuple[str, ...]] = {}
        self.generation = 0
        """Bumped whenever outbox rows are written: the local relays look at it to start
        a round at once instead of at their next poll."""

    def sinks_for(self, kind: str) -> tuple[str, ...]:
        """The sinks that take ``kind`` (memoised: the hot path asks once per kind)."""
        found = self._sinks_of.get(kind)
        if found is None:
            found = tuple(r.sink for r in self.routes if r.takes(kind))
            self._sinks_of[kind] = found
        return found

    def record(
        self,
        conn: Connection,
        session_id: str,
        kind: str,
        *,
        data: Mapping[str, Any] | None = None,
        body: bytes = b"",
        seq: int = 0,
        now: float | None = None,
    ) -> None:
        """Write one event of ``kind`` for ``session_id`` in ``conn``'s transaction."""
        self.record_many(conn, [EventRow(session_id, kind, body, seq, data)], now=now)

    def record_many(
        self, conn: Connection, rows: Sequence[EventRow], *, now: float | None = None
    ) -> None:
        """Write several events in ``conn``'s transaction (two statements at most)."""
        if not self.enabled or not rows:
            return
        if any(len(r.kind) > 64 or not r.kind for r in rows):
            raise ValueError("an event kind has 1 to 64 characters")
        at = self._clock() if now is None else now
        values = [
            {
                "session_id": r.session_id,
                "kind": r.kind,
                "seq": r.seq,
                "created_at": at,
                "body": r.body if r.data is None else _json_bytes(r.data),
            }
            for r in rows
        ]
        targets = [self.sinks_for(r.kind) for r in rows]
        if not any(targets):
            conn.execute(_INSERT_EVENT, values)
            return
        ids = self._insert_returning(conn, values)
        pending = [
            {"sink": sink, "event_id": event_id, "session_id": row["session_id"], "created_at": at}
            for event_id, row, sinks in zip(ids, values, targets, strict=True)
            for sink in sinks
        ]
        conn.execute(_INSERT_PENDING, pending)
        self.generation += 1

    def record_raw(
        self, conn: sqlite3.Connection, rows: Sequence[tuple[str, str, int, float, bytes]]
    ) -> None:
        """:meth:`record_many` on SQLite's raw connection (the store's hot path): ``rows``
        are ``(session_id, kind, seq, created_at, body)`` with talkwire's own kinds."""
        if not self.enabled or not rows:
            return
        targets = [self.sinks_for(r[1]) for r in rows]
        sqlitehot.insert_events(conn, rows, targets)
        if any(targets):
            self.generation += 1

    def routes_for_kinds(self, kinds: Iterable[str]) -> list[tuple[str, str]]:
        """``(kind, sink)`` for every sink taking one of ``kinds`` (their pending rows)."""
        return [(kind, sink) for kind in dict.fromkeys(kinds) for sink in self.sinks_for(kind)]

    async def record_pg(
        self,
        conn: asyncpg.Connection,
        rows: Sequence[tuple[str, str, int, float, bytes]],
        frames: Sequence[tuple[str, int, float, bytes]] = (),
    ) -> None:
        """:meth:`record_raw` on PostgreSQL's asyncpg connection, with the operation's
        outbox ``frames`` (``(session_id, seq, created_at, payload)``) in the same statement."""
        if not self.enabled:
            rows = ()
        routes = self.routes_for_kinds(r[1] for r in rows)
        await pghot.write_rows(conn, frames, rows, routes)
        if routes:
            self.generation += 1

    async def record_my(self, cur: Any, rows: Sequence[tuple[str, str, int, float, bytes]]) -> None:
        """:meth:`record_raw` on MySQL / MariaDB's asyncmy cursor."""
        if not self.enabled or not rows:
            return
        targets = [self.sinks_for(r[1]) for r in rows]
        await myhot.insert_events(cur, rows, targets)
        if any(targets):
            self.generation += 1

    @staticmethod
    def _insert_returning(conn: Connection, values: list[dict[str, Any]]) -> list[int]:
        if len(values) == 1:
            key = conn.execute(_INSERT_EVENT, values[0]).inserted_primary_key
            return [int(key[0])] if key is not None else []
        return [int(r[0]) for r in conn.execute(_INSERT_EVENTS_RETURNING, values)]


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(data), separators=(",", ":"), default=str).encode()
