"""The SessionStore's hot statements on PostgreSQL, run by asyncpg directly.

Append, ack, replay, claim, fan-out and the per-turn handoff lookup run here, on an
``asyncpg`` connection the :class:`~talkwire.server.pgexec.AsyncpgExecutor` hands
out (inside one transaction per operation for writes; autocommit for reads: one
statement, one snapshot). The SQL strings are constants with ``$n`` placeholders,
so asyncpg's per-connection statement cache prepares each once. Several rows go
in one statement as arrays (``unnest``), and the rows one operation writes into
several tables go in one statement (data-modifying ``WITH``): a turn's frames,
its conversation events and their per-sink outbound rows are one round trip.
Each function does what its SQLAlchemy twin in :mod:`talkwire.server.store` does,
row for row; SQLAlchemy keeps the schema, the migrations and the cold paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from talkwire.server import schema

__all__ = [
    "SESSION_COLUMNS",
    "ack",
    "active_sessions",
    "advance_heads",
    "append",
    "claim_delivery",
    "claim_events",
    "frames_after",
    "handoff_row",
    "subscribers",
    "touch_replica",
    "write_rows",
]

_S = schema.sessions.name
_O = schema.outbox.name
_H = schema.handoffs.name
_E = schema.conversation_events.name
_P = schema.outbound_pending.name
_SUB = schema.subscriptions.name
_PE = schema.processed_events.name

SESSION_COLUMNS = tuple(c.name for c in schema.sessions.columns)
_HANDOFF_COLUMNS = tuple(c.name for c in schema.handoffs.columns)

# -- the rows of a write: frames, events, outbound pending rows ----------------------
# $1-$4: frames (session_id, seq, created_at, payload); $5-$9: events (session_id,
# kind, seq, created_at, body); $10-$11: routes (kind, sink): one pending row per
# event and sink that takes its kind. Event ids follow the row order (ORDER BY the
# ordinality: the id default is evaluated row by row in that order).
_FRAMES = (
    f"INSERT INTO {_O} (session_id, seq, created_at, payload) "  # noqa: S608
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::float8[], $4::bytea[])"
)
_EVENTS_SELECT = (
    "SELECT t.sid, t.kind, t.seq, t.ts, t.body FROM unnest({0}::text[], {1}::text[], "
    "{2}::bigint[], {3}::float8[], {4}::bytea[]) WITH ORDINALITY AS t(sid, kind, seq, ts, body, o) "
    "ORDER BY t.o"
)
_EVENTS_INTO = f"INSERT INTO {_E} (session_id, kind, seq, created_at, body) "
_PENDING_FROM_EVENTS = (
    f"INSERT INTO {_P} (sink, event_id, session_id, created_at) "  # noqa: S608
    "SELECT r.sink, e.id, e.session_id, e.created_at FROM e "
    "JOIN unnest({0}::text[], {1}::text[]) AS r(kind, sink) ON r.kind = e.kind"
)


def _rows_sql(frames: bool, events: bool, routes: bool) -> str:
    first = 5 if frames else 1
    marks = [f"${first + i}" for i in range(7)]
    events_insert = _EVENTS_INTO + _EVENTS_SELECT.format(*marks[:5])
    parts: list[str] = []
    if frames:
        parts.append(f"f AS ({_FRAMES})")
    if events and routes:
        parts.append(f"e AS ({events_insert} RETURNING id, session_id, kind, created_at)")
        main = _PENDING_FROM_EVENTS.format(*marks[5:])
    elif events:
        main = events_insert
    else:
        return _FRAMES
    return (f"WITH {', '.join(parts)} " if parts else "") + main


_ROWS = {
    (frames, events, routes): _rows_sql(frames, events, routes)
    for frames in (False, True)
    for events in (False, True)
    for routes in (False, True)
    if frames or events
}


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(c) for c in zip(*rows, strict=True)]


async def write_rows(
    conn: asyncpg.Connection,
    frames: Sequence[tuple[str, int, float, bytes]],
    events: Sequence[tuple[str, str, int, float, bytes]] = (),
    routes: Sequence[tuple[str, str]] = (),
) -> None:
    """Insert outbox frames ``(session_id, seq, created_at, payload)``, conversation events
    ``(session_id, kind, seq, created_at, body)`` (ids in this order) and, for each event,
    one outbound pending row per ``(kind, sink)`` route of its kind: one statement."""
    routes = routes if events else ()
    key = (bool(frames), bool(events), bool(routes))
    if not any(key):
        return
    args: list[Any] = []
    if frames:
        args += _columns(frames, 4)
    if events:
        args += _columns(events, 5)
    if routes:
        args += _columns(routes, 2)
    await conn.execute(_ROWS[key], *args)


# -- append: one statement ------------------------------------------------------------


def _varint(v: str) -> str:
    """SQL for the protobuf varint of the bigint expression ``v`` (>= 0; at most 9 bytes),
    byte for byte :func:`talkwire.server.frames.with_seq`'s."""
    return (
        "(SELECT string_agg(set_byte('\\x00'::bytea, 0, "  # noqa: S608 - SQL of a constant
        f"((({v}) >> (7 * k)) & 127 | CASE WHEN ({v}) >> (7 * (k + 1)) > 0 "
        "THEN 128 ELSE 0 END)::int), ''::bytea ORDER BY k) "
        f"FROM generate_series(0, 8) AS k WHERE k = 0 OR ({v}) >> (7 * k) > 0)"
    )


# $1 session_id, $2 frame count, $3 now, $4 templates (bytea[]), $5 dialogue (text or
# NULL: unchanged); with events: $6 the turn (bytea or NULL), $7/$8 routes (kind, sink),
# $9/$10 the turn's and the frames' event kinds. The UPDATE takes
# the session's row lock and allocates the seqs; the frames get their seq prepended here
# (the bytes with_seq makes), their events follow the turn's in id order, and every event
# gets one pending row per sink of its kind. No row back: no such active session, nothing
# written. One statement is one transaction: no BEGIN / COMMIT round trips.
_APPEND_HEAD = (
    f"WITH h AS (UPDATE {_S} SET head_seq = head_seq + $2{{touch}}, "  # noqa: S608
    f"dialogue = COALESCE($5::text, dialogue) WHERE id = $1 AND state = {schema.ACTIVE} "
    "RETURNING head_seq - $2 AS base), "
    f"f AS (INSERT INTO {_O} (session_id, seq, created_at, payload) "
    f"SELECT $1, h.base + t.o, $3, '\\x08'::bytea || {_varint('h.base + t.o')} || t.tpl "
    "FROM h, unnest($4::bytea[]) WITH ORDINALITY AS t(tpl, o) RETURNING seq, payload)"
)
_APPEND_EVENTS = (
    f", e AS (INSERT INTO {_E} (session_id, kind, seq, created_at, body) "  # noqa: S608
    "SELECT $1, x.kind, x.seq, $3, x.body FROM ("
    "SELECT $9::text AS kind, 0::bigint AS seq, $6::bytea AS body FROM h "
    "WHERE $6::bytea IS NOT NULL "
    "UNION ALL SELECT $10::text, f.seq, f.payload FROM f) AS x ORDER BY x.seq "
    "RETURNING id, kind), "
    f"p AS (INSERT INTO {_P} (sink, event_id, session_id, created_at) "
    "SELECT r.sink, e.id, $1, $3 FROM e "
    "JOIN unnest($7::text[], $8::text[]) AS r(kind, sink) ON r.kind = e.kind)"
)
_APPEND_RESULT = " SELECT h.base, f.seq, f.payload FROM h LEFT JOIN f ON true ORDER BY f.seq"
# Keyed by (events, touch): without touch, last_active_at is left as it is, so the row's
# indexed columns do not change and PostgreSQL can update it in place (HOT).
_APPEND = {
    (events, touch): _APPEND_HEAD.format(touch=", last_active_at = $3" if touch else "")
    + (_APPEND_EVENTS if events else "")
    + _APPEND_RESULT
    for events in (False, True)
    for touch in (False, True)
}


async def append(
    conn: asyncpg.Connection,
    session_id: str,
    templates: Sequence[bytes],
    now: float,
    dialogue: str | None,
    turn: bytes | None,
    events: tuple[str, str] | None,
    routes: Sequence[tuple[str, str]] = (),
    *,
    touch: bool = True,
) -> list[tuple[int, bytes]] | None:
    """Advance the active session's head by ``len(templates)``, store the frames (seq
    prepended), their ``frame.appended`` events after the ``turn.received`` one of
    ``turn`` and those events' pending rows, in one statement; ``events`` names the two
    kinds (None: write no events); ``touch`` False leaves ``last_active_at`` as it is.
    Return the frames ``(seq, payload)``; None: no such active session, nothing written."""
    args: list[Any] = [session_id, len(templates), now, list(templates), dialogue]
    if events is None:
        rows = await conn.fetch(_APPEND[False, touch], *args)
    else:
        kinds, sinks = _columns(routes, 2)
        rows = await conn.fetch(_APPEND[True, touch], *args, turn, kinds, sinks, *events)
    if not rows:
        return None
    return [(int(r[1]), bytes(r[2])) for r in rows if r[1] is not None]


# -- per session ------------------------------------------------------------------


# One statement: the pin caps the floor; the UPDATE (guarded as in SQLite and SQLAlchemy)
# returns the floor it set; the DELETE drops up to it (nothing when the UPDATE did not match).
_ACK = (
    f"WITH p AS (SELECT LEAST($2::bigint, COALESCE((SELECT pin_seq FROM {_H} "  # noqa: S608
    f"WHERE session_id = $1 AND state IN ({schema.HANDOFF_QUEUED}, {schema.HANDOFF_AGENT})), "
    "$2::bigint)) AS fl), "
    f"u AS (UPDATE {_S} AS s SET acked_seq = GREATEST(s.acked_seq, $2::bigint), "
    "floor_seq = GREATEST(s.floor_seq, p.fl), last_active_at = $3 FROM p "
    "WHERE s.id = $1 AND (s.acked_seq < $2::bigint OR s.floor_seq < p.fl) "
    "AND s.head_seq >= $2::bigint RETURNING p.fl) "
    f"DELETE FROM {_O} WHERE session_id = $1 AND seq <= (SELECT fl FROM u)"
)


async def ack(conn: asyncpg.Connection, acks: Sequence[tuple[str, int]], now: float) -> None:
    """Record acks ``(session_id, seq)`` (in this order) and drop what they free (not
    above a handoff's pin)."""
    if len(acks) == 1:
        session_id, seq = acks[0]
        await conn.execute(_ACK, session_id, seq, now)
    else:
        await conn.executemany(_ACK, [(sid, seq, now) for sid, seq in acks])


_FRAMES_AFTER = f"SELECT seq, payload FROM {_O} WHERE session_id = $1 AND seq > $2 ORDER BY seq"  # noqa: S608
_FRAMES_AFTER_LIMIT = _FRAMES_AFTER + " LIMIT $3"


async def frames_after(
    conn: asyncpg.Connection, session_id: str, after: int, limit: int | None
) -> list[tuple[int, bytes]]:
    """Retained ``(seq, payload)`` above ``after``, in order (one statement: one snapshot)."""
    if limit is None:
        rows = await conn.fetch(_FRAMES_AFTER, session_id, after)
    else:
        rows = await conn.fetch(_FRAMES_AFTER_LIMIT, session_id, after, limit)
    return [(int(r[0]), bytes(r[1])) for r in rows]


_SESSION = f"SELECT {', '.join(SESSION_COLUMNS)} FROM {_S} WHERE id = $1"  # noqa: S608
_TOUCH_REPLICA = f"UPDATE {_S} SET last_active_at = $1, replica = $2 WHERE id = $3"  # noqa: S608
_HANDOFF = f"SELECT {', '.join(_HANDOFF_COLUMNS)} FROM {_H} WHERE session_id = $1"  # noqa: S608


async def session_row(conn: asyncpg.Connection, session_id: str) -> dict[str, Any] | None:
    """The session row as a column -> value mapping."""
    row = await conn.fetchrow(_SESSION, session_id)
    return None if row is None else dict(row.items())


async def touch_replica(
    conn: asyncpg.Connection, session_id: str, now: float, replica: str | None
) -> None:
    await conn.execute(_TOUCH_REPLICA, now, replica, session_id)


async def handoff_row(conn: asyncpg.Connection, session_id: str) -> dict[str, Any] | None:
    """The session's handoff row as a column -> value mapping."""
    row = await conn.fetchrow(_HANDOFF, session_id)
    return None if row is None else dict(row.items())


# -- fan-out ------------------------------------------------------------------------

_CLAIM_ONE = (
    f"INSERT INTO {_PE} (event_id, processed_at) VALUES ($1, $2) "  # noqa: S608
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_CLAIM_MANY = (
    f"INSERT INTO {_PE} (event_id, processed_at) SELECT i, $2 FROM unnest($1::text[]) AS i "  # noqa: S608
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_SUBSCRIBERS = (
    f"SELECT b.key, b.session_id FROM {_SUB} AS b JOIN {_S} AS s ON s.id = b.session_id "  # noqa: S608
    f"WHERE b.key = ANY($1::text[]) AND s.state = {schema.ACTIVE} ORDER BY b.key, b.session_id"
)
_ACTIVE = f"SELECT id FROM {_S} WHERE id = ANY($1::text[]) AND state = {schema.ACTIVE}"  # noqa: S608
# The row locks are taken in id order (LockRows above the sort), as acks and other
# fan-outs take them: no deadlock between them. The UPDATE then moves each locked head.
_ADVANCE_HEADS = (
    f"WITH l AS (SELECT id FROM {_S} WHERE id = ANY($1::text[]) "  # noqa: S608
    f"AND state = {schema.ACTIVE} ORDER BY id FOR UPDATE) "
    f"UPDATE {_S} AS s SET head_seq = s.head_seq + c.n "
    "FROM l JOIN unnest($1::text[], $2::bigint[]) AS c(id, n) ON c.id = l.id "
    "WHERE s.id = l.id RETURNING s.id, s.head_seq"
)


async def claim_delivery(conn: asyncpg.Connection, event_id: str, now: float) -> bool:
    """Record a delivery id; False when it was recorded before (nothing written). A
    concurrent claim of the same id waits for this transaction, then finds it."""
    return await conn.fetchval(_CLAIM_ONE, event_id, now) is not None


async def claim_events(conn: asyncpg.Connection, ids: Sequence[str], now: float) -> set[str]:
    """Record the distinct ``ids`` as processed; return those that were not before."""
    if not ids:
        return set()
    return {str(r[0]) for r in await conn.fetch(_CLAIM_MANY, list(ids), now)}


async def subscribers(conn: asyncpg.Connection, keys: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, session_id)`` of the active subscribers of ``keys``, ordered."""
    if not keys:
        return []
    return [(str(r[0]), str(r[1])) for r in await conn.fetch(_SUBSCRIBERS, list(keys))]


async def active_sessions(conn: asyncpg.Connection, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    return {str(r[0]) for r in await conn.fetch(_ACTIVE, list(ids))}


async def advance_heads(
    conn: asyncpg.Connection, counts: Sequence[tuple[str, int]]
) -> dict[str, int]:
    """Advance the head of each active session of ``(id, count)`` by its count (row locks
    in id order); return the new heads (closed or unknown sessions are left out)."""
    ids, ns = _columns(counts, 2)
    rows = await conn.fetch(_ADVANCE_HEADS, ids, ns)
    return {str(r[0]): int(r[1]) for r in rows}
