"""The SessionStore: the source of truth for sessions and their durable frames.

Sessions, the per-session outbox of durable frames (seq, payload), subscriptions
(key -> session), dialogue state, processed event ids and dead letters live in
one SQL database reached through SQLAlchemy: a SQLite file by default (WAL; one
process; writes group-committed on one writer thread), PostgreSQL or
MySQL/MariaDB by URL (async engine). See :mod:`talkwire.server.sqlexec`.

Every operation is one transaction function of a SQLAlchemy ``Connection``; on
SQLite the hot ones (append, ack, replay, claim, fan-out) are instead functions of
the stdlib ``sqlite3`` connection (:mod:`talkwire.server.sqlitehot`), run by the
same writer in the same group commit; on PostgreSQL they are async functions of an
``asyncpg`` connection (:mod:`talkwire.server.pghot`, :mod:`talkwire.server.pgexec`), and
on MySQL / MariaDB over asyncmy of an ``asyncmy`` cursor (:mod:`talkwire.server.myhot`,
:mod:`talkwire.server.myexec`).
Seqs are allocated inside the transaction that writes the frames, under a row
lock on the session (``SELECT ... FOR UPDATE``, or SQLite's single writer), so a
session's seqs are gap-free and a frame with seq N is committed no later than
every frame before it.

Every operation that changes what a conversation is (open, resume, turn, frame,
subscription, close, expiry) also writes its conversation event through
:attr:`SessionStore.events` in the same transaction (the outbound outbox; see
:mod:`talkwire.server.outbound.record`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

import asyncpg
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from talkwire.server import myhot, pghot, schema, sqlitehot
from talkwire.server.errors import (
    AlreadyExistsError,
    ConfigError,
    FailedPreconditionError,
    NotFoundError,
    OutOfRangeError,
)
from talkwire.server.frames import StoredFrame, with_seq
from talkwire.server.identity import Identity
from talkwire.server.myexec import AsyncmyExecutor
from talkwire.server.outbound import record as kinds
from talkwire.server.outbound.record import EventRecorder, EventRow
from talkwire.server.pgexec import AsyncpgExecutor
from talkwire.server.sqlexec import SqlExecutor, SqliteExecutor, open_executor
from talkwire.server.storeurl import missing_database
from talkwire.server.touches import TouchThrottle

__all__ = [
    "FanoutEvent",
    "FanoutResult",
    "Retention",
    "SessionRecord",
    "SessionStore",
]

_CHUNK = 2000
_T = TypeVar("_T")


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


def _split_fresh(
    events: Sequence[FanoutEvent], seen: set[str], result: FanoutResult
) -> list[FanoutEvent]:
    """The events not seen before nor earlier in ``events``; the rest are duplicates."""
    fresh: list[FanoutEvent] = []
    claimed: set[str] = set()
    for ev in events:
        if ev.event_id in seen or ev.event_id in claimed:
            result.duplicates.append(ev.event_id)
            continue
        claimed.add(ev.event_id)
        fresh.append(ev)
    return fresh


def _targets(
    events: Sequence[FanoutEvent], by_key: Mapping[str, list[str]], active: set[str]
) -> dict[str, list[str]]:
    """Event id -> its sessions: the key subscribers, then the direct active session."""
    targets: dict[str, list[str]] = {}
    for ev in events:
        found = dict.fromkeys(sid for k in ev.keys for sid in by_key.get(k, ()))
        if ev.session_id and ev.session_id in active:
            found[ev.session_id] = None
        targets[ev.event_id] = list(found)
    return targets


def _per_session(
    fresh: Sequence[FanoutEvent], targets: Mapping[str, list[str]], result: FanoutResult
) -> dict[str, list[FanoutEvent]]:
    """Session -> its events in order; counts deliveries per event into ``result``."""
    per_session: dict[str, list[FanoutEvent]] = defaultdict(list)
    for ev in fresh:
        sessions = targets.get(ev.event_id, ())
        result.delivered[ev.event_id] = len(sessions)
        for session_id in sessions:
            per_session[session_id].append(ev)
    return per_session


def _fanout_frames(
    per_session: Mapping[str, list[FanoutEvent]],
    new_heads: Mapping[str, int],
    now: float,
    result: FanoutResult,
) -> tuple[list[tuple[str, int, float, bytes]], list[tuple[str, str, int, float, bytes]]]:
    """The frames of a fan-out, numbered up to each session's new head, into ``result``;
    returns the outbox rows and the ``frame.appended`` event rows, in the same order."""
    outbox: list[tuple[str, int, float, bytes]] = []
    appended: list[tuple[str, str, int, float, bytes]] = []
    for session_id, evs in per_session.items():
        if session_id not in new_heads:
            continue  # closed between lookup and lock
        first = new_heads[session_id] - len(evs) + 1
        frames = [
            StoredFrame(first + i, with_seq(first + i, ev.template)) for i, ev in enumerate(evs)
        ]
        result.frames[session_id] = frames
        for f in frames:
            appended.append((session_id, kinds.FRAME_APPENDED, f.seq, now, f.payload))
            outbox.append((session_id, f.seq, now, f.payload))
    return outbox, appended


# The dialogue state is saved on (nearly) every turn: orjson encodes it about 20x
# faster than the stdlib. What orjson would encode differently from ``json.dumps``
# (datetimes and dataclasses, which json refuses, big ints, ...) falls back to
# ``json.dumps``, so a state that json refuses is still refused.
_ORJSON_OPTS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


# A resume missing at most this many frames replays them on the event loop (SQLite).
_POINT_REPLAY = 32


def _dialogue_json(dialogue: Mapping[str, Any]) -> str:
    """The dialogue state as JSON text (what ``json.loads`` reads back as ``dialogue``)."""
    try:
        return orjson.dumps(dialogue, option=_ORJSON_OPTS).decode()
    except TypeError:  # orjson.JSONEncodeError: the stdlib decides (and raises as before)
        return json.dumps(dialogue)


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(data), separators=(",", ":"), default=str).encode()


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_S = schema.sessions
_O = schema.outbox
_HO = schema.handoffs
_SUB = schema.subscriptions
_PE = schema.processed_events

# Statements built once; SQLAlchemy caches their compiled form.
_GET_SESSION = sa.select(_S).where(_S.c.id == sa.bindparam("sid"))
_INSERT_SESSION = _S.insert()
_INSERT_OUTBOX = _O.insert()
_FRAMES_AFTER = (
    sa.select(_O.c.seq, _O.c.payload)
    .where(_O.c.session_id == sa.bindparam("sid"), _O.c.seq > sa.bindparam("after"))
    .order_by(_O.c.seq)
)
_FRAMES_AFTER_LIMIT = _FRAMES_AFTER.limit(sa.bindparam("lim"))
_ACTIVE_SESSION = sa.and_(_S.c.id == sa.bindparam("sid"), _S.c.state == schema.ACTIVE)
_ADVANCE = {"head_seq": _S.c.head_seq + sa.bindparam("n"), "last_active_at": sa.bindparam("now")}
_ADVANCE_DIALOGUE = {**_ADVANCE, "dialogue": sa.bindparam("dialogue")}
_APPEND_RETURNING = {
    False: _S.update().where(_ACTIVE_SESSION).values(_ADVANCE).returning(_S.c.head_seq),
    True: _S.update().where(_ACTIVE_SESSION).values(_ADVANCE_DIALOGUE).returning(_S.c.head_seq),
}
_APPEND_UPDATE = {
    False: _S.update().where(_ACTIVE_SESSION).values(_ADVANCE),
    True: _S.update().where(_ACTIVE_SESSION).values(_ADVANCE_DIALOGUE),
}
_LOCK_HEAD = sa.select(_S.c.head_seq).where(_ACTIVE_SESSION).with_for_update()
_H = schema.handoffs
_HANDOFF_PIN = sa.select(_H.c.pin_seq).where(
    _H.c.session_id == sa.bindparam("sid"),
    _H.c.state.in_((schema.HANDOFF_QUEUED, schema.HANDOFF_AGENT)),
)
_SET_HEAD = (
    _S.update().where(_S.c.id == sa.bindparam("b_id")).values(head_seq=sa.bindparam("b_head"))
)


def _widen_time_columns(conn: Connection) -> None:
    """Schema 3 on MySQL/MariaDB: timestamp columns from FLOAT to DOUBLE."""
    for column in schema.time_columns():
        null = "NULL" if column.nullable else "NOT NULL"
        conn.exec_driver_sql(f"ALTER TABLE {column.table.name} MODIFY {column.name} DOUBLE {null}")


def _cluster_sqlite_pending(conn: Connection) -> None:
    """Schema 4 on SQLite: the outbound pending table rebuilt WITHOUT ROWID, its session
    index dropped (the rows are copied; SQLite's DDL is transactional)."""
    table = schema.outbound_pending
    cols = ", ".join(c.name for c in table.columns)
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_talkwire_outbound_pending_session")
    conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {table.name}_v3")
    table.create(conn)
    conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {table.name}_v3"  # noqa: S608
    )
    conn.exec_driver_sql(f"DROP TABLE {table.name}_v3")


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
        executor: SqlExecutor | None = None,
        events: EventRecorder | None = None,
        durability: str = "process",
    ) -> None:
        self.url = url
        self.events = events or EventRecorder(clock=clock)
        """Writes conversation events; call ``events.record(conn, ...)`` inside a transaction."""
        self.retention = retention or Retention()
        self._clock = clock
        self._db = executor or open_executor(
            url, pool_size=pool_size, echo=echo, durability=durability
        )
        self._sqlite = self._db.dialect == "sqlite"
        self._raw = self._db if isinstance(self._db, SqliteExecutor) else None
        self._touches = TouchThrottle()
        self._pg = self._db if isinstance(self._db, AsyncpgExecutor) else None
        self._my = self._db if isinstance(self._db, AsyncmyExecutor) else None
        self._closed = False

    @property
    def dialect(self) -> str:
        return self._db.dialect

    @property
    def sqlite(self) -> SqliteExecutor | None:
        """The SQLite executor when the hot paths run raw ``sqlite3`` (else None)."""
        return self._raw

    @property
    def pg(self) -> AsyncpgExecutor | None:
        """The PostgreSQL executor when the hot paths run on asyncpg (else None)."""
        return self._pg

    @property
    def my(self) -> AsyncmyExecutor | None:
        """The MySQL / MariaDB executor when the hot paths run on asyncmy (else None)."""
        return self._my

    @property
    def executor(self) -> SqlExecutor:
        """Where this store's transactions run (for focused modules on the same database)."""
        return self._db

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Create the schema if it does not exist yet (``talkwire db upgrade`` does the same).

        A database that does not exist is a :class:`ConfigError` naming ``store.url``
        (talkwire creates tables, never databases).
        """
        try:
            await self.upgrade()
        except Exception as exc:
            if not missing_database(exc):
                raise
            name = sa.make_url(self.url).database
            raise ConfigError(
                f"store.url: database {name!r} does not exist; create it first "
                "(talkwire creates the tables, not the database)"
            ) from None

    async def upgrade(self) -> int:
        """Create or upgrade the schema; return the schema version now in place."""

        def tx(conn: Connection) -> int:
            schema.metadata.create_all(conn)
            info = schema.schema_info
            row = conn.execute(sa.select(info.c.version).where(info.c.id == 1)).first()
            if row is None:
                conn.execute(info.insert().values(id=1, version=schema.SCHEMA_VERSION))
                return schema.SCHEMA_VERSION
            version = int(row[0])
            if version > schema.SCHEMA_VERSION:
                raise FailedPreconditionError(
                    f"database schema version {version} is newer than this talkwire "
                    f"({schema.SCHEMA_VERSION}); upgrade talkwire"
                )
            if version < schema.SCHEMA_VERSION:  # 2 only added tables (create_all did)
                if version < 3 and conn.dialect.name in ("mysql", "mariadb"):
                    _widen_time_columns(conn)
                if version < 4 and conn.dialect.name == "sqlite":
                    _cluster_sqlite_pending(conn)
                conn.execute(
                    info.update().where(info.c.id == 1).values(version=schema.SCHEMA_VERSION)
                )
            return schema.SCHEMA_VERSION

        return await self._db.write(tx)

    async def aclose(self) -> None:
        """Finish the calls in flight and release the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._db.aclose()

    # -- sessions ---------------------------------------------------------

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
        token = secrets.token_urlsafe(32)
        values = {
            "id": str(uuid.uuid4()),
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
        opened: dict[str, Any] = {"subject": identity.subject, "channel": channel}
        opened.update(locale=locale, attributes=dict(attributes or {}))
        session_id = str(values["id"])

        def tx(conn: Connection) -> None:
            conn.execute(_INSERT_SESSION, values)
            self.events.record(conn, session_id, kinds.SESSION_OPENED, data=opened, now=now)

        await self._db.write(tx)
        return self._record(values), token

    async def get_session(self, session_id: str) -> SessionRecord | None:
        def tx(conn: Connection) -> SessionRecord | None:
            row = conn.execute(_GET_SESSION, {"sid": session_id}).mappings().first()
            return None if row is None else self._record(row)

        return await self._db.read(tx)

    async def claim_session(
        self,
        session_id: str,
        check: Callable[[SessionRecord | None], SessionRecord],
        *,
        replica: str | None,
    ) -> SessionRecord:
        """Read a session, let ``check`` accept it (or raise), and mark it attached: one write."""
        if self._raw is not None:

            def raw_tx(conn: sqlite3.Connection) -> SessionRecord:
                row = sqlitehot.session_row(conn, session_id)
                record = check(None if row is None else self._record(row))
                now = self._clock()
                sqlitehot.touch_replica(conn, session_id, now, replica)
                data = _json({"replica": replica or ""})
                self.events.record_raw(conn, [(session_id, kinds.SESSION_RESUMED, 0, now, data)])
                return record

            return await self._raw.write_raw(raw_tx)
        if self._pg is not None:

            async def pg_tx(conn: asyncpg.Connection) -> SessionRecord:
                row = await pghot.session_row(conn, session_id)
                record = check(None if row is None else self._record(row))
                now = self._clock()
                await pghot.touch_replica(conn, session_id, now, replica)
                data = _json({"replica": replica or ""})
                await self.events.record_pg(
                    conn, [(session_id, kinds.SESSION_RESUMED, 0, now, data)]
                )
                return record

            return await self._pg.write_pg(pg_tx)
        if self._my is not None:

            async def my_tx(cur: Any) -> SessionRecord:
                row = await myhot.session_row(cur, session_id)
                record = check(None if row is None else self._record(row))
                now = self._clock()
                await myhot.touch_replica(cur, session_id, now, replica)
                data = _json({"replica": replica or ""})
                await self.events.record_my(
                    cur, [(session_id, kinds.SESSION_RESUMED, 0, now, data)]
                )
                return record

            return await self._my.write_my(my_tx)

        def tx(conn: Connection) -> SessionRecord:
            row = conn.execute(_GET_SESSION, {"sid": session_id}).mappings().first()
            record = check(None if row is None else self._record(row))
            now = self._clock()
            conn.execute(
                _S.update().where(_S.c.id == session_id).values(last_active_at=now, replica=replica)
            )
            data = {"replica": replica or ""}
            self.events.record(conn, session_id, kinds.SESSION_RESUMED, data=data, now=now)
            return record

        return await self._db.write(tx)

    async def list_sessions(
        self,
        *,
        subject: str | None = None,
        key: str | None = None,
        include_closed: bool = False,
        after_id: str = "",
        limit: int = 100,
    ) -> list[SessionRecord]:
        query = sa.select(_S).where(_S.c.id > after_id).order_by(_S.c.id).limit(limit)
        if subject:
            query = query.where(_S.c.subject == subject)
        if not include_closed:
            query = query.where(_S.c.state == schema.ACTIVE)
        if key:
            query = query.where(_S.c.id.in_(sa.select(_SUB.c.session_id).where(_SUB.c.key == key)))

        def tx(conn: Connection) -> list[SessionRecord]:
            return [self._record(r) for r in conn.execute(query).mappings()]

        return await self._db.read(tx)

    async def touch(self, session_id: str, *, replica: str | object | None = ...) -> None:
        """Mark the session active now (and set or clear its attachment replica)."""
        now = self._clock()
        if self._raw is not None:  # every detach: the raw SQLite write
            if replica is ...:
                await self._raw.write_raw(lambda conn: sqlitehot.touch(conn, session_id, now))
            else:
                name = replica if isinstance(replica, str) else None
                await self._raw.write_raw(
                    lambda conn: sqlitehot.touch_replica(conn, session_id, now, name)
                )
            return
        values: dict[str, Any] = {"last_active_at": now}
        if replica is not ...:
            values["replica"] = replica
        stmt = _S.update().where(_S.c.id == session_id).values(**values)
        await self._db.write(lambda conn: conn.execute(stmt))

    async def close_session(self, session_id: str, *, state: int = schema.CLOSED) -> bool:
        """Close (or expire) a session: drop its subscriptions and frames. False if unknown."""
        now = self._clock()

        def tx(conn: Connection) -> bool:
            result = conn.execute(
                _S.update()
                .where(_S.c.id == session_id, _S.c.state == schema.ACTIVE)
                .values(state=state, replica=None, last_active_at=now)
            )
            if not result.rowcount:
                return False
            # A person holding (or waiting for) the session lets go: it is over.
            released = conn.execute(
                _HO.update()
                .where(_HO.c.session_id == session_id, _HO.c.state != schema.HANDOFF_BOT)
                .values(state=schema.HANDOFF_BOT, updated_at=now)
            ).rowcount
            if released:
                reason = {"reason": "session expired" if state == schema.EXPIRED else "closed"}
                self.events.record(conn, session_id, kinds.HANDOFF_RELEASED, data=reason, now=now)
            kind = kinds.SESSION_EXPIRED if state == schema.EXPIRED else kinds.SESSION_CLOSED
            self.events.record(conn, session_id, kind, data={}, now=now)
            conn.execute(_SUB.delete().where(_SUB.c.session_id == session_id))
            conn.execute(_O.delete().where(_O.c.session_id == session_id))
            return True

        return await self._db.write(tx)

    async def expire_idle(self, ttl: float, *, keep: Iterable[str] = ()) -> list[str]:
        """Expire sessions idle for longer than ``ttl`` seconds, except those in ``keep``."""
        cutoff = self._clock() - ttl
        keep_set = set(keep)
        query = sa.select(_S.c.id).where(_S.c.state == schema.ACTIVE, _S.c.last_active_at < cutoff)
        rows = await self._db.read(lambda conn: [r[0] for r in conn.execute(query)])
        expired = []
        for session_id in rows:
            if session_id in keep_set:
                continue
            if await self.close_session(session_id, state=schema.EXPIRED):
                expired.append(session_id)
        return expired

    # -- frames -----------------------------------------------------------

    async def append(
        self,
        session_id: str,
        templates: Sequence[bytes],
        *,
        dialogue: Mapping[str, Any] | None = None,
        turn: bytes | None = None,
    ) -> list[StoredFrame]:
        """Append durable frames to one session (and save its dialogue state) atomically.

        ``turn`` is the serialised user frame (``ConverseRequest``) that caused them: it
        is recorded as a ``turn.received`` event before the frames' ``frame.appended``.
        """
        now = self._clock()
        if self._raw is not None:
            saved = None if dialogue is None else _dialogue_json(dialogue)
            touch = self._touches.due(session_id, now)
            return await self._raw.write_raw(
                lambda conn: self._append_raw(conn, session_id, templates, now, saved, turn, touch)
            )
        if self._pg is not None:
            saved = None if dialogue is None else json.dumps(dialogue)
            touch = self._touches.due(session_id, now)
            return await self._pg.write_pg(
                lambda conn: self._append_pg(conn, session_id, templates, now, saved, turn, touch),
                transaction=False,  # one statement
            )
        if self._my is not None:
            saved = None if dialogue is None else json.dumps(dialogue)
            touch = self._touches.due(session_id, now)
            return await self._my.write_my(
                lambda cur: self._append_my(cur, session_id, templates, now, saved, turn, touch)
            )
        n = len(templates)
        params: dict[str, Any] = {"sid": session_id, "n": n, "now": now}
        with_dialogue = dialogue is not None
        if with_dialogue:
            params["dialogue"] = json.dumps(dialogue)
        return await self._db.write(
            lambda conn: self._append_tx(conn, session_id, templates, params, with_dialogue, turn)
        )

    async def append_then(
        self,
        session_id: str,
        templates: Sequence[bytes],
        then: Callable[[Connection], _T],
        *,
        dialogue: Mapping[str, Any] | None = None,
        turn: bytes | None = None,
    ) -> tuple[list[StoredFrame], _T]:
        """:meth:`append`, then ``then(conn)`` in the same transaction (a rare step a turn
        asks for, such as a handoff: its frames follow the turn's own)."""
        params: dict[str, Any] = {"sid": session_id, "n": len(templates), "now": self._clock()}
        with_dialogue = dialogue is not None
        if with_dialogue:
            params["dialogue"] = json.dumps(dialogue)

        def tx(conn: Connection) -> tuple[list[StoredFrame], _T]:
            frames = self._append_tx(conn, session_id, templates, params, with_dialogue, turn)
            return frames, then(conn)

        return await self._db.write(tx)

    def append_in(
        self, conn: Connection, session_id: str, templates: Sequence[bytes]
    ) -> list[StoredFrame]:
        """Append durable frames inside a :meth:`transaction` (e.g. a handoff step)."""
        params: dict[str, Any] = {"sid": session_id, "n": len(templates), "now": self._clock()}
        return self._append_tx(conn, session_id, templates, params, False)

    def _append_tx(
        self,
        conn: Connection,
        session_id: str,
        templates: Sequence[bytes],
        params: Mapping[str, Any],
        with_dialogue: bool,
        turn: bytes | None = None,
    ) -> list[StoredFrame]:
        n = len(templates)
        if self._db.update_returning:
            head = conn.execute(_APPEND_RETURNING[with_dialogue], params).scalar()
            if head is None:
                raise NotFoundError(f"session {session_id} not found or closed")
            first = int(head) - n + 1
        else:
            row = conn.execute(_LOCK_HEAD, params).first()
            if row is None:
                raise NotFoundError(f"session {session_id} not found or closed")
            first = int(row[0]) + 1
            conn.execute(_APPEND_UPDATE[with_dialogue], params)
        frames = [StoredFrame(first + i, with_seq(first + i, t)) for i, t in enumerate(templates)]
        if frames:
            now = params["now"]
            conn.execute(
                _INSERT_OUTBOX,
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
        self._record_frames(conn, session_id, frames, params["now"], turn)
        return frames

    def _append_raw(
        self,
        conn: sqlite3.Connection,
        session_id: str,
        templates: Sequence[bytes],
        now: float,
        dialogue: str | None,
        turn: bytes | None,
        touch: bool = True,
    ) -> list[StoredFrame]:
        first = sqlitehot.append(conn, session_id, templates, now, dialogue, touch=touch)
        if first is None:
            raise NotFoundError(f"session {session_id} not found or closed")
        payloads = [with_seq(first + i, t) for i, t in enumerate(templates)]
        sqlitehot.insert_frames(conn, session_id, first, payloads, now)
        rows = [(session_id, kinds.TURN_RECEIVED, 0, now, turn)] if turn is not None else []
        rows += [
            (session_id, kinds.FRAME_APPENDED, first + i, now, p) for i, p in enumerate(payloads)
        ]
        self.events.record_raw(conn, rows)
        return [StoredFrame(first + i, p) for i, p in enumerate(payloads)]

    async def _append_pg(
        self,
        conn: asyncpg.Connection,
        session_id: str,
        templates: Sequence[bytes],
        now: float,
        dialogue: str | None,
        turn: bytes | None,
        touch: bool = True,
    ) -> list[StoredFrame]:
        recorder = self.events
        events = (kinds.TURN_RECEIVED, kinds.FRAME_APPENDED) if recorder.enabled else None
        routes = recorder.routes_for_kinds(events) if events is not None else []
        rows = await pghot.append(
            conn, session_id, templates, now, dialogue, turn, events, routes, touch=touch
        )
        if rows is None:
            raise NotFoundError(f"session {session_id} not found or closed")
        if routes:
            recorder.generation += 1
        return [StoredFrame(seq, payload) for seq, payload in rows]

    async def _append_my(
        self,
        cur: Any,
        session_id: str,
        templates: Sequence[bytes],
        now: float,
        dialogue: str | None,
        turn: bytes | None,
        touch: bool = True,
    ) -> list[StoredFrame]:
        first = await myhot.advance(cur, session_id, len(templates), now, dialogue, touch=touch)
        if first is None:
            raise NotFoundError(f"session {session_id} not found or closed")
        frames = [StoredFrame(first + i, with_seq(first + i, t)) for i, t in enumerate(templates)]
        await myhot.insert_frames(cur, [(session_id, f.seq, now, f.payload) for f in frames])
        rows = [(session_id, kinds.TURN_RECEIVED, 0, now, turn)] if turn is not None else []
        rows += [(session_id, kinds.FRAME_APPENDED, f.seq, now, f.payload) for f in frames]
        await self.events.record_my(cur, rows)
        return frames

    async def transaction(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` as one write transaction (for stores built on these tables)."""
        return await self._db.write(work)

    async def reading(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` as one read transaction."""
        return await self._db.read(work)

    def _record_frames(
        self,
        conn: Connection,
        session_id: str,
        frames: Sequence[StoredFrame],
        now: float,
        turn: bytes | None = None,
    ) -> None:
        rows = [EventRow(session_id, kinds.TURN_RECEIVED, turn)] if turn is not None else []
        rows += [EventRow(session_id, kinds.FRAME_APPENDED, f.payload, f.seq) for f in frames]
        self.events.record_many(conn, rows, now=now)

    async def frames_after(
        self, session_id: str, after_seq: int, *, limit: int | None = None
    ) -> list[StoredFrame]:
        """Retained frames with seq > ``after_seq``, in order."""
        if self._raw is not None:
            rows = await self._raw.read_raw(
                lambda conn: sqlitehot.frames_after(conn, session_id, after_seq, limit)
            )
            return [StoredFrame(seq, payload) for seq, payload in rows]
        if self._pg is not None:
            rows = await self._pg.read_pg(
                lambda conn: pghot.frames_after(conn, session_id, after_seq, limit)
            )
            return [StoredFrame(seq, payload) for seq, payload in rows]
        if self._my is not None:
            rows = await self._my.read_my(
                lambda cur: myhot.frames_after(cur, session_id, after_seq, limit)
            )
            return [StoredFrame(seq, payload) for seq, payload in rows]
        params: dict[str, Any] = {"sid": session_id, "after": after_seq}
        stmt = _FRAMES_AFTER
        if limit is not None:
            stmt, params["lim"] = _FRAMES_AFTER_LIMIT, limit

        def tx(conn: Connection) -> list[StoredFrame]:
            return [StoredFrame(int(seq), bytes(p)) for seq, p in conn.execute(stmt, params)]

        return await self._db.read(tx)

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
        if self._raw is not None and session.head_seq - last_seq <= _POINT_REPLAY:
            # A few frames (a resume storm: mostly none): read on the loop, no thread hop.
            rows = await self._raw.read_point(
                lambda conn: sqlitehot.frames_after(conn, session.id, last_seq, None)
            )
            frames = [StoredFrame(seq, payload) for seq, payload in rows]
        else:
            frames = await self.frames_after(session.id, last_seq)
        expected = last_seq + 1
        for f in frames:
            if f.seq != expected:
                raise OutOfRangeError(f"frame {expected} is no longer retained; open a new session")
            expected += 1
        return frames

    async def heads(self, session_ids: Sequence[str]) -> dict[str, int]:
        """The newest seq of each of these sessions (one indexed read per chunk)."""

        def tx(conn: Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for i in range(0, len(session_ids), _CHUNK):
                rows = conn.execute(
                    sa.select(_S.c.id, _S.c.head_seq).where(
                        _S.c.id.in_(session_ids[i : i + _CHUNK])
                    )
                )
                out.update((str(sid), int(head)) for sid, head in rows)
            return out

        return await self._db.read(tx)

    async def ack(self, session_id: str, seq: int) -> None:
        """The client has every frame up to ``seq``: drop them from the outbox."""
        await self.ack_many([(session_id, seq)])

    async def ack_many(self, acks: Sequence[tuple[str, int]]) -> None:
        """Apply several sessions' acks in one transaction."""
        now = self._clock()

        ordered = sorted(acks)  # lock sessions in id order, as fan-outs do: no deadlock
        if self._raw is not None:

            def raw_tx(conn: sqlite3.Connection) -> None:
                for session_id, seq in ordered:
                    sqlitehot.ack(conn, session_id, seq, now)

            await self._raw.write_raw(raw_tx)
            return
        if self._pg is not None:
            # One session's ack is one statement: no BEGIN / COMMIT.
            await self._pg.write_pg(
                lambda conn: pghot.ack(conn, ordered, now), transaction=len(ordered) > 1
            )
            return
        if self._my is not None:
            await self._my.write_my(lambda cur: myhot.ack(cur, ordered, now))
            return

        def tx(conn: Connection) -> None:
            for session_id, seq in ordered:
                self._ack(conn, session_id, seq, now)

        await self._db.write(tx)

    @staticmethod
    def _ack(conn: Connection, session_id: str, seq: int, now: float) -> None:
        # While a handoff holds the session, frames above its pin stay for the agent's stream.
        pin = conn.execute(_HANDOFF_PIN, {"sid": session_id}).scalar()
        floor = seq if pin is None else min(seq, int(pin))
        result = conn.execute(
            _S.update()
            .where(
                _S.c.id == session_id,
                # a repeated ack still drops what a released pin no longer keeps
                sa.or_(_S.c.acked_seq < seq, _S.c.floor_seq < floor),
                _S.c.head_seq >= seq,
            )
            .values(
                acked_seq=sa.case((_S.c.acked_seq < seq, seq), else_=_S.c.acked_seq),
                floor_seq=sa.case((_S.c.floor_seq < floor, floor), else_=_S.c.floor_seq),
                last_active_at=now,
            )
        )
        if not result.rowcount:
            return  # an old ack, or one beyond the newest frame: nothing to drop
        conn.execute(_O.delete().where(_O.c.session_id == session_id, _O.c.seq <= floor))

    async def prune(self) -> int:
        """Apply the retention window (count and age) to unacked frames; return rows dropped."""
        now = self._clock()
        max_frames, max_age = self.retention.max_frames, self.retention.max_age

        def find(conn: Connection) -> dict[str, int]:
            by_age = conn.execute(
                sa.select(_O.c.session_id, sa.func.max(_O.c.seq))
                .where(_O.c.created_at < now - max_age)
                .group_by(_O.c.session_id)
            ).all()
            by_count = conn.execute(
                sa.select(_S.c.id, _S.c.head_seq - max_frames).where(
                    _S.c.state == schema.ACTIVE, _S.c.head_seq - _S.c.floor_seq > max_frames
                )
            ).all()
            floors: dict[str, int] = defaultdict(int)
            for session_id, seq in [*by_age, *by_count]:
                floors[session_id] = max(floors[session_id], int(seq))
            # While a handoff holds a session, the frames above its pin stay for the
            # agent's stream (as they do against the user's acks).
            for session_id in list(floors):
                pin = conn.execute(_HANDOFF_PIN, {"sid": session_id}).scalar()
                if pin is not None:
                    floors[session_id] = min(floors[session_id], int(pin))
            return {sid: floor for sid, floor in floors.items() if floor > 0}

        def drop(conn: Connection, floors: Mapping[str, int]) -> int:
            dropped = 0
            for session_id, floor in floors.items():
                conn.execute(
                    _S.update()
                    .where(_S.c.id == session_id, _S.c.floor_seq < floor)
                    .values(floor_seq=floor)
                )
                result = conn.execute(
                    _O.delete().where(_O.c.session_id == session_id, _O.c.seq <= floor)
                )
                dropped += result.rowcount or 0
            return dropped

        floors = await self._db.read(find)
        if not floors:
            return 0
        return await self._db.write(lambda conn: drop(conn, floors))

    # -- subscriptions ----------------------------------------------------

    async def subscribe(self, session_id: str, key: str) -> bool:
        """Subscribe; False if it already existed."""
        now = self._clock()
        row = {"key": key, "session_id": session_id, "created_at": now}

        def tx(conn: Connection) -> None:
            self._lock_session(conn, session_id, now)
            conn.execute(_SUB.insert(), row)
            data = {"key": key, "active": True}
            self.events.record(conn, session_id, kinds.SUBSCRIPTION_CHANGED, data=data, now=now)

        try:
            await self._db.write(tx)
        except IntegrityError:
            return False
        return True

    async def unsubscribe(self, session_id: str, key: str) -> bool:
        stmt = _SUB.delete().where(_SUB.c.session_id == session_id, _SUB.c.key == key)
        now = self._clock()

        def tx(conn: Connection) -> bool:
            self._lock_session(conn, session_id, now)
            if not conn.execute(stmt).rowcount:
                return False
            data = {"key": key, "active": False}
            self.events.record(conn, session_id, kinds.SUBSCRIPTION_CHANGED, data=data, now=now)
            return True

        return await self._db.write(tx)

    @staticmethod
    def _lock_session(conn: Connection, session_id: str, now: float) -> None:
        """Take the session's row lock: its events then get ids in commit order."""
        conn.execute(_S.update().where(_S.c.id == session_id).values(last_active_at=now))

    async def subscriptions(self, session_id: str) -> list[str]:
        stmt = sa.select(_SUB.c.key).where(_SUB.c.session_id == session_id).order_by(_SUB.c.key)
        return await self._db.read(lambda conn: [r[0] for r in conn.execute(stmt)])

    async def subscribers(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """Active sessions subscribed to each key (one indexed lookup)."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}

        def tx(conn: Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for i in range(0, len(wanted), _CHUNK):
                for key, session_id in conn.execute(
                    self._subscribers_query(wanted[i : i + _CHUNK])
                ):
                    out.setdefault(key, []).append(session_id)
            return out

        return await self._db.read(tx)

    @staticmethod
    def _subscribers_query(keys: Sequence[str]) -> sa.Select[str, str]:
        return (
            sa.select(_SUB.c.key, _SUB.c.session_id)
            .join(_S, _S.c.id == _SUB.c.session_id)
            .where(_SUB.c.key.in_(keys), _S.c.state == schema.ACTIVE)
            .order_by(_SUB.c.key, _SUB.c.session_id)
        )

    # -- events -----------------------------------------------------------

    async def fanout(
        self, events: Sequence[FanoutEvent], *, delivery_id: str | None = None
    ) -> FanoutResult:
        """Append each not-yet-processed event to its sessions' outboxes in one transaction.

        An event id seen before (in this batch or an earlier one) makes no frame:
        it is reported in ``duplicates``. Raises ``UnavailableError`` when the
        store cannot be reached; nothing is then recorded and the caller retries.

        With ``delivery_id`` (a webhook delivery) the id is claimed in the same
        transaction, even when ``events`` is empty: a delivery id recorded
        before raises ``AlreadyExistsError`` and nothing is written, and a failed
        transaction records neither the delivery nor its events.
        """
        if not events and delivery_id is None:
            return FanoutResult()
        now = self._clock()
        if self._raw is not None:
            return await self._raw.write_raw(
                lambda conn: self._fanout_raw(conn, events, now, delivery_id)
            )
        if self._pg is not None:
            return await self._pg.write_pg(
                lambda conn: self._fanout_pg(conn, events, now, delivery_id)
            )
        if self._my is not None:
            return await self._my.write_my(
                lambda cur: self._fanout_my(cur, events, now, delivery_id)
            )
        return await self._db.write(lambda conn: self._fanout_tx(conn, events, now, delivery_id))

    def _fanout_raw(
        self,
        conn: sqlite3.Connection,
        events: Sequence[FanoutEvent],
        now: float,
        delivery_id: str | None,
    ) -> FanoutResult:
        """:meth:`_fanout_tx` on SQLite's raw connection, statement for statement."""
        if delivery_id is not None and not sqlitehot.claim_delivery(
            conn, f"delivery:{delivery_id}", now
        ):
            raise AlreadyExistsError("delivery already processed (replay)")
        result = FanoutResult()
        ids = list(dict.fromkeys(ev.event_id for ev in events))
        seen: set[str] = set()
        for i in range(0, len(ids), _CHUNK):
            seen |= sqlitehot.seen_events(conn, ids[i : i + _CHUNK])
        fresh = _split_fresh(events, seen, result)
        if fresh:
            sqlitehot.claim_events(conn, [ev.event_id for ev in fresh], now)
        keys = list(dict.fromkeys(k for ev in fresh for k in ev.keys))
        by_key: dict[str, list[str]] = {}
        for i in range(0, len(keys), _CHUNK):
            for key, session_id in sqlitehot.subscribers(conn, keys[i : i + _CHUNK]):
                by_key.setdefault(key, []).append(session_id)
        direct = [ev.session_id for ev in fresh if ev.session_id]
        active: set[str] = set()
        for i in range(0, len(direct), _CHUNK):
            active |= sqlitehot.active_sessions(conn, direct[i : i + _CHUNK])
        per_session = _per_session(fresh, _targets(fresh, by_key, active), result)
        if not per_session:
            return result
        ordered = sorted(per_session)
        new_heads: dict[str, int] = {}
        for i in range(0, len(ordered), _CHUNK):
            for session_id, head in sqlitehot.heads(conn, ordered[i : i + _CHUNK]):
                new_heads[session_id] = int(head) + len(per_session[session_id])
        if not new_heads:
            return result
        sqlitehot.set_heads(conn, [(v, k) for k, v in new_heads.items()])
        rows, appended = _fanout_frames(per_session, new_heads, now, result)
        # One statement for the whole batch (not one per session), rows in the same order.
        self.events.record_raw(conn, appended)
        sqlitehot.insert_outbox(conn, rows)
        return result

    async def _fanout_pg(
        self,
        conn: asyncpg.Connection,
        events: Sequence[FanoutEvent],
        now: float,
        delivery_id: str | None,
    ) -> FanoutResult:
        """:meth:`_fanout_tx` on asyncpg: one statement per step, arrays for the many rows."""
        if delivery_id is not None and not await pghot.claim_delivery(
            conn, f"delivery:{delivery_id}", now
        ):
            raise AlreadyExistsError("delivery already processed (replay)")
        result = FanoutResult()
        ids = list(dict.fromkeys(ev.event_id for ev in events))
        claimed = await pghot.claim_events(conn, ids, now)
        fresh = _split_fresh(events, {i for i in ids if i not in claimed}, result)
        keys = list(dict.fromkeys(k for ev in fresh for k in ev.keys))
        by_key: dict[str, list[str]] = {}
        for key, session_id in await pghot.subscribers(conn, keys):
            by_key.setdefault(key, []).append(session_id)
        direct = list(dict.fromkeys(ev.session_id for ev in fresh if ev.session_id))
        active = await pghot.active_sessions(conn, direct)
        per_session = _per_session(fresh, _targets(fresh, by_key, active), result)
        if not per_session:
            return result
        new_heads = await pghot.advance_heads(
            conn, [(session_id, len(per_session[session_id])) for session_id in sorted(per_session)]
        )
        if not new_heads:
            return result
        outbox, rows = _fanout_frames(per_session, new_heads, now, result)
        await self.events.record_pg(conn, rows, outbox)
        return result

    async def _fanout_my(
        self,
        cur: Any,
        events: Sequence[FanoutEvent],
        now: float,
        delivery_id: str | None,
    ) -> FanoutResult:
        """:meth:`_fanout_tx` on asyncmy, statement for statement."""
        if delivery_id is not None and not await myhot.claim_delivery(
            cur, f"delivery:{delivery_id}", now
        ):
            raise AlreadyExistsError("delivery already processed (replay)")
        result = FanoutResult()
        ids = list(dict.fromkeys(ev.event_id for ev in events))
        fresh = _split_fresh(events, await myhot.seen_events(cur, ids), result)
        await myhot.claim_events(cur, [ev.event_id for ev in fresh], now)
        keys = list(dict.fromkeys(k for ev in fresh for k in ev.keys))
        by_key: dict[str, list[str]] = {}
        for key, session_id in await myhot.subscribers(cur, keys):
            by_key.setdefault(key, []).append(session_id)
        direct = list(dict.fromkeys(ev.session_id for ev in fresh if ev.session_id))
        active = await myhot.active_sessions(cur, direct)
        per_session = _per_session(fresh, _targets(fresh, by_key, active), result)
        if not per_session:
            return result
        new_heads = {
            session_id: head + len(per_session[session_id])
            for session_id, head in await myhot.lock_heads(cur, sorted(per_session))
        }
        if not new_heads:
            return result
        await myhot.set_heads(cur, list(new_heads.items()))
        outbox, rows = _fanout_frames(per_session, new_heads, now, result)
        await myhot.insert_frames(cur, outbox)
        await self.events.record_my(cur, rows)
        return result

    def _fanout_tx(
        self,
        conn: Connection,
        events: Sequence[FanoutEvent],
        now: float,
        delivery_id: str | None = None,
    ) -> FanoutResult:
        if delivery_id is not None:
            self._claim_delivery(conn, delivery_id, now)
        result = FanoutResult()
        fresh = self._claim_events(conn, events, now, result)
        targets = self._resolve_targets(conn, fresh)
        per_session = _per_session(fresh, targets, result)
        if not per_session:
            return result
        heads = self._allocate(conn, {k: len(v) for k, v in per_session.items()})
        rows: list[dict[str, Any]] = []
        for session_id, evs in per_session.items():
            if session_id not in heads:
                continue  # closed between lookup and lock
            first = heads[session_id] - len(evs) + 1
            frames = [
                StoredFrame(first + i, with_seq(first + i, ev.template)) for i, ev in enumerate(evs)
            ]
            result.frames[session_id] = frames
            self._record_frames(conn, session_id, frames, now)
            rows.extend(
                {"session_id": session_id, "seq": f.seq, "created_at": now, "payload": f.payload}
                for f in frames
            )
        for i in range(0, len(rows), _CHUNK):
            conn.execute(_INSERT_OUTBOX, rows[i : i + _CHUNK])
        return result

    @staticmethod
    def _claim_events(
        conn: Connection, events: Sequence[FanoutEvent], now: float, result: FanoutResult
    ) -> list[FanoutEvent]:
        ids = list(dict.fromkeys(ev.event_id for ev in events))
        seen: set[str] = set()
        for i in range(0, len(ids), _CHUNK):
            rows = conn.execute(
                sa.select(_PE.c.event_id).where(_PE.c.event_id.in_(ids[i : i + _CHUNK]))
            )
            seen.update(r[0] for r in rows)
        fresh = _split_fresh(events, seen, result)
        if fresh:
            conn.execute(
                _PE.insert(), [{"event_id": ev.event_id, "processed_at": now} for ev in fresh]
            )
        return fresh

    def _resolve_targets(
        self, conn: Connection, events: Sequence[FanoutEvent]
    ) -> dict[str, list[str]]:
        keys = list(dict.fromkeys(k for ev in events for k in ev.keys))
        by_key: dict[str, list[str]] = {}
        for i in range(0, len(keys), _CHUNK):
            for key, session_id in conn.execute(self._subscribers_query(keys[i : i + _CHUNK])):
                by_key.setdefault(key, []).append(session_id)
        direct = [ev.session_id for ev in events if ev.session_id]
        active: set[str] = set()
        if direct:
            rows = conn.execute(
                sa.select(_S.c.id).where(_S.c.id.in_(direct), _S.c.state == schema.ACTIVE)
            )
            active = {r[0] for r in rows}
        return _targets(events, by_key, active)

    def _allocate(self, conn: Connection, counts: Mapping[str, int]) -> dict[str, int]:
        """Advance head_seq of each session by its count; return the new heads."""
        ids = sorted(counts)
        heads: dict[str, int] = {}
        for i in range(0, len(ids), _CHUNK):
            query = (
                sa.select(_S.c.id, _S.c.head_seq)
                .where(_S.c.id.in_(ids[i : i + _CHUNK]), _S.c.state == schema.ACTIVE)
                .order_by(_S.c.id)
            )
            if not self._sqlite:
                query = query.with_for_update()
            for session_id, head in conn.execute(query):
                heads[session_id] = int(head) + counts[session_id]
        if heads:
            conn.execute(_SET_HEAD, [{"b_id": k, "b_head": v} for k, v in heads.items()])
        return heads

    @staticmethod
    def _claim_delivery(conn: Connection, delivery_id: str, now: float) -> None:
        # First statement of its transaction: a unique violation (a replay, or a
        # concurrent request with the same id) aborts the transaction before it wrote anything.
        try:
            conn.execute(_PE.insert(), {"event_id": f"delivery:{delivery_id}", "processed_at": now})
        except IntegrityError:
            raise AlreadyExistsError("delivery already processed (replay)") from None

    async def seen_delivery(self, delivery_id: str) -> bool:
        """Record a webhook delivery id; True when it had been recorded before (a replay)."""
        now = self._clock()
        try:
            await self._db.write(lambda conn: self._claim_delivery(conn, delivery_id, now))
        except AlreadyExistsError:
            return True
        return False

    async def delivery_recorded(self, delivery_id: str) -> bool:
        """Whether a webhook delivery id has been recorded (read only)."""
        stmt = sa.select(_PE.c.event_id).where(_PE.c.event_id == f"delivery:{delivery_id}")
        return await self._db.read(lambda conn: conn.execute(stmt).first() is not None)

    async def forget_processed(self, older_than: float) -> int:
        """Drop processed event ids older than ``older_than`` seconds (dedup window)."""
        stmt = _PE.delete().where(_PE.c.processed_at < self._clock() - older_than)
        return await self._db.write(lambda conn: conn.execute(stmt).rowcount or 0)

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
        row = {
            "source": source,
            "partition": partition,
            "offset": offset,
            "reason": reason,
            "payload": payload,
            "headers": json.dumps(dict(headers or {})),
            "created_at": self._clock(),
        }
        await self._db.write(lambda conn: conn.execute(schema.dead_letters.insert(), row))

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        d = schema.dead_letters
        stmt = sa.select(d).order_by(d.c.id).limit(limit)
        return await self._db.read(lambda conn: [dict(r) for r in conn.execute(stmt).mappings()])

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
