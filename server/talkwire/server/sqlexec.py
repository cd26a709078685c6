"""Where the SessionStore's SQL runs: one transaction function, two executors.

Store operations are plain functions of a SQLAlchemy (sync) ``Connection``.

- :class:`AsyncEngineExecutor` (PostgreSQL, MySQL/MariaDB) runs them on the
  async engine through ``AsyncConnection.run_sync``, one transaction each,
  shielded from the caller's cancellation so a cancelled stream never leaves a
  transaction half done.
- :class:`SqliteExecutor` runs writes on one dedicated writer thread (SQLite
  has one writer anyway) with **group commit**: every write waiting when the
  thread comes round is committed in one transaction, each inside its own
  SAVEPOINT so one failing write does not undo the others. A turn costs one
  thread hop instead of one per statement, and a burst of turns, resumes or
  fan-outs shares one fsync. Reads run on a small thread pool (WAL lets them
  proceed beside the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from talkwire.server.errors import UnavailableError

__all__ = ["AsyncEngineExecutor", "SqlExecutor", "SqliteExecutor", "open_executor"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Tx = Callable[[Connection], T]

_MAX_BATCH = 512


class SqlExecutor(Protocol):
    """Runs transaction functions; raises ``UnavailableError`` when the database is down."""

    dialect: str
    update_returning: bool

    async def write(self, fn: Callable[[Connection], T]) -> T: ...

    async def read(self, fn: Callable[[Connection], T]) -> T: ...

    async def aclose(self) -> None: ...


_RETRIES = 3
# PostgreSQL deadlock / serialisation failure; MySQL deadlock / lock wait timeout.
_CONFLICTS = {"40P01", "40001", "1213", "1205"}


def _is_conflict(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    args = getattr(orig, "args", ())
    if code is None and args and isinstance(args[0], int):
        code = args[0]
    return str(code) in _CONFLICTS


def _unavailable(exc: BaseException) -> BaseException:
    if isinstance(exc, DBAPIError) and (
        isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated
    ):
        log.warning("session store unavailable: %r", exc.orig)
        return UnavailableError("session store unavailable")
    if isinstance(exc, OSError):
        # The driver's text names hosts and ports: it goes to the log, not to clients.
        log.warning("session store unavailable: %r", exc)
        return UnavailableError("session store unavailable")
    return exc


class AsyncEngineExecutor:
    """PostgreSQL / MySQL / MariaDB through SQLAlchemy's async engine."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self._engine: AsyncEngine = create_async_engine(
            url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
        self.dialect = self._engine.dialect.name
        self.update_returning = bool(self._engine.dialect.update_returning)
        self._inflight: set[asyncio.Future[Any]] = set()

    async def _shielded(self, coro: Any) -> Any:
        task = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def _write(self, fn: Callable[[Connection], T]) -> T:
        for attempt in range(_RETRIES):
            try:
                async with self._engine.begin() as conn:
                    return await conn.run_sync(fn)
            except DBAPIError as exc:
                if _is_conflict(exc) and attempt + 1 < _RETRIES:
                    continue  # the database chose us as a deadlock victim: run it again
                raise _unavailable(exc) from exc
            except OSError as exc:
                raise _unavailable(exc) from exc
        raise AssertionError("unreachable")

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        try:
            async with self._engine.connect() as conn:
                return await conn.run_sync(fn)
        except (DBAPIError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def write(self, fn: Callable[[Connection], T]) -> T:
        result: T = await self._shielded(self._write(fn))
        return result

    async def read(self, fn: Callable[[Connection], T]) -> T:
        result: T = await self._shielded(self._read(fn))
        return result

    async def aclose(self) -> None:
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._engine.dispose()


def _sqlite_engine(url: str, *, begin: str, echo: bool) -> Engine:
    engine = sa.create_engine(
        url, echo=echo, connect_args={"check_same_thread": False, "isolation_level": None}
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    # pysqlite's own transaction handling breaks SAVEPOINTs; emit BEGIN ourselves.
    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[Connection], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SqliteExecutor:
    """SQLite: one writer thread with group commit, a few reader threads."""

    dialect = "sqlite"
    update_returning = True

    def __init__(self, url: str, *, readers: int = 2, echo: bool = False) -> None:
        sync_url = sa.make_url(url).set(drivername="sqlite")
        self._writer_engine = _sqlite_engine(str(sync_url), begin="BEGIN IMMEDIATE", echo=echo)
        self._reader_engine = _sqlite_engine(str(sync_url), begin="BEGIN", echo=echo)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="talkwire-sqlite-read")
        self._thread = threading.Thread(target=self._run, name="talkwire-sqlite-write", daemon=True)
        self._thread.start()
        self._closed = False

    async def write(self, fn: Callable[[Connection], T]) -> T:
        if self._closed:
            raise UnavailableError("session store is closed")
        job = _Job(fn, asyncio.get_running_loop())
        self._jobs.put(job)
        # The job runs to its end even if we are cancelled: shield the future.
        result: T = await asyncio.shield(job.future)
        return result

    async def read(self, fn: Callable[[Connection], T]) -> T:
        if self._closed:
            raise UnavailableError("session store is closed")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._readers, self._read_sync, fn)
        result: T = await asyncio.shield(future)
        return result

    def _read_sync(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self._reader_engine.connect() as conn:
                return fn(conn)
        except (DBAPIError, OSError) as exc:
            raise _unavailable(exc) from exc

    def _run(self) -> None:
        with self._writer_engine.connect() as conn:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < _MAX_BATCH:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    batch.append(job)
                self._commit(conn, batch)
                if stop:
                    return

    @staticmethod
    def _commit(conn: Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            with conn.begin():
                if len(batch) == 1:
                    outcomes.append((batch[0], batch[0].fn(conn), None))
                else:
                    for job in batch:
                        savepoint = conn.begin_nested()
                        try:
                            result = job.fn(conn)
                        except Exception as exc:  # noqa: BLE001 - reported to that job only
                            savepoint.rollback()
                            outcomes.append((job, None, exc))
                        else:
                            savepoint.commit()
                            outcomes.append((job, result, None))
        except Exception as exc:  # noqa: BLE001 - the transaction failed: every job fails
            failed = {id(job): err for job, _, err in outcomes if err is not None}
            outcomes = [(job, None, failed.get(id(job), exc)) for job in batch]
        for job, result, err in outcomes:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                job.loop.call_soon_threadsafe(
                    _settle, job.future, result, _unavailable(err) if err else None
                )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._readers.shutdown(wait=True)
        self._writer_engine.dispose()
        self._reader_engine.dispose()


def open_executor(url: str, *, pool_size: int = 10, echo: bool = False) -> SqlExecutor:
    """The executor for ``url``'s database."""
    if sa.make_url(url).get_backend_name() == "sqlite":
        return SqliteExecutor(url, echo=echo)
    return AsyncEngineExecutor(url, pool_size=pool_size, echo=echo)
