"""The outbound outbox's queries: pending deliveries, dead letters, transcripts, status.

Every method is one short transaction through the store's executor; nothing here holds
a transaction open while a sink is called (the claim is an advisory lock, see
:mod:`talkwire.server.outbound.claims`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from talkwire.server import schema
from talkwire.server.outbound.events import StoredEvent
from talkwire.server.outbound.record import FRAME_APPENDED, TURN_RECEIVED
from talkwire.server.sqlexec import SqlExecutor, SqliteExecutor

__all__ = ["OutboundOutbox", "SinkBacklog"]

_E = schema.conversation_events
_P = schema.outbound_pending
_D = schema.outbound_dead
_CHUNK = 500
_TRANSCRIPT_KINDS = (TURN_RECEIVED, FRAME_APPENDED)

# SQLite's raw statements (the relay's per-round reads and its settle skip SQLAlchemy).
# A round is read in the order of the pending table's primary key (sink, event_id): each
# session's rows come as a prefix of its pending events, the longest-waiting session first.
_RAW_SCAN = (
    f"SELECT e.id, e.session_id, e.kind, e.seq, e.created_at, e.body FROM {_P.name} AS p "  # noqa: S608
    f"JOIN {_E.name} AS e ON e.id = p.event_id "
    "WHERE p.sink = ? AND p.event_id > ?{skip} ORDER BY p.event_id LIMIT ?"
)
_SCAN_ROWS = 2000
_MAX_PARAMS = 30_000  # SQLite binds at most 32,766 parameters per statement
_RAW_SETTLE = f"DELETE FROM {_P.name} WHERE sink = ? AND event_id IN ({{marks}})"  # noqa: S608
_RAW_DEAD = (
    f"INSERT INTO {_D.name} (sink, event_id, session_id, created_at, attempts, reason, dead_at) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


@dataclass(frozen=True, slots=True)
class SinkBacklog:
    """What waits for one sink."""

    pending: int
    oldest_created_at: float | None
    dead: int


def _event(row: Any) -> StoredEvent:
    return StoredEvent(
        int(row.id), row.session_id, row.kind, int(row.seq), float(row.created_at), row.body
    )


class OutboundOutbox:
    """Reads and settles the per-sink pending rows (see :mod:`talkwire.server.schema`)."""

    def __init__(self, db: SqlExecutor, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._raw = db if isinstance(db, SqliteExecutor) else None
        self._clock = clock

    @property
    def single_process(self) -> bool:
        """SQLite: one process works the store, so the relay may read before it claims
        (its claims are in-process) and :meth:`next_events` reads a round in one go."""
        return self._raw is not None

    async def next_events(
        self, sink: str, sessions: int, per_session: int, *, skip: Collection[str] = ()
    ) -> dict[str, list[StoredEvent]]:
        """:meth:`pending_sessions` then :meth:`pending_events` of those, in one reader
        hop on SQLite (two statements; the second reads only rows still pending)."""
        if self._raw is None:
            ids = await self.pending_sessions(sink, sessions, skip=skip)
            return await self.pending_events(sink, ids, per_session) if ids else {}
        skipped = list(skip)[:_CHUNK]
        return await self._raw.read_raw(
            lambda conn: _scan_raw(conn, sink, sessions, per_session, skipped)
        )

    async def pending_sessions(
        self, sink: str, limit: int, *, skip: Collection[str] = ()
    ) -> list[str]:
        """Sessions with events waiting for ``sink``, the longest-waiting first."""
        oldest = sa.func.min(_P.c.event_id)
        query = sa.select(_P.c.session_id).where(_P.c.sink == sink)
        if skip:
            query = query.where(_P.c.session_id.not_in(list(skip)[:_CHUNK]))
        query = query.group_by(_P.c.session_id).order_by(oldest).limit(limit)
        return await self._db.read(lambda conn: [r[0] for r in conn.execute(query)])

    async def pending_events(
        self, sink: str, session_ids: Sequence[str], per_session: int
    ) -> dict[str, list[StoredEvent]]:
        """The first ``per_session`` waiting events of each session, in order."""

        def tx(conn: Connection) -> dict[str, list[StoredEvent]]:
            out: dict[str, list[StoredEvent]] = {sid: [] for sid in session_ids}
            for i in range(0, len(session_ids), _CHUNK):
                query = (
                    sa.select(_E)
                    .join(_P, _P.c.event_id == _E.c.id)
                    .where(_P.c.sink == sink, _P.c.session_id.in_(session_ids[i : i + _CHUNK]))
                    .order_by(_P.c.session_id, _P.c.event_id)
                )
                for row in conn.execute(query):
                    events = out[row.session_id]
                    if len(events) < per_session:
                        events.append(_event(row))
            return out

        return await self._db.read(tx)

    async def settle(
        self,
        sink: str,
        delivered: Iterable[int],
        dead: Sequence[tuple[StoredEvent, int, str]] = (),
    ) -> None:
        """Drop delivered events' rows; move ``dead`` (event, attempts, reason) to dead letters."""
        ids = list(delivered)
        now = self._clock()
        if not ids and not dead:
            return
        if self._raw is not None:
            await self._raw.write_raw(lambda conn: _settle_raw(conn, sink, ids, dead, now))
            return

        def tx(conn: Connection) -> None:
            gone = ids + [e.id for e, _, _ in dead]
            for i in range(0, len(gone), _CHUNK):
                conn.execute(
                    _P.delete().where(_P.c.sink == sink, _P.c.event_id.in_(gone[i : i + _CHUNK]))
                )
            if dead:
                conn.execute(
                    _D.insert(),
                    [
                        {
                            "sink": sink,
                            "event_id": e.id,
                            "session_id": e.session_id,
                            "created_at": e.created_at,
                            "attempts": attempts,
                            "reason": reason[:2000],
                            "dead_at": now,
                        }
                        for e, attempts, reason in dead
                    ],
                )

        await self._db.write(tx)

    async def redrive(self, sink: str | None = None) -> int:
        """Queue dead-lettered deliveries again (each in its session's order); return how many."""

        def tx(conn: Connection) -> int:
            query = sa.select(_D.c.sink, _D.c.event_id, _D.c.session_id, _D.c.created_at)
            if sink:
                query = query.where(_D.c.sink == sink)
            rows = [dict(r._mapping) for r in conn.execute(query)]
            if not rows:
                return 0
            conn.execute(_P.insert(), rows)
            for r in rows:
                conn.execute(
                    _D.delete().where(_D.c.sink == r["sink"], _D.c.event_id == r["event_id"])
                )
            return len(rows)

        return await self._db.write(tx)

    async def backlog(self, sinks: Iterable[str]) -> dict[str, SinkBacklog]:
        """Pending count, oldest pending time and dead letters of each sink."""
        names = list(sinks)

        def tx(conn: Connection) -> dict[str, SinkBacklog]:
            pending = {
                r[0]: (int(r[1]), r[2])
                for r in conn.execute(
                    sa.select(_P.c.sink, sa.func.count(), sa.func.min(_P.c.created_at)).group_by(
                        _P.c.sink
                    )
                )
            }
            dead = {
                r[0]: int(r[1])
                for r in conn.execute(sa.select(_D.c.sink, sa.func.count()).group_by(_D.c.sink))
            }
            return {
                n: SinkBacklog(
                    pending.get(n, (0, None))[0],
                    None if pending.get(n, (0, None))[1] is None else float(pending[n][1]),
                    dead.get(n, 0),
                )
                for n in names
            }

        return await self._db.read(tx)

    async def transcript(
        self, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[StoredEvent]:
        """The session's turns and frames after position ``after``, oldest first."""
        query = (
            sa.select(_E)
            .where(
                _E.c.session_id == session_id,
                _E.c.id > after,
                _E.c.kind.in_(_TRANSCRIPT_KINDS),
            )
            .order_by(_E.c.id)
            .limit(limit)
        )
        return await self._db.read(lambda conn: [_event(r) for r in conn.execute(query)])

    async def prune(self, older_than: float) -> int:
        """Drop events older than ``older_than`` seconds that no sink still waits for
        (pending or dead-lettered); return how many."""
        cutoff = self._clock() - older_than
        stmt = _E.delete().where(
            _E.c.created_at < cutoff,
            _E.c.id.not_in(sa.select(_P.c.event_id)),
            _E.c.id.not_in(sa.select(_D.c.event_id)),
        )
        return await self._db.write(lambda conn: int(conn.execute(stmt).rowcount or 0))

    async def session_events(self, session_id: str) -> list[StoredEvent]:
        """Every event of a session (the history checker and the connector sink read it)."""
        query = sa.select(_E).where(_E.c.session_id == session_id).order_by(_E.c.id)
        return await self._db.read(lambda conn: [_event(r) for r in conn.execute(query)])


def _scan_raw(
    conn: sqlite3.Connection, sink: str, sessions: int, per_session: int, skipped: list[str]
) -> dict[str, list[StoredEvent]]:
    """One round read in event order, in chunks of ``_SCAN_ROWS``: a chunk after the first
    leaves out the skipped sessions and those already full, so a large backlog of one
    session (or of one in backoff) costs a scan in SQLite, not rows in Python. Ends when
    ``sessions`` sessions are in the round or no pending row is left."""
    out: dict[str, list[StoredEvent]] = {}
    full: list[str] = []
    after = 0
    while len(out) < sessions:
        leave_out = skipped + full
        if len(leave_out) > _MAX_PARAMS:
            break
        where = f" AND p.session_id NOT IN ({_marks(len(leave_out))})" if leave_out else ""
        query = _RAW_SCAN.format(skip=where)
        rows = conn.execute(query, (sink, after, *leave_out, _SCAN_ROWS)).fetchall()
        for row in rows:
            events = out.get(row[1])
            if events is None:
                if len(out) >= sessions:
                    continue
                events = out[row[1]] = []
            if len(events) < per_session:
                events.append(StoredEvent(*row))
                if len(events) == per_session:
                    full.append(row[1])
        if len(rows) < _SCAN_ROWS:
            break
        after = rows[-1][0]
    return out


def _settle_raw(
    conn: sqlite3.Connection,
    sink: str,
    ids: list[int],
    dead: Sequence[tuple[StoredEvent, int, str]],
    now: float,
) -> None:
    gone = ids + [e.id for e, _, _ in dead]
    for i in range(0, len(gone), _CHUNK):
        chunk = gone[i : i + _CHUNK]
        conn.execute(_RAW_SETTLE.format(marks=_marks(len(chunk))), (sink, *chunk))
    if dead:
        conn.executemany(
            _RAW_DEAD,
            [
                (sink, e.id, e.session_id, e.created_at, attempts, reason[:2000], now)
                for e, attempts, reason in dead
            ],
        )
