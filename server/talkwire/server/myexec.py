"""MySQL / MariaDB's executor: SQLAlchemy for the cold paths, asyncmy directly for the hot ones.

:class:`AsyncmyExecutor` is an :class:`~talkwire.server.sqlexec.AsyncEngineExecutor`
(``write`` / ``read`` unchanged) that also opens an ``asyncmy`` pool with the engine's
own connect arguments (``CLIENT_FOUND_ROWS`` included), autocommit, on first use. The
hot operations (:mod:`talkwire.server.myhot`) are async functions of a cursor,
run by :meth:`~AsyncmyExecutor.write_my` (one transaction each; deadlocks and lock
wait timeouts run again, as ``write`` does) and :meth:`~AsyncmyExecutor.read_my`
(autocommit), shielded from the caller's cancellation. A connection that fails is
closed, never pooled; one that was dead before the operation sent anything (the server
restarted, ``wait_timeout``) is skipped; a database that cannot be reached is an
``UnavailableError``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncmy
from asyncmy import errors as myerrors

from talkwire.server.errors import UnavailableError
from talkwire.server.sqlexec import AsyncEngineExecutor, store_unavailable

__all__ = ["AsyncmyExecutor", "MyTx"]

log = logging.getLogger(__name__)

T = TypeVar("T")
MyTx = Callable[[Any], Awaitable[T]]
"""A hot-path transaction function: ``async def fn(cursor) -> T``."""

_RETRIES = 3
_CONFLICTS = {1213, 1205}  # deadlock, lock wait timeout
_DOWN = (OSError, myerrors.OperationalError, myerrors.InterfaceError, myerrors.InternalError)


def _code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class AsyncmyExecutor(AsyncEngineExecutor):
    """MySQL / MariaDB: the async engine for the cold paths, an asyncmy pool for the hot ones."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        super().__init__(url, pool_size=pool_size, echo=echo)
        engine = self._engine.sync_engine
        _, kwargs = engine.dialect.create_connect_args(engine.url)
        self._connect: dict[str, Any] = {**kwargs, "autocommit": True}
        self._pool_size = pool_size
        self._pool: Any = None
        self._closed = False

    async def _acquire_pool(self) -> Any:
        if self._closed:
            raise UnavailableError("session store is closed")
        if self._pool is None:
            pool = await asyncmy.create_pool(minsize=0, maxsize=self._pool_size, **self._connect)
            if self._pool is None:  # another caller may have opened one meanwhile
                self._pool = pool
            else:
                pool.close()
        return self._pool

    async def write_my(self, fn: MyTx[T]) -> T:
        """Run ``await fn(cursor)`` in one transaction, to its end."""
        result: T = await self._shielded(self._write_my(fn))
        return result

    async def read_my(self, fn: MyTx[T]) -> T:
        """Run ``await fn(cursor)`` in autocommit (each statement its own snapshot)."""
        result: T = await self._shielded(self._read_my(fn))
        return result

    async def _write_my(self, fn: MyTx[T]) -> T:
        pool = await self._acquire_pool()
        conflicts = 0
        stale = self._pool_size + 1
        while True:
            conn = None
            begun = done = False
            try:
                conn = await pool.acquire()
                await conn.begin()
                begun = True
                async with conn.cursor() as cur:
                    result = await fn(cur)
                await conn.commit()
                done = True
                return result
            except _DOWN as exc:
                code = _code(exc)
                if conn is not None:
                    if code in _CONFLICTS:
                        with contextlib.suppress(*_DOWN):
                            await conn.rollback()
                    else:
                        conn.close()  # never back into the pool
                if code in _CONFLICTS:
                    conflicts += 1
                    if conflicts < _RETRIES:
                        continue  # chosen as a deadlock victim: run it again
                elif conn is not None and not begun and stale > 0:
                    stale -= 1
                    continue  # a dead pooled connection: nothing was sent
                raise store_unavailable(exc) from exc
            except BaseException:
                if conn is not None and not done:
                    try:
                        await conn.rollback()
                    except _DOWN:
                        conn.close()
                raise
            finally:
                if conn is not None:
                    pool.release(conn)

    async def _read_my(self, fn: MyTx[T]) -> T:
        pool = await self._acquire_pool()
        stale = self._pool_size + 1
        while True:
            conn = None
            try:
                conn = await pool.acquire()
                async with conn.cursor() as cur:
                    return await fn(cur)
            except _DOWN as exc:
                if conn is not None:
                    conn.close()
                    if stale > 0:
                        stale -= 1
                        continue  # a read runs again safely, on another connection
                raise store_unavailable(exc) from exc
            finally:
                if conn is not None:
                    pool.release(conn)

    async def aclose(self) -> None:
        self._closed = True
        await super().aclose()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            with contextlib.suppress(*_DOWN):
                await pool.wait_closed()
