"""The SessionStore's per-turn statements on MySQL / MariaDB, run by asyncmy directly.

Append (with its conversation events and their outbound pending rows), ack, replay and
the per-turn handoff lookup run here, on an ``asyncmy`` cursor the
:class:`~talkwire.server.myexec.AsyncmyExecutor` hands out (inside one transaction per
write; autocommit reads). The SQL strings are constants with ``%s`` placeholders; rows
of one table go in one multi-row ``INSERT`` (asyncmy's ``executemany`` rewrites
``INSERT ... VALUES`` so). MariaDB has no ``UPDATE ... RETURNING``: the head is read
under its row lock (``SELECT ... FOR UPDATE``), as the SQLAlchemy twin in
:mod:`talkwire.server.store` does; event ids come back from ``INSERT ... RETURNING``
(MariaDB 10.5+) only when a sink needs them. Fan-out and claim stay on SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from talkwire.server import schema

__all__ = [
    "ack",
    "advance",
    "frames_after",
    "handoff_row",
    "insert_events",
    "insert_frames",
]

_S = schema.sessions.name
_O = schema.outbox.name
_H = schema.handoffs.name
_E = schema.conversation_events.name
_P = schema.outbound_pending.name

_HANDOFF_COLUMNS = tuple(c.name for c in schema.handoffs.columns)

_LOCK_HEAD = f"SELECT head_seq FROM {_S} WHERE id = %s AND state = {schema.ACTIVE} FOR UPDATE"  # noqa: S608 - constants
_ADVANCE = f"UPDATE {_S} SET head_seq = head_seq + %s, last_active_at = %s WHERE id = %s"  # noqa: S608
_ADVANCE_DIALOGUE = (
    f"UPDATE {_S} SET head_seq = head_seq + %s, last_active_at = %s, dialogue = %s "  # noqa: S608
    "WHERE id = %s"
)
_INSERT_FRAME = f"INSERT INTO {_O} (session_id, seq, created_at, payload) VALUES (%s, %s, %s, %s)"  # noqa: S608
_EVENT_INTO = f"INSERT INTO {_E} (session_id, kind, seq, created_at, body) VALUES "  # noqa: S608
_EVENT_ROW = "(%s, %s, %s, %s, %s)"
_INSERT_PENDING = (
    f"INSERT INTO {_P} (sink, event_id, session_id, created_at) VALUES (%s, %s, %s, %s)"  # noqa: S608
)
_PIN = (
    f"SELECT pin_seq FROM {_H} WHERE session_id = %s "  # noqa: S608
    f"AND state IN ({schema.HANDOFF_QUEUED}, {schema.HANDOFF_AGENT})"
)
# The engine connects with CLIENT_FOUND_ROWS: the row count is of matched rows.
_ACK = (
    f"UPDATE {_S} SET acked_seq = GREATEST(acked_seq, %s), "  # noqa: S608
    "floor_seq = GREATEST(floor_seq, %s), last_active_at = %s "
    "WHERE id = %s AND (acked_seq < %s OR floor_seq < %s) AND head_seq >= %s"
)
_DROP = f"DELETE FROM {_O} WHERE session_id = %s AND seq <= %s"  # noqa: S608
_FRAMES_AFTER = f"SELECT seq, payload FROM {_O} WHERE session_id = %s AND seq > %s ORDER BY seq"  # noqa: S608
_FRAMES_AFTER_LIMIT = _FRAMES_AFTER + " LIMIT %s"
_HANDOFF = f"SELECT {', '.join(_HANDOFF_COLUMNS)} FROM {_H} WHERE session_id = %s"  # noqa: S608


async def advance(
    cur: Any, session_id: str, n: int, now: float, dialogue: str | None
) -> int | None:
    """Lock the active session's row, advance its head by ``n``; return the first new seq
    (None: no such active session, nothing written)."""
    await cur.execute(_LOCK_HEAD, (session_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    if dialogue is None:
        await cur.execute(_ADVANCE, (n, now, session_id))
    else:
        await cur.execute(_ADVANCE_DIALOGUE, (n, now, dialogue, session_id))
    return int(row[0]) + 1


async def insert_frames(cur: Any, rows: Sequence[tuple[str, int, float, bytes]]) -> None:
    """``(session_id, seq, created_at, payload)`` rows, one statement."""
    if len(rows) == 1:
        await cur.execute(_INSERT_FRAME, rows[0])
    elif rows:
        await cur.executemany(_INSERT_FRAME, rows)


async def insert_events(
    cur: Any,
    rows: Sequence[tuple[str, str, int, float, bytes]],
    sinks: Sequence[tuple[str, ...]],
) -> None:
    """Conversation events ``(session_id, kind, seq, created_at, body)`` (ids in this
    order) and, for each, one pending row per sink in ``sinks`` (parallel to ``rows``)."""
    if not rows:
        return
    values = _EVENT_INTO + ", ".join([_EVENT_ROW] * len(rows))
    params = [v for row in rows for v in row]
    if not any(sinks):
        await cur.execute(values, params)
        return
    await cur.execute(values + " RETURNING id", params)
    ids = [int(r[0]) for r in await cur.fetchall()]
    pending = [
        (sink, event_id, row[0], row[3])
        for event_id, row, targets in zip(ids, rows, sinks, strict=True)
        for sink in targets
    ]
    await cur.executemany(_INSERT_PENDING, pending)


async def ack(cur: Any, acks: Sequence[tuple[str, int]], now: float) -> None:
    """Record acks ``(session_id, seq)`` in this order; drop what they free (not above a
    handoff's pin)."""
    for session_id, seq in acks:
        await cur.execute(_PIN, (session_id,))
        pin = await cur.fetchone()
        floor = seq if pin is None else min(seq, int(pin[0]))
        await cur.execute(_ACK, (seq, floor, now, session_id, seq, floor, seq))
        if cur.rowcount:
            await cur.execute(_DROP, (session_id, floor))


async def frames_after(
    cur: Any, session_id: str, after: int, limit: int | None
) -> list[tuple[int, bytes]]:
    """Retained ``(seq, payload)`` above ``after``, in order (one statement: one snapshot)."""
    if limit is None:
        await cur.execute(_FRAMES_AFTER, (session_id, after))
    else:
        await cur.execute(_FRAMES_AFTER_LIMIT, (session_id, after, limit))
    return [(int(seq), bytes(payload)) for seq, payload in await cur.fetchall()]


async def handoff_row(cur: Any, session_id: str) -> dict[str, Any] | None:
    """The session's handoff row as a column -> value mapping."""
    await cur.execute(_HANDOFF, (session_id,))
    row = await cur.fetchone()
    return None if row is None else dict(zip(_HANDOFF_COLUMNS, row, strict=True))
