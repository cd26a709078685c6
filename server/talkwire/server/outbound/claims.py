"""Which relay works a session's events: one at a time across replicas.

A relay claims ``(sink, session)`` with a database advisory lock before it reads that
session's pending events and releases it after it settled them:

- PostgreSQL: ``pg_try_advisory_lock`` (session-level, on one dedicated connection of
  the relay): a relay that dies drops its connection and so its locks at once;
- MySQL / MariaDB: ``GET_LOCK(name, 0)`` / ``RELEASE_LOCK``, the same way (named
  locks are server-wide there, so the name carries the database's: deployments
  sharing a server never claim each other's sessions);
- SQLite (one process): an in-process set.

The locks never touch the rows the hot path writes, so a claim never delays a turn.
No leader is elected; any replica works any session nobody else holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from talkwire.server.errors import UnavailableError

__all__ = ["LocalLocks", "SessionLocks", "SqlLocks", "open_locks"]


class SessionLocks(Protocol):
    """Non-blocking named locks; ``acquire`` returns the names it got."""

    async def acquire(self, names: Sequence[str]) -> list[str]: ...

    async def release(self, names: Sequence[str]) -> None: ...

    async def aclose(self) -> None: ...


class LocalLocks:
    """One process (SQLite): a set of held names."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    async def acquire(self, names: Sequence[str]) -> list[str]:
        got = [n for n in names if n not in self._held]
        self._held.update(got)
        return got

    async def release(self, names: Sequence[str]) -> None:
        self._held.difference_update(names)

    async def aclose(self) -> None:
        self._held.clear()


def _pg_key(name: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def _mysql_name(database: str, name: str) -> str:
    return "tw:" + hashlib.blake2b(f"{database}/{name}".encode(), digest_size=20).hexdigest()


class SqlLocks:
    """PostgreSQL advisory locks or MySQL named locks on one dedicated connection."""

    def __init__(self, url: str) -> None:
        self._engine: AsyncEngine = create_async_engine(url, pool_size=1, max_overflow=0)
        self._pg = self._engine.dialect.name == "postgresql"
        self._database = sa.make_url(url).database or ""
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _connection(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            conn = await self._engine.connect()
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead connection: its locks died with it
                await conn.invalidate()

    async def acquire(self, names: Sequence[str]) -> list[str]:
        if not names:
            return []
        async with self._lock:
            try:
                conn = await self._connection()
                if self._pg:
                    keys = [_pg_key(n) for n in names]
                    rows = await conn.execute(
                        sa.text(
                            "SELECT k FROM unnest(CAST(:keys AS bigint[])) AS k "
                            "WHERE pg_try_advisory_lock(k)"
                        ),
                        {"keys": keys},
                    )
                    got = {int(r[0]) for r in rows}
                    return [n for n, k in zip(names, keys, strict=True) if k in got]
                out = []
                for n in names:
                    res = await conn.execute(
                        sa.text("SELECT GET_LOCK(:n, 0)"), {"n": _mysql_name(self._database, n)}
                    )
                    if res.scalar() == 1:
                        out.append(n)
                return out
            except Exception as exc:
                await self._drop()
                raise UnavailableError(f"outbound claims unavailable: {exc!r}") from exc

    async def release(self, names: Sequence[str]) -> None:
        if not names:
            return
        async with self._lock:
            conn = self._conn
            if conn is None:
                return  # the connection died: so did its locks
            try:
                if self._pg:
                    await conn.execute(
                        sa.text(
                            "SELECT pg_advisory_unlock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"
                        ),
                        {"keys": [_pg_key(n) for n in names]},
                    )
                else:
                    for n in names:
                        await conn.execute(
                            sa.text("SELECT RELEASE_LOCK(:n)"),
                            {"n": _mysql_name(self._database, n)},
                        )
            except Exception:  # noqa: BLE001 - drop the connection: that releases every lock
                await self._drop()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):  # closing anyway
                    await self._conn.close()
                self._conn = None
        await self._engine.dispose()


def open_locks(url: str) -> SessionLocks:
    """The claim mechanism for the store at ``url``."""
    if sa.make_url(url).get_backend_name() == "sqlite":
        return LocalLocks()
    return SqlLocks(url)
