"""PostgreSQL's executor: SQLAlchemy for the cold paths, asyncpg directly for the hot ones.

:class:`AsyncpgExecutor` is an :class:`~talkwire.server.sqlexec.AsyncEngineExecutor`
(its ``write`` / ``read`` run SQLAlchemy transaction functions, unchanged) that
also opens an ``asyncpg`` pool from the same URL, on first use. The store's hot
operations (:mod:`talkwire.server.pghot`) are async functions of an asyncpg
connection run by :meth:`~AsyncpgExecutor.write_pg` (one transaction each,
deadlock / serialisation failures run again, as ``write`` does) and
:meth:`~AsyncpgExecutor.read_pg` (autocommit). Both are shielded from the
caller's cancellation, and a database that cannot be reached is an
``UnavailableError`` (the driver's text goes to the debug log, not to clients).

A connection that fails is terminated, never returned to the pool. A pooled
connection the server has dropped (a restart, ``pg_terminate_backend``, an idle
timeout) fails its ``BEGIN``, or refuses to send at all: nothing of the operation
reached the database, so it runs again on another connection. Once past ``BEGIN``
(or, for a one-statement write without a transaction, once the statement was
sent) a lost connection is reported, never retried (a ``COMMIT`` whose answer was
lost may have committed). A read always runs again on another connection. The
pool's release runs no reset query (the hot paths set no session state): one round
trip fewer per operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import sqlalchemy as sa

from talkwire.server.errors import UnavailableError
from talkwire.server.sqlexec import AsyncEngineExecutor, store_unavailable

__all__ = ["AsyncpgExecutor", "PgTx"]

log = logging.getLogger(__name__)

T = TypeVar("T")
PgTx = Callable[[asyncpg.Connection], Awaitable[T]]
"""A hot-path transaction function: ``async def fn(conn: asyncpg.Connection) -> T``."""

_RETRIES = 3
# Query parameters of SQLAlchemy's asyncpg dialect, not of asyncpg's DSN.
_DIALECT_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")
# The database is gone or refuses work: connection failures (08), operator
# intervention (57: shutdown, cannot connect now, statement timeout), resources (53).
_DOWN = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


def _dsn(url: str) -> str:
    u = sa.make_url(url).set(drivername="postgresql").difference_update_query(_DIALECT_ONLY)
    return u.render_as_string(hide_password=False)


async def _keep(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to undo (the hot paths set no session state,
    and asyncpg rolls back an open transaction itself), so no reset query round trip."""


class AsyncpgExecutor(AsyncEngineExecutor):
    """PostgreSQL: the async engine for the cold paths, an asyncpg pool for the hot ones."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        super().__init__(url, pool_size=pool_size, echo=echo)
        self._dsn = _dsn(url)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    async def _acquire_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise UnavailableError("session store is closed")
        pool = self._pool
        if pool is None:
            async with self._opening:
                if self._pool is None:
                    # min_size 0: opening never fails; connections are made on demand
                    # and kept (no idle timer re-armed on every release).
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=self._pool_size,
                        reset=_keep,
                        max_inactive_connection_lifetime=0,
                    )
                pool = self._pool
        return pool

    async def write_pg(self, fn: PgTx[T], *, transaction: bool = True) -> T:
        """Run ``await fn(asyncpg_connection)`` in one transaction, to its end.

        ``transaction=False`` for an ``fn`` that runs one statement (atomic on its own):
        it then runs without ``BEGIN`` / ``COMMIT``, two round trips fewer.
        """
        result: T = await self._shielded(self._write_pg(fn, transaction))
        return result

    async def read_pg(self, fn: PgTx[T]) -> T:
        """Run ``await fn(asyncpg_connection)`` outside a transaction (autocommit: each
        statement is one consistent snapshot)."""
        result: T = await self._shielded(self._read_pg(fn))
        return result

    async def _write_pg(self, fn: PgTx[T], transaction: bool) -> T:
        pool = await self._acquire_pool()
        conflicts = 0
        stale = self._pool_size + 1  # pooled connections found dead this call may skip
        while True:
            acquired = sent = done = False
            try:
                async with pool.acquire() as conn:
                    acquired = True
                    try:
                        if not transaction:
                            sent = True
                            result = await fn(conn)
                        else:
                            async with conn.transaction():
                                sent = True
                                result = await fn(conn)
                        done = True
                    except _DOWN:
                        conn.terminate()  # never back into the pool
                        raise
                return result
            except asyncpg.exceptions.TransactionRollbackError as exc:
                conflicts += 1
                if conflicts < _RETRIES:
                    continue  # the database chose us as a deadlock victim: run it again
                raise store_unavailable(exc) from exc
            except _DOWN as exc:
                if done:  # committed; only handing the connection back failed
                    log.debug("releasing an asyncpg connection: %r", exc)
                    return result
                # InternalClientError: the connection refused to send (it had seen the
                # server go away): nothing of this attempt reached the database.
                unsent = not sent or isinstance(exc, asyncpg.exceptions.InternalClientError)
                if acquired and unsent and stale > 0:
                    stale -= 1
                    continue  # a dead pooled connection: again on another one
                raise store_unavailable(exc) from exc

    async def _read_pg(self, fn: PgTx[T]) -> T:
        pool = await self._acquire_pool()
        stale = self._pool_size + 1
        while True:
            acquired = False
            try:
                async with pool.acquire() as conn:
                    acquired = True
                    try:
                        result = await fn(conn)
                    except _DOWN:
                        conn.terminate()
                        raise
                return result
            except _DOWN as exc:
                if acquired and stale > 0:
                    stale -= 1
                    continue  # a read runs again safely, on another connection
                raise store_unavailable(exc) from exc

    async def aclose(self) -> None:
        self._closed = True
        await super().aclose()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(10):
                    await pool.close()
            except TimeoutError:
                pool.terminate()
            except _DOWN as exc:
                log.debug("closing the asyncpg pool: %r", exc)
                with contextlib.suppress(*_DOWN):
                    pool.terminate()
