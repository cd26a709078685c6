"""Where the SessionStore's SQL runs: one transaction function, two executors.

Store operations are plain functions of a SQLAlchemy (sync) ``Connection``.

- :class:`AsyncEngineExecutor` (PostgreSQL, MySQL/MariaDB) runs them on the
  async engine through ``AsyncConnection.run_sync``, one transaction each,
  shielded from the caller's cancellation so a cancelled stream never leaves a
  transaction half done.
- :class:`SqliteExecutor` runs writes with **group commit**: every write submitted
  during one event-loop tick is committed in one transaction by one ``call_soon``
  flush. With ``store.durability: process`` the hot (raw ``sqlite3``) writes are
  committed on the event loop itself, on the loop's own connection: no thread
  hop, and a WAL commit without fsync costs microseconds; WAL checkpoints run on
  a checkpointer thread instead (autocheckpoint is off on the loop's
  connection). A batch holding a SQLAlchemy (cold path) write, every batch under
  ``power`` (an fsync per commit), and a batch that finds the database locked
  by another process run on one dedicated writer thread instead. One batch is in
  flight at a time and batches keep their order, so all writes are serialised.
  The batch first runs without SAVEPOINTs; only when one of its writes raises is
  the whole batch rolled back and run again with one SAVEPOINT per write, so the
  failing write does not undo the others (transaction functions must therefore
  be safe to run twice, as they already are for the deadlock retries of the
  async engine). Reads run on a small thread pool (WAL lets them proceed beside
  the writer); one-row point reads run on the loop's connection.

  The hot paths skip SQLAlchemy on SQLite: :meth:`SqliteExecutor.write_raw` and
  :meth:`SqliteExecutor.read_raw` hand the transaction function the stdlib
  ``sqlite3`` connection (its statement cache makes constant SQL strings
  prepared statements).

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
    "store_unavailable",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Tx = Callable[[Connection], T]

_MAX_BATCH = 512
# The loop's connection does not autocheckpoint: the checkpointer thread runs a
# PASSIVE checkpoint each time the loop has changed this many rows.
_CHECKPOINT_ROWS = 2000

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


def store_unavailable(exc: BaseException | None) -> UnavailableError:
    """The driver's failure as ``UNAVAILABLE``; its text (hosts, ports) goes to the log only."""
    log.debug("session store unavailable: %r", exc)
    return UnavailableError("session store unavailable")


def _unavailable(exc: BaseException) -> BaseException:
    if isinstance(exc, DBAPIError) and (
        isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated
    ):
        return store_unavailable(exc.orig)
    if isinstance(exc, OSError | sqlite3.OperationalError | sqlite3.InterfaceError):
        return store_unavailable(exc)
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


Outcome = tuple[_Job, Any, BaseException | None]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    _pragmas(conn, synchronous)
    return conn


def _rollback(raw: sqlite3.Connection) -> None:
    if raw.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            raw.execute("ROLLBACK")


def _raw_batch(raw: sqlite3.Connection, batch: list[_Job]) -> list[Outcome] | None:
    """Raw jobs in one transaction, no SAVEPOINTs (``BEGIN IMMEDIATE`` already taken);
    None when a job raised (everything is then rolled back)."""
    try:
        results: list[Outcome] = [(job, job.fn(raw), None) for job in batch]
        raw.execute("COMMIT")
    except Exception as exc:  # noqa: BLE001 - retried per job
        _rollback(raw)
        if len(batch) == 1:  # nothing to retry: that is the job's outcome
            return [(batch[0], None, exc)]
        return None
    except BaseException:
        _rollback(raw)
        raise
    return results


def _raw_each(raw: sqlite3.Connection, batch: list[_Job]) -> list[Outcome]:
    """Raw jobs in one transaction, each in its own SAVEPOINT: a failing job is undone
    alone and gets its error; the others commit."""
    outcomes: list[Outcome] = []
    try:
        raw.execute("BEGIN IMMEDIATE")
        for job in batch:
            raw.execute("SAVEPOINT talkwire_job")
            try:
                result = job.fn(raw)
            except Exception as exc:  # noqa: BLE001 - reported to that job only
                raw.execute("ROLLBACK TO talkwire_job")
                raw.execute("RELEASE talkwire_job")
                outcomes.append((job, None, exc))
            else:
                raw.execute("RELEASE talkwire_job")
                outcomes.append((job, result, None))
        raw.execute("COMMIT")
    except Exception as exc:  # noqa: BLE001 - the transaction failed: every job fails
        _rollback(raw)
        failed = {id(job): err for job, _, err in outcomes if err is not None}
        outcomes = [(job, None, failed.get(id(job), exc)) for job in batch]
    except BaseException:
        _rollback(raw)
        raise
    return outcomes


class SqliteExecutor:
    """SQLite: group-committed writes on the event loop (or a writer thread), a few
    reader threads.

    ``store.durability: process`` runs the raw (hot) writes on the event loop itself,
    on the loop's own ``sqlite3`` connection: the writes submitted during one loop
    tick are committed together by one ``call_soon`` flush, with no thread hop.
    A WAL commit at ``synchronous=NORMAL`` is a ``write()`` to the OS, no fsync, so it
    costs microseconds; WAL checkpoints (which do write the database file) are taken
    off the loop by a checkpointer thread (``wal_autocheckpoint`` is off on the loop's
    connection). While ticks carry one write at most, a write commits at once (no
    loop iteration). A batch holding a SQLAlchemy (cold path) write and a batch that
    finds the database locked by another process go to the writer thread instead;
    one batch is in flight at a time and batches keep their order, so every write is
    serialised with every other. Under ``power`` (an fsync per commit) every write is
    queued straight to the writer thread, which commits what is queued as one batch.
    """

    dialect = "sqlite"
    update_returning = True

    def __init__(
        self,
        url: str,
        *,
        readers: int = 2,
        echo: bool = False,
        durability: str = "process",
        on_loop: bool | None = None,
    ) -> None:
        if durability not in _SYNCHRONOUS:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self.durability = durability
        self.on_loop = durability == "process" if on_loop is None else on_loop
        """Whether raw writes are committed on the event loop (else on the writer thread)."""
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
        # Batching, on the event loop: jobs wait in _pending until the next flush; at
        # most one batch runs at a time (_offloop: one is on the writer thread).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Job] = []
        self._flush_scheduled = False
        self._offloop = False
        self._eager = True  # the last tick had one write at most: commit the next at once
        self._tick_jobs = 0
        self._drained: asyncio.Future[None] | None = None
        # The writer thread's work: (jobs, handed) -- handed: a batch the loop's flush
        # handed over (the loop waits for it); else jobs queued directly (``power``).
        self._jobs: queue.SimpleQueue[tuple[list[_Job], bool] | None] = queue.SimpleQueue()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="talkwire-sqlite-read")
        self._thread = threading.Thread(target=self._run, name="talkwire-sqlite-write", daemon=True)
        self._thread.start()
        self._ckpt_wake = threading.Event()
        self._ckpt_mark = 0
        self._ckpt_thread: threading.Thread | None = None
        self.checkpoints = 0
        """WAL checkpoints the checkpointer thread has run (on-loop writes only)."""
        self._closed = False

    async def write(self, fn: Callable[[Connection], T]) -> T:
        return await self._submit(fn, raw=False)

    async def write_raw(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(sqlite3_connection)`` in the writer's (group-committed) transaction."""
        return await self._submit(fn, raw=True)

    async def _submit(self, fn: Callable[[Any], T], *, raw: bool) -> T:
        if self._closed:
            raise UnavailableError("session store is closed")
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop, raw=raw)
        if not self.on_loop:
            # Every commit on the writer thread (an fsync each under ``power``): the
            # thread takes whatever is queued when it comes round as one batch.
            self._jobs.put(([job], False))
            result: T = await job.future
            return result
        if loop is not self._loop:
            if self._pending or self._offloop:  # another loop's batch is in flight
                self._jobs.put(([job], False))
                result = await job.future
                return result
            self._loop = loop
        self._tick_jobs += 1
        if self._eager and raw and not (self._flush_scheduled or self._offloop or self._pending):
            # Writes come one per tick (a quiet server): the first write of this tick
            # commits at once, which costs no loop iteration. The flush scheduled here
            # ends the tick: writes that follow in the same tick share its commit, and
            # while ticks carry several writes, each tick's writes share one commit.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
            if self._commit_on_loop([job]):
                result = job.future.result()
                return result
        self._pending.append(job)
        if not self._flush_scheduled and not self._offloop:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        # The job runs to its end even if we are cancelled (a cancelled wait cancels
        # only the future: the batch runs every job it took, settling what is not done).
        result = await job.future
        return result

    def _flush(self) -> None:
        """One batch: the jobs submitted since the last flush (at most _MAX_BATCH)."""
        self._flush_scheduled = False
        self._eager = self._tick_jobs <= 1
        self._tick_jobs = 0
        if self._offloop or not self._pending:
            return
        batch = self._pending[:_MAX_BATCH]
        del self._pending[:_MAX_BATCH]
        if all(job.raw for job in batch) and self._commit_on_loop(batch):
            if self._pending:
                self._schedule()
            else:
                self._wake_drained()
            return
        self._offloop = True
        self._jobs.put((batch, True))

    def _schedule(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _commit_on_loop(self, batch: list[_Job]) -> bool:
        """Commit ``batch`` on the loop's connection and settle its jobs; False (nothing
        done) when another connection holds the write lock."""
        try:
            raw = self._point_conn()
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False  # e.g. locked by another process: the writer thread waits for it
        except (sqlite3.Error, OSError) as exc:  # the database is unusable: every job fails
            for job in batch:
                _settle(job.future, None, _unavailable(exc))
            return True
        try:
            outcomes = _raw_batch(raw, batch)
            if outcomes is None:
                outcomes = _raw_each(raw, batch)
        except BaseException:  # not an Exception (those are each job's outcome)
            for job in batch:
                _settle(job.future, None, UnavailableError("session store write interrupted"))
            raise
        for job, result, err in outcomes:
            _settle(job.future, result, _unavailable(err) if err else None)
        if raw.total_changes - self._ckpt_mark >= _CHECKPOINT_ROWS:
            self._ckpt_mark = raw.total_changes
            self._ckpt_wake.set()
        return True

    def _offloop_done(self, outcomes: list[Outcome]) -> None:
        """On the loop: the writer thread finished a batch."""
        for job, result, err in outcomes:
            _settle(job.future, result, _unavailable(err) if err else None)
        self._offloop = False
        if self._pending:
            self._schedule()
        self._wake_drained()

    def _wake_drained(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

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

        A WAL reader never waits for the writer, so this costs microseconds (and the
        loop's connection is the on-loop writer's: its page cache is warm); should the
        database be busy all the same (recovery, a checkpoint restart), it does not
        wait on the loop but moves to :meth:`read_raw`.
        """
        if self._closed:
            raise UnavailableError("session store is closed")
        conn = self._point_conn()
        try:
            return fn(conn)
        except sqlite3.OperationalError:
            return await self.read_raw(fn)

    def _point_conn(self) -> sqlite3.Connection:
        """The event loop's connection (never waits for a lock; no autocheckpoint)."""
        conn = self._loop_conn
        if conn is None:
            conn = _connect(self._path, self._synchronous)
            conn.execute("PRAGMA busy_timeout=0")
            if self.on_loop:
                conn.execute("PRAGMA wal_autocheckpoint=0")
                self._ckpt_thread = threading.Thread(
                    target=self._checkpointer, name="talkwire-sqlite-checkpoint", daemon=True
                )
                self._ckpt_thread.start()
            self._loop_conn = conn
        return conn

    def _checkpointer(self) -> None:
        """Checkpoint the WAL off the loop each time the loop has written _CHECKPOINT_ROWS
        rows (PASSIVE: never waits for, nor blocks, the writer or a reader)."""
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._ckpt_wake.wait()
                self._ckpt_wake.clear()
                if self._closed:
                    return
                try:
                    if conn is None:
                        conn = _connect(self._path, self._synchronous)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    log.debug("session store: WAL checkpoint failed: %r", exc)
        finally:
            if conn is not None:
                conn.close()

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
            conn = _connect(self._path, self._synchronous)
            with self._raw_lock:
                self._raw_readers.append(conn)
            self._local.conn = conn
        return conn

    def _run(self) -> None:
        """The writer thread: one batch at a time, as the loop hands them over."""
        with self._writer_engine.connect() as conn:
            raw: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                items = [first]
                size = len(first[0])
                stop = False
                while size < _MAX_BATCH:
                    try:
                        item = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    items.append(item)
                    size += len(item[0])
                batch = [job for jobs, _ in items for job in jobs]
                outcomes = self._commit_batch(conn, raw, batch)
                if outcomes is None:  # a write failed: run each in its own SAVEPOINT
                    outcomes = self._commit_each(conn, raw, batch)
                start = 0
                for jobs, handed in items:  # outcomes are in batch order
                    part = outcomes[start : start + len(jobs)]
                    start += len(jobs)
                    done = self._offloop_done if handed else self._offloop_settle
                    with contextlib.suppress(RuntimeError):  # the loop is already closed
                        jobs[0].loop.call_soon_threadsafe(done, part)
                if stop:
                    return

    @staticmethod
    def _offloop_settle(outcomes: list[Outcome]) -> None:
        for job, result, err in outcomes:
            _settle(job.future, result, _unavailable(err) if err else None)

    @staticmethod
    def _commit_batch(
        conn: Connection, raw: sqlite3.Connection, batch: list[_Job]
    ) -> list[Outcome] | None:
        """The whole batch in one transaction, no SAVEPOINTs; None when a write raised
        (the transaction is then rolled back, nothing of it stays)."""
        if all(job.raw for job in batch):
            try:
                raw.execute("BEGIN IMMEDIATE")
            except Exception as exc:  # noqa: BLE001 - the database is unusable: every job fails
                return [(job, None, exc) for job in batch]
            return _raw_batch(raw, batch)
        try:
            with conn.begin():
                results: list[Outcome] = [
                    (job, job.fn(raw if job.raw else conn), None) for job in batch
                ]
            return results
        except Exception:  # noqa: BLE001 - retried per job
            return None

    @staticmethod
    def _commit_each(conn: Connection, raw: sqlite3.Connection, batch: list[_Job]) -> list[Outcome]:
        outcomes: list[Outcome] = []
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

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Writes already submitted still run.
        while self._pending or self._offloop:
            if self._offloop:
                self._drained = asyncio.get_running_loop().create_future()
                await self._drained
            else:
                self._flush()
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        if self._ckpt_thread is not None:
            self._ckpt_wake.set()
            await asyncio.to_thread(self._ckpt_thread.join)
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
