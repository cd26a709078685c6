"""Connector idempotency keys kept in the session database.

Implements :class:`talkwire.connectors.idempotency.IdempotencyStore` on the
``talkwire_idempotency_keys`` table (SQLite, PostgreSQL, MySQL/MariaDB), so keys
survive restarts and are shared by every replica. The race between two calls
with one key is decided by the table's primary key: the INSERT that commits
first owns the key, the other gets an ``IntegrityError`` and reads the record.
No row locks are taken (MariaDB gap locks would deadlock two such inserts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from talkwire.connectors.errors import ConnectorUnavailableError
from talkwire.connectors.idempotency import IdempotencyRecord
from talkwire.server import schema
from talkwire.server.sqlexec import SqlExecutor

__all__ = ["SqlIdempotencyStore"]

_K = schema.idempotency_keys
_GET = sa.select(_K.c.state, _K.c.fingerprint, _K.c.result, _K.c.created_at, _K.c.expires_at).where(
    _K.c.id == sa.bindparam("kid")
)
_ATTEMPTS = 4


def _record(row: Any) -> IdempotencyRecord:
    if row.state == "done":
        return IdempotencyRecord("done", row.fingerprint, row.result)
    return IdempotencyRecord("pending", row.fingerprint, row.result)


class SqlIdempotencyStore:
    """Idempotency records on the store's database (see the module docstring)."""

    def __init__(self, executor: SqlExecutor, *, clock: Callable[[], float] = time.time) -> None:
        self._db = executor
        self._clock = clock

    async def claim(
        self, key: str, fingerprint: str, *, window: float, stale_after: float
    ) -> IdempotencyRecord | None:
        for _ in range(_ATTEMPTS):
            now = self._clock()
            row = {
                "id": key,
                "state": "pending",
                "fingerprint": fingerprint,
                "result": None,
                "created_at": now,
                "expires_at": now + window,
            }
            try:
                await self._db.write(self._insert(row))
            except IntegrityError:
                pass
            else:
                return None
            current = await self._db.read(lambda conn: conn.execute(_GET, {"kid": key}).first())
            if current is None:
                continue  # released in between: try to claim it again
            expired = current.expires_at <= now
            stale = current.state == "pending" and current.created_at <= now - stale_after
            if not (expired or stale):
                return _record(current)
            await self._db.write(self._drop_if_unchanged(key, current.created_at))
        raise ConnectorUnavailableError("idempotency key is contended; retry later")

    @staticmethod
    def _insert(row: dict[str, Any]) -> Callable[[Connection], Any]:
        return lambda conn: conn.execute(_K.insert(), row)

    @staticmethod
    def _drop_if_unchanged(key: str, created_at: float) -> Callable[[Connection], Any]:
        stmt = _K.delete().where(_K.c.id == key, _K.c.created_at == created_at)
        return lambda conn: conn.execute(stmt)

    async def complete(self, key: str, result: str) -> None:
        stmt = _K.update().where(_K.c.id == key).values(state="done", result=result)
        await self._db.write(lambda conn: conn.execute(stmt))

    async def release(self, key: str) -> None:
        stmt = _K.delete().where(_K.c.id == key, _K.c.state == "pending")
        await self._db.write(lambda conn: conn.execute(stmt))

    async def lookup(self, key: str) -> IdempotencyRecord | None:
        row = await self._db.read(lambda conn: conn.execute(_GET, {"kid": key}).first())
        if row is None or row.expires_at <= self._clock():
            return None
        return _record(row)

    async def forget_expired(self) -> int:
        """Drop records past their window; returns how many."""
        stmt = _K.delete().where(_K.c.expires_at <= self._clock())
        return await self._db.write(lambda conn: conn.execute(stmt).rowcount or 0)
