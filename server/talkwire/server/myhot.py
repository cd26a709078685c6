"""The SessionStore's hot statements on MySQL / MariaDB, run by asyncmy directly.

Append (with its conversation events and their outbound pending rows), ack, replay,
claim, fan-out and the per-turn handoff lookup run here, on an ``asyncmy`` cursor the
:class:`~talkwire.server.myexec.AsyncmyExecutor` hands out (inside one transaction per
write; autocommit reads). The SQL strings are constants with ``%s`` placeholders; rows
of one table go in one multi-row ``INSERT`` (asyncmy's ``executemany`` rewrites
``INSERT ... VALUES`` so). MariaDB has no ``UPDATE ... RETURNING``: the head is read
under its row lock (``SELECT ... FOR UPDATE``), as the SQLAlchemy twin in
:mod:`talkwire.server.store` does; event ids come back from ``INSERT ... RETURNING``
(MariaDB 10.5+) only when a sink needs them. A fan-out's key and session lists go as
``IN (...)`` of at most :data:`CHUNK` values, its new heads as one ``UPDATE`` with a
``CASE`` per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asyncmy import errors as myerrors

from talkwire.server import schema

__all__ = [
    "CHUNK",
    "SESSION_COLUMNS",
    "ack",
    "active_sessions",
    "advance",
    "claim_delivery",
    "claim_events",
    "frames_after",
    "handoff_row",
    "insert_events",
    "insert_frames",
    "lock_heads",
    "seen_events",
    "session_row",
    "set_heads",
    "subscribers",
    "touch_replica",
]

CHUNK = 1000
"""Most values in one ``IN (...)`` list or rows in one multi-row ``INSERT``."""

_S = schema.sessions.name
_O = schema.outbox.name
_H = schema.handoffs.name
_E = schema.conversation_events.name
_P = schema.outbound_pending.name

_SUB = schema.subscriptions.name
_PE = schema.processed_events.name

SESSION_COLUMNS = tuple(c.name for c in schema.sessions.columns)
_HANDOFF_COLUMNS = tuple(c.name for c in schema.handoffs.columns)

_LOCK_HEAD = f"SELECT head_seq FROM {_S} WHERE id = %s AND state = {schema.ACTIVE} FOR UPDATE"  # noqa: S608 - constants
_ADVANCE = f"UPDATE {_S} SET head_seq = head_seq + %s, last_active_at = %s WHERE id = %s"  # noqa: S608
_ADVANCE_DIALOGUE = (
    f"UPDATE {_S} SET head_seq = head_seq + %s, last_active_at = %s, dialogue = %s "  # noqa: S608
    "WHERE id = %s"
)
# The same leaving last_active_at (and its index entry) as it is.
_ADVANCE_ONLY = f"UPDATE {_S} SET head_seq = head_seq + %s WHERE id = %s"  # noqa: S608
_ADVANCE_ONLY_DIALOGUE = f"UPDATE {_S} SET head_seq = head_seq + %s, dialogue = %s WHERE id = %s"  # noqa: S608
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
    cur: Any, session_id: str, n: int, now: float, dialogue: str | None, *, touch: bool = True
) -> int | None:
    """Lock the active session's row, advance its head by ``n`` (and ``last_active_at``
    to ``now`` unless ``touch`` is False); return the first new seq (None: no such
    active session, nothing written)."""
    await cur.execute(_LOCK_HEAD, (session_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    if not touch:
        if dialogue is None:
            await cur.execute(_ADVANCE_ONLY, (n, session_id))
        else:
            await cur.execute(_ADVANCE_ONLY_DIALOGUE, (n, dialogue, session_id))
    elif dialogue is None:
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
    returning = any(sinks)
    pending: list[tuple[str, int, str, float]] = []
    for i in range(0, len(rows), CHUNK):
        chunk = rows[i : i + CHUNK]
        values = _EVENT_INTO + ", ".join([_EVENT_ROW] * len(chunk))
        params = [v for row in chunk for v in row]
        if not returning:
            await cur.execute(values, params)
            continue
        await cur.execute(values + " RETURNING id", params)
        ids = [int(r[0]) for r in await cur.fetchall()]
        pending.extend(
            (sink, event_id, row[0], row[3])
            for event_id, row, targets in zip(ids, chunk, sinks[i : i + CHUNK], strict=True)
            for sink in targets
        )
    if pending:
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


_SESSION = f"SELECT {', '.join(SESSION_COLUMNS)} FROM {_S} WHERE id = %s"  # noqa: S608
_TOUCH_REPLICA = f"UPDATE {_S} SET last_active_at = %s, replica = %s WHERE id = %s"  # noqa: S608


async def session_row(cur: Any, session_id: str) -> dict[str, Any] | None:
    """The session row as a column -> value mapping."""
    await cur.execute(_SESSION, (session_id,))
    row = await cur.fetchone()
    return None if row is None else dict(zip(SESSION_COLUMNS, row, strict=True))


async def touch_replica(cur: Any, session_id: str, now: float, replica: str | None) -> None:
    await cur.execute(_TOUCH_REPLICA, (now, replica, session_id))


# -- fan-out ------------------------------------------------------------------------

_CLAIM = f"INSERT INTO {_PE} (event_id, processed_at) VALUES (%s, %s)"  # noqa: S608
_DUPLICATE_KEY = 1062


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


async def claim_delivery(cur: Any, event_id: str, now: float) -> bool:
    """Record a delivery id (the transaction's first statement); False when it was
    recorded before (nothing written)."""
    try:
        await cur.execute(_CLAIM, (event_id, now))
    except myerrors.IntegrityError as exc:
        if exc.args and exc.args[0] == _DUPLICATE_KEY:
            return False
        raise
    return True


async def seen_events(cur: Any, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` were processed before."""
    seen: set[str] = set()
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        await cur.execute(
            f"SELECT event_id FROM {_PE} WHERE event_id IN ({_marks(len(chunk))})",  # noqa: S608
            chunk,
        )
        seen.update(str(r[0]) for r in await cur.fetchall())
    return seen


async def claim_events(cur: Any, ids: Sequence[str], now: float) -> None:
    """Record ``ids`` as processed (the caller checked none is)."""
    if ids:
        await cur.executemany(_CLAIM, [(i, now) for i in ids])


async def subscribers(cur: Any, keys: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, session_id)`` of the active subscribers of ``keys``, ordered per chunk."""
    out: list[tuple[str, str]] = []
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        await cur.execute(
            f"SELECT b.key, b.session_id FROM {_SUB} AS b JOIN {_S} AS s "  # noqa: S608
            f"ON s.id = b.session_id WHERE b.key IN ({_marks(len(chunk))}) "
            f"AND s.state = {schema.ACTIVE} ORDER BY b.key, b.session_id",
            chunk,
        )
        out.extend((str(k), str(sid)) for k, sid in await cur.fetchall())
    return out


async def active_sessions(cur: Any, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        await cur.execute(
            f"SELECT id FROM {_S} WHERE id IN ({_marks(len(chunk))}) "  # noqa: S608
            f"AND state = {schema.ACTIVE}",
            chunk,
        )
        found.update(str(r[0]) for r in await cur.fetchall())
    return found


async def lock_heads(cur: Any, ids: Sequence[str]) -> list[tuple[str, int]]:
    """``(id, head_seq)`` of the active sessions among the sorted ``ids``, row locks taken
    in id order."""
    out: list[tuple[str, int]] = []
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        await cur.execute(
            f"SELECT id, head_seq FROM {_S} WHERE id IN ({_marks(len(chunk))}) "  # noqa: S608
            f"AND state = {schema.ACTIVE} ORDER BY id FOR UPDATE",
            chunk,
        )
        out.extend((str(sid), int(head)) for sid, head in await cur.fetchall())
    return out


async def set_heads(cur: Any, new_heads: Sequence[tuple[str, int]]) -> None:
    """``(id, head_seq)`` pairs (rows locked by :func:`lock_heads`): one UPDATE per chunk."""
    for i in range(0, len(new_heads), CHUNK):
        chunk = new_heads[i : i + CHUNK]
        cases = " ".join(["WHEN %s THEN %s"] * len(chunk))
        params: list[Any] = [v for pair in chunk for v in pair]
        params += [sid for sid, _ in chunk]
        await cur.execute(
            f"UPDATE {_S} SET head_seq = CASE id {cases} END "  # noqa: S608
            f"WHERE id IN ({_marks(len(chunk))})",
            params,
        )
