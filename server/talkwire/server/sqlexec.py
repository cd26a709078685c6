"""Where the SessionStore's SQL runs: one transaction function, two executors.

Store operations are plain functions of a SQLAlchemy (sync) ``Connection``.

- :class:`AsyncEngineExecutor` (PostgreSQL, MySQL/MariaDB) runs them on the
  async engine through ``AsyncConnection.run_sync``, one transaction each,
  shielded from the caller's cancellation so a cancelled stream never leaves a
  transaction half done.
- :class:`SqliteExecutor` runs writes on one dedicated writer thread (SQLite
  has one writer anyway) with **group commit**: every write waiting when the
  thread comes round is committed in one transaction. The batch first runs
  without SAVEPOINTs; only when one of its writes raises is the whole batch
  rolled back and run again with one SAVEPOINT per write, so the failing write
  does not undo the others (transaction functions must therefore be safe to run
  twice, as they already are for the deadlock retries of the async engine).
  A turn costs one thread hop instead of one per statement, and a burst of
  turns, resumes or fan-outs shares one commit. Reads run on a small thread
  pool (WAL lets them proceed beside the writer).

  The hot paths skip SQLAlchemy on SQLite: :meth:`SqliteExecutor.write_raw` and
  :meth:`SqliteExecutor.read_raw` hand the transaction function the stdlib
  ``sqlite3`` connection (its statement cache makes constant SQL strings
  prepared statements). Raw and SQLAlchemy writes share the writer's connection
  and its group commit.

Durability (``store.durability``): ``process`` (WAL, ``synchronous=NORMAL``: a
committed write survives ``kill -9`` of the process; the OS may lose the last
commits on power loss) or ``power`` (WAL, ``synchronous=FULL``: every commit is
fsynced before it is acknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
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

__all__ = [
    "DURABILITY",
    "AsyncEngineExecutor",
    "SqlExecutor",
    "SqliteExecutor",
    "open_executor",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Tx = Callable[[Connection], T]

_MAX_BATCH = 512

DURABILITY = ("process", "power")
"""``store.durability`` values: survives ``kill -9`` / survives power loss."""
_SYNCHRONOUS = {"process": "NORMAL", "power": "FULL"}


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
        log.debug("session store unavailable: %r", exc.orig)
        return UnavailableError("session store unavailable")
    if isinstance(exc, OSError | sqlite3.OperationalError | sqlite3.InterfaceError):
        # The driver's text names hosts and ports: it goes to the log, not to clients.
        log.debug("session store unavailable: %r", exc)
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


def _pragmas(dbapi_conn: Any, synchronous: str) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_engine(url: str, *, begin: str, echo: bool, synchronous: str) -> Engine:
    engine = sa.create_engine(
        url, echo=echo, connect_args={"check_same_thread": False, "isolation_level": None}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        _pragmas(dbapi_conn, synchronous)

    # pysqlite's own transaction handling breaks SAVEPOINTs; emit BEGIN ourselves.
    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class _Job:
    __slots__ = ("fn", "future", "loop", "raw")

    def __init__(
        self, fn: Callable[[Any], Any], loop: asyncio.AbstractEventLoop, *, raw: bool = False
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.raw = raw  # fn takes the sqlite3 connection, not SQLAlchemy's
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

    def __init__(
        self, url: str, *, readers: int = 2, echo: bool = False, durability: str = "process"
    ) -> None:
        if durability not in _SYNCHRONOUS:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self.durability = durability
        synchronous = _SYNCHRONOUS[durability]
        sync_url = sa.make_url(url).set(drivername="sqlite")
        self._path = sync_url.database or ":memory:"
        self._synchronous = synchronous
        self._writer_engine = _sqlite_engine(
            str(sync_url), begin="BEGIN IMMEDIATE", echo=echo, synchronous=synchronous
        )
        self._reader_engine = _sqlite_engine(
            str(sync_url), begin="BEGIN", echo=echo, synchronous=synchronous
        )
        self._local = threading.local()
        self._raw_readers: list[sqlite3.Connection] = []
        self._raw_lock = threading.Lock()
        self._loop_conn: sqlite3.Connection | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="talkwire-sqlite-read")
        self._thread = threading.Thread(target=self._run, name="talkwire-sqlite-write", daemon=True)
        self._thread.start()
        self._closed = False

    async def write(self, fn: Callable[[Connection], T]) -> T:
        return await self._submit(fn, raw=False)

    async def write_raw(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(sqlite3_connection)`` in the writer's (group-committed) transaction."""
        return await self._submit(fn, raw=True)

    async def _submit(self, fn: Callable[[Any], T], *, raw: bool) -> T:
        if self._closed:
            raise UnavailableError("session store is closed")
        job = _Job(fn, asyncio.get_running_loop(), raw=raw)
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

    async def read_raw(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(sqlite3_connection)`` on a reader thread (autocommit: one statement
        is one consistent snapshot; use :meth:`read` for several)."""
        if self._closed:
            raise UnavailableError("session store is closed")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._readers, self._read_raw_sync, fn)
        result: T = await asyncio.shield(future)
        return result

    async def read_point(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a one-row indexed ``fn`` on the event loop's own connection, no thread hop.

        A WAL reader never waits for the writer, so this costs microseconds; should
        the database be busy all the same (recovery, a checkpoint restart), it does
        not wait on the loop but moves to :meth:`read_raw`.
        """
        if self._closed:
            raise UnavailableError("session store is closed")
        conn = self._loop_conn
        if conn is None:
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            _pragmas(conn, self._synchronous)
            conn.execute("PRAGMA busy_timeout=0")
            self._loop_conn = conn
        try:
            return fn(conn)
        except sqlite3.OperationalError:
            return await self.read_raw(fn)

    def _read_sync(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self._reader_engine.connect() as conn:
                return fn(conn)
        except (DBAPIError, OSError) as exc:
            raise _unavailable(exc) from exc

    def _read_raw_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._raw_reader())
        except (sqlite3.Error, OSError) as exc:
            raise _unavailable(exc) from exc

    def _raw_reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            _pragmas(conn, self._synchronous)
            with self._raw_lock:
                self._raw_readers.append(conn)
            self._local.conn = conn
        return conn

    def _run(self) -> None:
        with self._writer_engine.connect() as conn:
            raw: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
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
                outcomes = self._commit_batch(conn, raw, batch)
                if outcomes is None:  # a write failed: run each in its own SAVEPOINT
                    outcomes = self._commit_each(conn, raw, batch)
                self._settle_all(outcomes)
                if stop:
                    return

    @staticmethod
    def _commit_batch(
        conn: Connection, raw: sqlite3.Connection, batch: list[_Job]
    ) -> list[tuple[_Job, Any, BaseException | None]] | None:
        """The whole batch in one transaction, no SAVEPOINTs; None when a write raised
        (the transaction is then rolled back, nothing of it stays)."""
        if all(job.raw for job in batch):
            try:
                raw.execute("BEGIN IMMEDIATE")
            except Exception as exc:  # noqa: BLE001 - the database is unusable: every job fails
                return [(job, None, exc) for job in batch]
            results: list[tuple[_Job, Any, BaseException | None]]
            try:
                results = [(job, job.fn(raw), None) for job in batch]
                raw.execute("COMMIT")
            except Exception:  # noqa: BLE001 - retried per job
                with contextlib.suppress(sqlite3.Error):
                    raw.execute("ROLLBACK")
                return None
            return results
        try:
            with conn.begin():
                results = [(job, job.fn(raw if job.raw else conn), None) for job in batch]
            return results
        except Exception:  # noqa: BLE001 - retried per job
            return None

    @staticmethod
    def _commit_each(
        conn: Connection, raw: sqlite3.Connection, batch: list[_Job]
    ) -> list[tuple[_Job, Any, BaseException | None]]:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            with conn.begin():
                if len(batch) == 1:
                    job = batch[0]
                    outcomes.append((job, job.fn(raw if job.raw else conn), None))
                else:
                    for job in batch:
                        savepoint = conn.begin_nested()
                        try:
                            result = job.fn(raw if job.raw else conn)
                        except Exception as exc:  # noqa: BLE001 - reported to that job only
                            savepoint.rollback()
                            outcomes.append((job, None, exc))
                        else:
                            savepoint.commit()
                            outcomes.append((job, result, None))
        except Exception as exc:  # noqa: BLE001 - the transaction failed: every job fails
            failed = {id(job): err for job, _, err in outcomes if err is not None}
            outcomes = [(job, None, failed.get(id(job), exc)) for job in batch]
        return outcomes

    @staticmethod
    def _settle_all(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
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
        with self._raw_lock:
            for reader in self._raw_readers:
                reader.close()
            self._raw_readers.clear()
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        self._writer_engine.dispose()
        self._reader_engine.dispose()


def open_executor(
    url: str, *, pool_size: int = 10, echo: bool = False, durability: str = "process"
) -> SqlExecutor:
    """The executor for ``url``'s database (``durability`` applies to SQLite; a server
    database has its own settings, e.g. PostgreSQL's ``synchronous_commit``). PostgreSQL
    gets :class:`~talkwire.server.pgexec.AsyncpgExecutor` (asyncpg on the hot paths),
    MySQL / MariaDB on asyncmy :class:`~talkwire.server.myexec.AsyncmyExecutor`."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return SqliteExecutor(url, echo=echo, durability=durability)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "asyncpg":
        # Imported here: pgexec builds on this module's AsyncEngineExecutor.
        from talkwire.server.pgexec import AsyncpgExecutor

        return AsyncpgExecutor(url, pool_size=pool_size, echo=echo)
    if parsed.get_backend_name() in ("mysql", "mariadb") and parsed.get_driver_name() == "asyncmy":
        from talkwire.server.myexec import AsyncmyExecutor

        return AsyncmyExecutor(url, pool_size=pool_size, echo=echo)
    return AsyncEngineExecutor(url, pool_size=pool_size, echo=echo)
