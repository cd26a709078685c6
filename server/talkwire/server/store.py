"""The SessionStore: the source of truth for sessions and their durable frames.

Sessions, the per-session outbox of durable frames (seq, payload), subscriptions
(key -> session), dialogue state, processed event ids and dead letters live in
one SQL database reached through SQLAlchemy's async engine: a SQLite file by
default (WAL; one process), PostgreSQL or MySQL/MariaDB by URL.

Seqs are allocated inside the transaction that writes the frames, under a row
lock on the session (``SELECT ... FOR UPDATE``, or SQLite's single writer), so a
session's seqs are gap-free and a frame with seq N is committed no later than
every frame before it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from talkwire.server import schema
from talkwire.server.errors import (
    FailedPreconditionError,
    NotFoundError,
    OutOfRangeError,
    UnavailableError,
)
from talkwire.server.frames import StoredFrame, with_seq
from talkwire.server.identity import Identity

__all__ = [
    "FanoutEvent",
    "FanoutResult",
    "Retention",
    "SessionRecord",
    "SessionStore",
]

_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Retention:
    """How long durable frames are kept when not acked."""

    max_frames: int = 1000
    max_age: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session row."""

    id: str
    identity: Identity
    channel: str
    locale: str
    attributes: Mapping[str, str]
    state: int
    created_at: float
    last_active_at: float
    head_seq: int
    acked_seq: int
    floor_seq: int
    dialogue: Mapping[str, Any]
    replica: str | None
    token_hash: str = field(repr=False, default="")

    @property
    def subject(self) -> str:
        return self.identity.subject

    @property
    def active(self) -> bool:
        return self.state == schema.ACTIVE

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.token_hash, _hash_token(token))


@dataclass(frozen=True, slots=True)
class FanoutEvent:
    """One update to append: to every active subscriber of ``keys``, or to ``session_id``.

    ``template`` is the serialised ``ConverseResponse`` without seq
    (see :func:`talkwire.server.frames.encode_template`).
    """

    event_id: str
    template: bytes
    keys: tuple[str, ...] = ()
    session_id: str | None = None


@dataclass(slots=True)
class FanoutResult:
    """What a fan-out appended: frames per session, duplicates and per-event counts."""

    frames: dict[str, list[StoredFrame]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    delivered: dict[str, int] = field(default_factory=dict)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _set_sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _shielded(
    method: Callable[Concatenate[SessionStore, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[SessionStore, _P], Coroutine[Any, Any, _R]]:
    """Run a store call to completion even if its caller is cancelled.

    A Converse stream cancelled mid-commit must not leave a connection inside
    a half-done transaction (SQLite would then stay locked). The caller still
    sees its ``CancelledError``; the database work finishes (commit or
    rollback) in its own task, which :meth:`SessionStore.aclose` waits for.
    """

    async def wrapper(self: SessionStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        task = asyncio.ensure_future(method(self, *args, **kwargs))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    functools.update_wrapper(wrapper, method)
    return wrapper


class SessionStore:
    """Async access to the session tables. Use as an async context manager."""

    def __init__(
        self,
        url: str,
        *,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        pool_size: int = 10,
        echo: bool = False,
    ) -> None:
        self.url = url
        self.retention = retention or Retention()
        self._clock = clock
        self._engine: AsyncEngine = self._create_engine(url, pool_size, echo)
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._update_returning = bool(self._engine.dialect.update_returning)
        self._closed = False
        self._inflight: set[asyncio.Future[Any]] = set()
        # SQLite has one writer; serialise write transactions in-process so they
        # never fail with "database is locked" on lock upgrade.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self._sqlite else None

    @staticmethod
    def _create_engine(url: str, pool_size: int, echo: bool) -> AsyncEngine:
        if url.startswith("sqlite"):
            engine = create_async_engine(url, echo=echo)
            event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
            return engine
        return create_async_engine(
            url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Create the schema if it does not exist yet (``talkwire db upgrade`` does the same)."""
        await self.upgrade()

    async def upgrade(self) -> int:
        """Create or upgrade the schema; return the schema version now in place."""
        async with self._engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
            row = (
                await conn.execute(
                    sa.select(schema.schema_info.c.version).where(schema.schema_info.c.id == 1)
                )
            ).first()
            if row is None:
                await conn.execute(
                    schema.schema_info.insert().values(id=1, version=schema.SCHEMA_VERSION)
                )
                return schema.SCHEMA_VERSION
            version = int(row[0])
            if version > schema.SCHEMA_VERSION:
                raise FailedPreconditionError(
                    f"database schema version {version} is newer than this talkwire "
                    f"({schema.SCHEMA_VERSION}); upgrade talkwire"
                )
            return version

    async def aclose(self) -> None:
        """Dispose of the engine. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._engine.dispose()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        try:
            if self._write_lock is not None:
                async with self._write_lock, self._engine.begin() as conn:
                    yield conn
            else:
                async with self._engine.begin() as conn:
                    yield conn
        except DBAPIError as exc:
            if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
                raise UnavailableError(f"session store unavailable: {exc.orig!r}") from exc
            raise
        except OSError as exc:
            raise UnavailableError(f"session store unavailable: {exc!r}") from exc

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
                raise UnavailableError(f"session store unavailable: {exc.orig!r}") from exc
            raise
        except OSError as exc:
            raise UnavailableError(f"session store unavailable: {exc!r}") from exc

    # -- sessions ---------------------------------------------------------

    @_shielded
    async def create_session(
        self,
        identity: Identity,
        *,
        channel: str = "",
        locale: str = "",
        attributes: Mapping[str, str] | None = None,
        replica: str | None = None,
    ) -> tuple[SessionRecord, str]:
        """Create a session; return it and its resume token (only its hash is stored)."""
        now = self._clock()
        session_id = str(uuid.uuid4())
        token = secrets.token_urlsafe(32)
        values = {
            "id": session_id,
            "subject": identity.subject,
            "identity": json.dumps(identity.to_json()),
            "token_hash": _hash_token(token),
            "channel": channel,
            "locale": locale,
            "attributes": json.dumps(dict(attributes or {})),
            "state": schema.ACTIVE,
            "created_at": now,
            "last_active_at": now,
            "head_seq": 0,
            "acked_seq": 0,
            "floor_seq": 0,
            "dialogue": "{}",
            "replica": replica,
        }
        async with self._write() as conn:
            await conn.execute(schema.sessions.insert().values(**values))
        record = self._record(values)
        return record, token

    @_shielded
    async def get_session(self, session_id: str) -> SessionRecord | None:
        async with self._read() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(schema.sessions).where(schema.sessions.c.id == session_id)
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else self._record(row)

    @_shielded
    async def list_sessions(
        self,
        *,
        subject: str | None = None,
        key: str | None = None,
        include_closed: bool = False,
        after_id: str = "",
        limit: int = 100,
    ) -> list[SessionRecord]:
        s = schema.sessions
        query = sa.select(s).where(s.c.id > after_id).order_by(s.c.id).limit(limit)
        if subject:
            query = query.where(s.c.subject == subject)
        if not include_closed:
            query = query.where(s.c.state == schema.ACTIVE)
        if key:
            sub = schema.subscriptions
            query = query.where(s.c.id.in_(sa.select(sub.c.session_id).where(sub.c.key == key)))
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self._record(r) for r in rows]

    @_shielded
    async def touch(self, session_id: str, *, replica: str | object | None = ...) -> None:
        """Mark the session active now (and set or clear its attachment replica)."""
        values: dict[str, Any] = {"last_active_at": self._clock()}
        if replica is not ...:
            values["replica"] = replica
        async with self._write() as conn:
            await conn.execute(
                schema.sessions.update().where(schema.sessions.c.id == session_id).values(**values)
            )

    @_shielded
    async def close_session(self, session_id: str, *, state: int = schema.CLOSED) -> bool:
        """Close (or expire) a session: drop its subscriptions and frames. False if unknown."""
        async with self._write() as conn:
            result = await conn.execute(
                schema.sessions.update()
                .where(schema.sessions.c.id == session_id, schema.sessions.c.state == schema.ACTIVE)
                .values(state=state, replica=None, last_active_at=self._clock())
            )
            if not result.rowcount:
                return False
            await conn.execute(
                schema.subscriptions.delete().where(schema.subscriptions.c.session_id == session_id)
            )
            await conn.execute(
                schema.outbox.delete().where(schema.outbox.c.session_id == session_id)
            )
        return True

    async def expire_idle(self, ttl: float, *, keep: Iterable[str] = ()) -> list[str]:
        """Expire sessions idle for longer than ``ttl`` seconds, except those in ``keep``."""
        cutoff = self._clock() - ttl
        keep_set = set(keep)
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    sa.select(schema.sessions.c.id).where(
                        schema.sessions.c.state == schema.ACTIVE,
                        schema.sessions.c.last_active_at < cutoff,
                    )
                )
            ).all()
        expired = []
        for (session_id,) in rows:
            if session_id in keep_set:
                continue
            if await self.close_session(session_id, state=schema.EXPIRED):
                expired.append(session_id)
        return expired

    # -- frames -----------------------------------------------------------

    @_shielded
    async def append(
        self,
        session_id: str,
        templates: Sequence[bytes],
        *,
        dialogue: Mapping[str, Any] | None = None,
    ) -> list[StoredFrame]:
        """Append durable frames to one session (and save its dialogue state) atomically."""
        now = self._clock()
        n = len(templates)
        s = schema.sessions
        async with self._write() as conn:
            values: dict[str, Any] = {"head_seq": s.c.head_seq + n, "last_active_at": now}
            if dialogue is not None:
                values["dialogue"] = json.dumps(dialogue)
            where = (s.c.id == session_id, s.c.state == schema.ACTIVE)
            if self._update_returning:
                head = (
                    await conn.execute(
                        s.update().where(*where).values(**values).returning(s.c.head_seq)
                    )
                ).scalar()
                if head is None:
                    raise NotFoundError(f"session {session_id} not found or closed")
                first = int(head) - n + 1
            else:
                row = (
                    await conn.execute(sa.select(s.c.head_seq).where(*where).with_for_update())
                ).first()
                if row is None:
                    raise NotFoundError(f"session {session_id} not found or closed")
                first = int(row[0]) + 1
                await conn.execute(s.update().where(*where).values(**values))
            frames = [
                StoredFrame(first + i, with_seq(first + i, t)) for i, t in enumerate(templates)
            ]
            if frames:
                await conn.execute(
                    schema.outbox.insert(),
                    [
                        {
                            "session_id": session_id,
                            "seq": f.seq,
                            "created_at": now,
                            "payload": f.payload,
                        }
                        for f in frames
                    ],
                )
        return frames

    async def save_dialogue(self, session_id: str, dialogue: Mapping[str, Any]) -> None:
        await self.append(session_id, (), dialogue=dialogue)

    @_shielded
    async def frames_after(
        self, session_id: str, after_seq: int, *, limit: int | None = None
    ) -> list[StoredFrame]:
        """Retained frames with seq > ``after_seq``, in order."""
        o = schema.outbox
        query = (
            sa.select(o.c.seq, o.c.payload)
            .where(o.c.session_id == session_id, o.c.seq > after_seq)
            .order_by(o.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredFrame(int(seq), bytes(payload)) for seq, payload in rows]

    @staticmethod
    def check_resume(session: SessionRecord, last_seq: int) -> None:
        """Fail loudly when a client at ``last_seq`` cannot resume without a gap."""
        if last_seq > session.head_seq:
            raise OutOfRangeError(
                f"last_seq {last_seq} is ahead of the session's newest frame {session.head_seq}"
            )
        if last_seq < session.floor_seq:
            raise OutOfRangeError(
                f"frames after seq {last_seq} are no longer retained (retained from "
                f"{session.floor_seq + 1}); open a new session"
            )

    async def replay(self, session: SessionRecord, last_seq: int) -> list[StoredFrame]:
        """Frames a client that has ``last_seq`` is missing; fail loudly if some are gone."""
        self.check_resume(session, last_seq)
        frames = await self.frames_after(session.id, last_seq)
        expected = last_seq + 1
        for f in frames:
            if f.seq != expected:
                raise OutOfRangeError(f"frame {expected} is no longer retained; open a new session")
            expected += 1
        return frames

    @_shielded
    async def heads(self, session_ids: Sequence[str]) -> dict[str, int]:
        """The newest seq of each of these sessions (one indexed read per chunk)."""
        s = schema.sessions
        out: dict[str, int] = {}
        async with self._read() as conn:
            for i in range(0, len(session_ids), _CHUNK):
                rows = await conn.execute(
                    sa.select(s.c.id, s.c.head_seq).where(s.c.id.in_(session_ids[i : i + _CHUNK]))
                )
                for session_id, head in rows:
                    out[str(session_id)] = int(head)
        return out

    @_shielded
    async def ack(self, session_id: str, seq: int) -> None:
        """The client has every frame up to ``seq``: drop them from the outbox."""
        s = schema.sessions
        async with self._write() as conn:
            result = await conn.execute(
                s.update()
                .where(s.c.id == session_id, s.c.acked_seq < seq, s.c.head_seq >= seq)
                .values(
                    acked_seq=seq,
                    floor_seq=sa.case((s.c.floor_seq < seq, seq), else_=s.c.floor_seq),
                    last_active_at=self._clock(),
                )
            )
            if not result.rowcount:
                return  # an old ack, or one beyond the newest frame: nothing to drop
            await conn.execute(
                schema.outbox.delete().where(
                    schema.outbox.c.session_id == session_id, schema.outbox.c.seq <= seq
                )
            )

    @_shielded
    async def prune(self) -> int:
        """Apply the retention window (count and age) to unacked frames; return rows dropped."""
        now = self._clock()
        o, s = schema.outbox, schema.sessions
        dropped = 0
        async with self._read() as conn:
            by_age = (
                await conn.execute(
                    sa.select(o.c.session_id, sa.func.max(o.c.seq))
                    .where(o.c.created_at < now - self.retention.max_age)
                    .group_by(o.c.session_id)
                )
            ).all()
            by_count = (
                await conn.execute(
                    sa.select(s.c.id, s.c.head_seq - self.retention.max_frames).where(
                        s.c.state == schema.ACTIVE,
                        s.c.head_seq - s.c.floor_seq > self.retention.max_frames,
                    )
                )
            ).all()
        floors: dict[str, int] = defaultdict(int)
        for session_id, seq in [*by_age, *by_count]:
            floors[session_id] = max(floors[session_id], int(seq))
        for session_id, floor in floors.items():
            async with self._write() as conn:
                await conn.execute(
                    s.update()
                    .where(s.c.id == session_id, s.c.floor_seq < floor)
                    .values(floor_seq=floor)
                )
                result = await conn.execute(
                    o.delete().where(o.c.session_id == session_id, o.c.seq <= floor)
                )
                dropped += result.rowcount or 0
        return dropped

    # -- subscriptions ----------------------------------------------------

    @_shielded
    async def subscribe(self, session_id: str, key: str) -> bool:
        """Subscribe; False if it already existed."""
        try:
            async with self._write() as conn:
                await conn.execute(
                    schema.subscriptions.insert().values(
                        key=key, session_id=session_id, created_at=self._clock()
                    )
                )
        except IntegrityError:
            return False
        return True

    @_shielded
    async def unsubscribe(self, session_id: str, key: str) -> bool:
        sub = schema.subscriptions
        async with self._write() as conn:
            result = await conn.execute(
                sub.delete().where(sub.c.session_id == session_id, sub.c.key == key)
            )
        return bool(result.rowcount)

    @_shielded
    async def subscriptions(self, session_id: str) -> list[str]:
        sub = schema.subscriptions
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    sa.select(sub.c.key).where(sub.c.session_id == session_id).order_by(sub.c.key)
                )
            ).all()
        return [r[0] for r in rows]

    @_shielded
    async def subscribers(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """Active sessions subscribed to each key (one indexed lookup)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, list[str]] = {}
        if not keys:
            return out
        async with self._read() as conn:
            for i in range(0, len(keys), _CHUNK):
                rows = await conn.execute(self._subscribers_query(keys[i : i + _CHUNK]))
                for key, session_id in rows:
                    out.setdefault(key, []).append(session_id)
        return out

    @staticmethod
    def _subscribers_query(keys: Sequence[str]) -> sa.Select[str, str]:
        sub, s = schema.subscriptions, schema.sessions
        return (
            sa.select(sub.c.key, sub.c.session_id)
            .join(s, s.c.id == sub.c.session_id)
            .where(sub.c.key.in_(keys), s.c.state == schema.ACTIVE)
            .order_by(sub.c.key, sub.c.session_id)
        )

    # -- events -----------------------------------------------------------

    @_shielded
    async def fanout(self, events: Sequence[FanoutEvent]) -> FanoutResult:
        """Append each not-yet-processed event to its sessions' outboxes in one transaction.

        An event id seen before (in this batch or an earlier one) makes no frame:
        it is reported in ``duplicates``. Raises ``UnavailableError`` when the
        store cannot be reached; nothing is then recorded and the caller retries.
        """
        result = FanoutResult()
        if not events:
            return result
        now = self._clock()
        async with self._write() as conn:
            fresh = await self._claim_events(conn, events, now, result)
            targets = await self._resolve_targets(conn, fresh)
            per_session: dict[str, list[FanoutEvent]] = defaultdict(list)
            for ev in fresh:
                sessions = targets.get(ev.event_id, ())
                result.delivered[ev.event_id] = len(sessions)
                for session_id in sessions:
                    per_session[session_id].append(ev)
            if per_session:
                heads = await self._allocate(conn, {k: len(v) for k, v in per_session.items()})
                rows: list[dict[str, Any]] = []
                for session_id, evs in per_session.items():
                    first = heads[session_id] - len(evs) + 1
                    frames = [
                        StoredFrame(first + i, with_seq(first + i, ev.template))
                        for i, ev in enumerate(evs)
                    ]
                    result.frames[session_id] = frames
                    rows.extend(
                        {
                            "session_id": session_id,
                            "seq": f.seq,
                            "created_at": now,
                            "payload": f.payload,
                        }
                        for f in frames
                    )
                for i in range(0, len(rows), _CHUNK):
                    await conn.execute(schema.outbox.insert(), rows[i : i + _CHUNK])
        return result

    async def _claim_events(
        self,
        conn: AsyncConnection,
        events: Sequence[FanoutEvent],
        now: float,
        result: FanoutResult,
    ) -> list[FanoutEvent]:
        ids = list(dict.fromkeys(ev.event_id for ev in events))
        pe = schema.processed_events
        seen: set[str] = set()
        for i in range(0, len(ids), _CHUNK):
            rows = await conn.execute(
                sa.select(pe.c.event_id).where(pe.c.event_id.in_(ids[i : i + _CHUNK]))
            )
            seen.update(r[0] for r in rows)
        fresh: list[FanoutEvent] = []
        claimed: set[str] = set()
        for ev in events:
            if ev.event_id in seen or ev.event_id in claimed:
                result.duplicates.append(ev.event_id)
                continue
            claimed.add(ev.event_id)
            fresh.append(ev)
        if fresh:
            await conn.execute(
                pe.insert(), [{"event_id": ev.event_id, "processed_at": now} for ev in fresh]
            )
        return fresh

    async def _resolve_targets(
        self, conn: AsyncConnection, events: Sequence[FanoutEvent]
    ) -> dict[str, list[str]]:
        keys = list(dict.fromkeys(k for ev in events for k in ev.keys))
        by_key: dict[str, list[str]] = {}
        for i in range(0, len(keys), _CHUNK):
            for key, session_id in await conn.execute(
                self._subscribers_query(keys[i : i + _CHUNK])
            ):
                by_key.setdefault(key, []).append(session_id)
        direct = [ev.session_id for ev in events if ev.session_id]
        active: set[str] = set()
        if direct:
            s = schema.sessions
            rows = await conn.execute(
                sa.select(s.c.id).where(s.c.id.in_(direct), s.c.state == schema.ACTIVE)
            )
            active = {r[0] for r in rows}
        targets: dict[str, list[str]] = {}
        for ev in events:
            found = dict.fromkeys(sid for k in ev.keys for sid in by_key.get(k, ()))
            if ev.session_id and ev.session_id in active:
                found[ev.session_id] = None
            targets[ev.event_id] = list(found)
        return targets

    async def _allocate(self, conn: AsyncConnection, counts: Mapping[str, int]) -> dict[str, int]:
        """Advance head_seq of each session by its count; return the new heads."""
        s = schema.sessions
        ids = sorted(counts)
        heads: dict[str, int] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            query = sa.select(s.c.id, s.c.head_seq).where(s.c.id.in_(chunk)).order_by(s.c.id)
            if not self._sqlite:
                query = query.with_for_update()
            for session_id, head in await conn.execute(query):
                heads[session_id] = int(head) + counts[session_id]
        if heads:
            await conn.execute(
                s.update()
                .where(s.c.id == sa.bindparam("b_id"))
                .values(head_seq=sa.bindparam("b_head")),
                [{"b_id": k, "b_head": v} for k, v in heads.items()],
            )
        return heads

    @_shielded
    async def seen_delivery(self, delivery_id: str) -> bool:
        """Record a webhook delivery id; True when it had been recorded before (a replay)."""
        try:
            async with self._write() as conn:
                await conn.execute(
                    schema.processed_events.insert().values(
                        event_id=f"delivery:{delivery_id}", processed_at=self._clock()
                    )
                )
        except IntegrityError:
            return True
        return False

    @_shielded
    async def forget_processed(self, older_than: float) -> int:
        """Drop processed event ids older than ``older_than`` seconds (dedup window)."""
        pe = schema.processed_events
        async with self._write() as conn:
            result = await conn.execute(
                pe.delete().where(pe.c.processed_at < self._clock() - older_than)
            )
        return result.rowcount or 0

    @_shielded
    async def dead_letter(
        self,
        *,
        source: str,
        reason: str,
        payload: bytes | None,
        partition: int | None = None,
        offset: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Keep a record that could not be decoded or routed, with the reason."""
        async with self._write() as conn:
            await conn.execute(
                schema.dead_letters.insert().values(
                    source=source,
                    partition=partition,
                    offset=offset,
                    reason=reason,
                    payload=payload,
                    headers=json.dumps(dict(headers or {})),
                    created_at=self._clock(),
                )
            )

    @_shielded
    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        d = schema.dead_letters
        async with self._read() as conn:
            rows = (await conn.execute(sa.select(d).order_by(d.c.id).limit(limit))).mappings().all()
        return [dict(r) for r in rows]

    # -- helpers ----------------------------------------------------------

    @staticmethod
    def _record(row: Mapping[Any, Any]) -> SessionRecord:
        return SessionRecord(
            id=row["id"],
            identity=Identity.from_json(json.loads(row["identity"])),
            channel=row["channel"],
            locale=row["locale"],
            attributes=json.loads(row["attributes"]),
            state=int(row["state"]),
            created_at=float(row["created_at"]),
            last_active_at=float(row["last_active_at"]),
            head_seq=int(row["head_seq"]),
            acked_seq=int(row["acked_seq"]),
            floor_seq=int(row["floor_seq"]),
            dialogue=json.loads(row["dialogue"]),
            replica=row["replica"],
            token_hash=row["token_hash"],
        )
