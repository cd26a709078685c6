"""The SessionStore's hot statements on SQLite, as stdlib ``sqlite3`` prepared statements.

Append, ack, replay, claim and the handoff lookup of every turn run here, on the
raw connection the :class:`~talkwire.server.sqlexec.SqliteExecutor` hands out
(the writer's, inside its group-committed transaction, or a reader's). The SQL
strings are constants, so ``sqlite3``'s statement cache prepares each once. Each
function does what its SQLAlchemy twin in :mod:`talkwire.server.store` does, row
for row; SQLAlchemy keeps the schema, the migrations and the cold paths.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import Any

from talkwire.server import schema

__all__ = [
    "SESSION_COLUMNS",
    "ack",
    "active_sessions",
    "append",
    "claim_delivery",
    "claim_events",
    "frames_after",
    "handoff_row",
    "heads",
    "insert_events",
    "insert_frames",
    "insert_outbox",
    "seen_events",
    "session_row",
    "set_heads",
    "subscribers",
    "touch",
    "touch_replica",
]

_S = schema.sessions.name
_O = schema.outbox.name
_H = schema.handoffs.name
_E = schema.conversation_events.name
_P = schema.outbound_pending.name

SESSION_COLUMNS = tuple(c.name for c in schema.sessions.columns)
_HANDOFF_COLUMNS = tuple(c.name for c in schema.handoffs.columns)

_ADVANCE = (
    f"UPDATE {_S} SET head_seq = head_seq + ?, last_active_at = ? "  # noqa: S608 - constants
    f"WHERE id = ? AND state = {schema.ACTIVE} RETURNING head_seq"
)
_ADVANCE_DIALOGUE = (
    f"UPDATE {_S} SET head_seq = head_seq + ?, last_active_at = ?, dialogue = ? "  # noqa: S608
    f"WHERE id = ? AND state = {schema.ACTIVE} RETURNING head_seq"
)
# The same without last_active_at: its index entry is not moved (see SessionStore.append).
_ADVANCE_ONLY = (
    f"UPDATE {_S} SET head_seq = head_seq + ? "  # noqa: S608
    f"WHERE id = ? AND state = {schema.ACTIVE} RETURNING head_seq"
)
_ADVANCE_ONLY_DIALOGUE = (
    f"UPDATE {_S} SET head_seq = head_seq + ?, dialogue = ? "  # noqa: S608
    f"WHERE id = ? AND state = {schema.ACTIVE} RETURNING head_seq"
)
_INSERT_FRAME = f"INSERT INTO {_O} (session_id, seq, created_at, payload) VALUES (?, ?, ?, ?)"  # noqa: S608
_INSERT_EVENT = f"INSERT INTO {_E} (session_id, kind, seq, created_at, body) VALUES (?, ?, ?, ?, ?)"  # noqa: S608
_INSERT_PENDING = f"INSERT INTO {_P} (sink, event_id, session_id, created_at) VALUES (?, ?, ?, ?)"  # noqa: S608
_PIN = (
    f"SELECT pin_seq FROM {_H} WHERE session_id = ? "  # noqa: S608
    f"AND state IN ({schema.HANDOFF_QUEUED}, {schema.HANDOFF_AGENT})"
)
_ACK = (
    f"UPDATE {_S} SET "  # noqa: S608
    "acked_seq = CASE WHEN acked_seq < ?1 THEN ?1 ELSE acked_seq END, "
    "floor_seq = CASE WHEN floor_seq < ?2 THEN ?2 ELSE floor_seq END, "
    "last_active_at = ?3 "
    "WHERE id = ?4 AND (acked_seq < ?1 OR floor_seq < ?2) AND head_seq >= ?1"
)
_DROP = f"DELETE FROM {_O} WHERE session_id = ? AND seq <= ?"  # noqa: S608
_FRAMES_AFTER = f"SELECT seq, payload FROM {_O} WHERE session_id = ? AND seq > ? ORDER BY seq"  # noqa: S608
_FRAMES_AFTER_LIMIT = _FRAMES_AFTER + " LIMIT ?"
_SESSION = f"SELECT {', '.join(SESSION_COLUMNS)} FROM {_S} WHERE id = ?"  # noqa: S608
_TOUCH_REPLICA = f"UPDATE {_S} SET last_active_at = ?, replica = ? WHERE id = ?"  # noqa: S608
_TOUCH = f"UPDATE {_S} SET last_active_at = ? WHERE id = ?"  # noqa: S608
_HANDOFF = f"SELECT {', '.join(_HANDOFF_COLUMNS)} FROM {_H} WHERE session_id = ?"  # noqa: S608


def append(
    conn: sqlite3.Connection,
    session_id: str,
    payloads: Sequence[bytes],
    now: float,
    dialogue: str | None,
    *,
    touch: bool = True,
) -> int | None:
    """Advance the session's head by ``len(payloads)`` (and its ``last_active_at`` to
    ``now`` unless ``touch`` is False); return the first seq of the frames (their seqs
    already in ``payloads``); None: no such active session, nothing written.
    ``payloads`` may be empty (a dialogue-only save)."""
    n = len(payloads)
    if touch is False:
        if dialogue is None:
            row = conn.execute(_ADVANCE_ONLY, (n, session_id)).fetchone()
        else:
            row = conn.execute(_ADVANCE_ONLY_DIALOGUE, (n, dialogue, session_id)).fetchone()
    elif dialogue is None:
        row = conn.execute(_ADVANCE, (n, now, session_id)).fetchone()
    else:
        row = conn.execute(_ADVANCE_DIALOGUE, (n, now, dialogue, session_id)).fetchone()
    if row is None:
        return None
    return int(row[0]) - n + 1


def insert_frames(
    conn: sqlite3.Connection, session_id: str, first: int, payloads: Sequence[bytes], now: float
) -> None:
    """Store frames ``first, first+1, ...`` of one session."""
    if len(payloads) == 1:
        conn.execute(_INSERT_FRAME, (session_id, first, now, payloads[0]))
    elif payloads:
        conn.executemany(
            _INSERT_FRAME, [(session_id, first + i, now, p) for i, p in enumerate(payloads)]
        )


def insert_events(
    conn: sqlite3.Connection,
    rows: Sequence[tuple[str, str, int, float, bytes]],
    sinks: Sequence[tuple[str, ...]],
) -> None:
    """Insert conversation events ``(session_id, kind, seq, created_at, body)`` and, for
    each event, one pending row per sink in ``sinks`` (parallel to ``rows``)."""
    if not any(sinks):
        if len(rows) == 1:
            conn.execute(_INSERT_EVENT, rows[0])
        else:
            conn.executemany(_INSERT_EVENT, rows)
        return
    # Multi-row INSERTs (one each for a turn's few rows): the events' rowids are
    # consecutive (a rowid table gives each new row max(rowid) + 1, and the writer's
    # transaction is the only writer), so the last one's id numbers its statement's rows.
    pending: list[Any] = []
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        values = [v for r in chunk for v in r]
        last = conn.execute(_multi_row(_INSERT_EVENTS, len(chunk), 5), values).lastrowid
        assert last is not None  # noqa: S101 - an INSERT into a rowid table
        first = last - len(chunk) + 1
        for i, (row, targets) in enumerate(zip(chunk, sinks[start:], strict=False)):
            for sink in targets:
                pending.append((sink, first + i, row[0], row[3]))
    for start in range(0, len(pending), _ROWS_PER_INSERT):
        chunk_p = pending[start : start + _ROWS_PER_INSERT]
        values = [v for r in chunk_p for v in r]
        conn.execute(_multi_row(_INSERT_PENDINGS, len(chunk_p), 4), values)


_INSERT_EVENTS = f"INSERT INTO {_E} (session_id, kind, seq, created_at, body) VALUES "  # noqa: S608
_INSERT_PENDINGS = f"INSERT INTO {_P} (sink, event_id, session_id, created_at) VALUES "  # noqa: S608
_ROWS_PER_INSERT = 100  # well under SQLite's bound parameter limit


@functools.lru_cache(maxsize=64)
def _multi_row(head: str, rows: int, columns: int) -> str:
    """``head`` with ``rows`` groups of ``columns`` placeholders (one constant string per
    row count: sqlite3's statement cache keeps it prepared)."""
    group = "(" + ", ".join("?" * columns) + ")"
    return head + ", ".join([group] * rows)


def ack(conn: sqlite3.Connection, session_id: str, seq: int, now: float) -> None:
    """Record an ack up to ``seq`` and drop what it frees (not above a handoff's pin)."""
    pin = conn.execute(_PIN, (session_id,)).fetchone()
    floor = seq if pin is None else min(seq, int(pin[0]))
    if conn.execute(_ACK, (seq, floor, now, session_id)).rowcount:
        conn.execute(_DROP, (session_id, floor))


def frames_after(
    conn: sqlite3.Connection, session_id: str, after: int, limit: int | None
) -> list[tuple[int, bytes]]:
    """Retained ``(seq, payload)`` above ``after``, in order (one statement: one snapshot)."""
    if limit is None:
        return conn.execute(_FRAMES_AFTER, (session_id, after)).fetchall()
    return conn.execute(_FRAMES_AFTER_LIMIT, (session_id, after, limit)).fetchall()


def session_row(conn: sqlite3.Connection, session_id: str) -> dict[str, Any] | None:
    """The session row as a column -> value mapping."""
    row = conn.execute(_SESSION, (session_id,)).fetchone()
    return None if row is None else dict(zip(SESSION_COLUMNS, row, strict=True))


def touch_replica(
    conn: sqlite3.Connection, session_id: str, now: float, replica: str | None
) -> None:
    conn.execute(_TOUCH_REPLICA, (now, replica, session_id))


def touch(conn: sqlite3.Connection, session_id: str, now: float) -> None:
    conn.execute(_TOUCH, (now, session_id))


def handoff_row(conn: sqlite3.Connection, session_id: str) -> dict[str, Any] | None:
    """The session's handoff row as a column -> value mapping."""
    row = conn.execute(_HANDOFF, (session_id,)).fetchone()
    return None if row is None else dict(zip(_HANDOFF_COLUMNS, row, strict=True))


# -- fan-out ------------------------------------------------------------------

_SUB = schema.subscriptions.name
_PE = schema.processed_events.name
_CLAIM = f"INSERT INTO {_PE} (event_id, processed_at) VALUES (?, ?)"  # noqa: S608
_SET_HEAD = f"UPDATE {_S} SET head_seq = ? WHERE id = ?"  # noqa: S608


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def seen_events(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` were processed before (at most a few thousand per call)."""
    sql = f"SELECT event_id FROM {_PE} WHERE event_id IN ({_marks(len(ids))})"  # noqa: S608
    return {str(r[0]) for r in conn.execute(sql, ids)}


def claim_events(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> None:
    """Record ``ids`` as processed (the caller checked none is)."""
    conn.executemany(_CLAIM, [(i, now) for i in ids])


def claim_delivery(conn: sqlite3.Connection, event_id: str, now: float) -> bool:
    """Record a delivery id; False when it was recorded before (nothing written)."""
    try:
        conn.execute(_CLAIM, (event_id, now))
    except sqlite3.IntegrityError:
        return False
    return True


def subscribers(conn: sqlite3.Connection, keys: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, session_id)`` of the active subscribers of ``keys``, ordered."""
    sql = (
        f"SELECT b.key, b.session_id FROM {_SUB} AS b JOIN {_S} AS s ON s.id = b.session_id "  # noqa: S608
        f"WHERE b.key IN ({_marks(len(keys))}) AND s.state = {schema.ACTIVE} "
        "ORDER BY b.key, b.session_id"
    )
    return conn.execute(sql, keys).fetchall()


def active_sessions(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    sql = f"SELECT id FROM {_S} WHERE id IN ({_marks(len(ids))}) AND state = {schema.ACTIVE}"  # noqa: S608
    return {str(r[0]) for r in conn.execute(sql, ids)}


def heads(conn: sqlite3.Connection, ids: Sequence[str]) -> list[tuple[str, int]]:
    """``(id, head_seq)`` of the active sessions among ``ids``, in id order."""
    sql = (
        f"SELECT id, head_seq FROM {_S} WHERE id IN ({_marks(len(ids))}) "  # noqa: S608
        f"AND state = {schema.ACTIVE} ORDER BY id"
    )
    return conn.execute(sql, ids).fetchall()


def set_heads(conn: sqlite3.Connection, new_heads: Sequence[tuple[int, str]]) -> None:
    """``(head_seq, id)`` pairs."""
    conn.executemany(_SET_HEAD, new_heads)


def insert_outbox(conn: sqlite3.Connection, rows: Sequence[tuple[str, int, float, bytes]]) -> None:
    """``(session_id, seq, created_at, payload)`` rows."""
    conn.executemany(_INSERT_FRAME, rows)
