"""The SessionStore's tables (SQLAlchemy Core; SQLite, PostgreSQL, MySQL/MariaDB)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = [
    "SCHEMA_VERSION",
    "conversation_events",
    "dead_letters",
    "handoffs",
    "idempotency_keys",
    "metadata",
    "outbound_dead",
    "outbound_pending",
    "outbox",
    "processed_events",
    "schema_info",
    "sessions",
    "subscriptions",
    "time_columns",
]

# 1: sessions, frames, subscriptions, dedup, dead letters.
# 2: conversation events and the outbound outbox (new tables only: create_all adds them).
# 3: timestamps as DOUBLE on MySQL/MariaDB (were single-precision FLOAT).
# 4: SQLite's outbound pending table WITHOUT ROWID and without its session index.
SCHEMA_VERSION = 4

metadata = sa.MetaData()


class _Bytes(sa.LargeBinary):
    """``bytes`` passed to the driver as they are (no per-row bind processing)."""

    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None


_Blob = _Bytes().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
_Text = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# Unix seconds as a double everywhere: MySQL/MariaDB's plain FLOAT is single precision
# (about 128 s of resolution at today's timestamps).
_Time = sa.Float().with_variant(mysql.DOUBLE(), "mysql", "mariadb")
_Seq = sa.BigInteger()

# Session states (mirrors talkwire.v1.SessionState).
ACTIVE = 1
CLOSED = 2
EXPIRED = 3

schema_info = sa.Table(
    "talkwire_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)

sessions = sa.Table(
    "talkwire_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("subject", sa.String(255), nullable=False, index=True),
    sa.Column("identity", _Text, nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(64), nullable=False, default=""),
    sa.Column("locale", sa.String(35), nullable=False, default=""),
    sa.Column("attributes", _Text, nullable=False),
    sa.Column("state", sa.SmallInteger, nullable=False, default=ACTIVE),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("last_active_at", _Time, nullable=False, index=True),
    sa.Column("head_seq", _Seq, nullable=False, default=0),
    sa.Column("acked_seq", _Seq, nullable=False, default=0),
    # Frames with seq <= floor_seq are gone (acked or pruned).
    sa.Column("floor_seq", _Seq, nullable=False, default=0),
    sa.Column("dialogue", _Text, nullable=False),
    sa.Column("replica", sa.String(128), nullable=True),
)

outbox = sa.Table(
    "talkwire_outbox",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("seq", _Seq, primary_key=True, autoincrement=False),
    sa.Column("created_at", _Time, nullable=False, index=True),
    sa.Column("payload", _Blob, nullable=False),
)

subscriptions = sa.Table(
    "talkwire_subscriptions",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("created_at", _Time, nullable=False),
    sa.Index("ix_talkwire_subscriptions_session", "session_id"),
)

processed_events = sa.Table(
    "talkwire_processed_events",
    metadata,
    sa.Column("event_id", sa.String(255), primary_key=True),
    sa.Column("processed_at", _Time, nullable=False, index=True),
)

dead_letters = sa.Table(
    "talkwire_dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("source", sa.String(255), nullable=False),
    sa.Column("partition", sa.Integer, nullable=True),
    sa.Column("offset", sa.BigInteger, nullable=True),
    sa.Column("reason", _Text, nullable=False),
    sa.Column("payload", _Blob, nullable=True),
    sa.Column("headers", _Text, nullable=False),
    sa.Column("created_at", _Time, nullable=False),
)

_EventId = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Conversation events (talkwire.v1.ConversationEvent), kept for transcripts. ``id`` orders a
# session's events: every writer of a session's events holds that session's row lock (or
# SQLite's single writer), so ids of one session grow in commit order.
conversation_events = sa.Table(
    "talkwire_conversation_events",
    metadata,
    sa.Column("id", _EventId, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("seq", _Seq, nullable=False, default=0),
    sa.Column("created_at", _Time, nullable=False),
    # frame.appended: the ConverseResponse; turn.received: the ConverseRequest; else JSON.
    sa.Column("body", _Blob, nullable=False),
    sa.Index("ix_talkwire_conversation_events_session", "session_id", "id"),
)

# The outbound outbox: one row per (sink, event) not yet delivered, written in the
# transaction that wrote the event; the relay deletes it once the sink has the event.
outbound_pending = sa.Table(
    "talkwire_outbound_pending",
    metadata,
    sa.Column("sink", sa.String(64), primary_key=True),
    sa.Column("event_id", _EventId, primary_key=True, autoincrement=False),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    # SQLite: the primary key is the table (no rowid b-tree beside it), and no session
    # index: its relay reads in key order (one process, in-process claims).
    sqlite_with_rowid=False,
)


def _not_sqlite(
    ddl: Any,
    target: Any,
    bind: Any,
    tables: Any = None,
    state: Any = None,
    *,
    dialect: sa.Dialect,
    **kw: Any,
) -> bool:
    return dialect.name != "sqlite"


sa.Index(
    "ix_talkwire_outbound_pending_session",
    outbound_pending.c.sink,
    outbound_pending.c.session_id,
    outbound_pending.c.event_id,
).ddl_if(callable_=_not_sqlite)

# Deliveries given up on (attempts or age exhausted, or refused by the receiver).
outbound_dead = sa.Table(
    "talkwire_outbound_dead",
    metadata,
    sa.Column("sink", sa.String(64), primary_key=True),
    sa.Column("event_id", _EventId, primary_key=True, autoincrement=False),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("reason", _Text, nullable=False),
    sa.Column("dead_at", _Time, nullable=False),
)

# Idempotency keys of connector writes (talkwire.server.idempotency); ``id`` hashes
# connector, operation, caller and key. ``result`` is the first call's JSON result.
idempotency_keys = sa.Table(
    "talkwire_idempotency_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("result", _Text, nullable=True),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("expires_at", _Time, nullable=False, index=True),
)

# Handoff states of a session (``bot`` has no row, or a row in state BOT).
HANDOFF_BOT = 0
HANDOFF_QUEUED = 1
HANDOFF_AGENT = 2

handoffs = sa.Table(
    "talkwire_handoffs",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("state", sa.SmallInteger, nullable=False, default=HANDOFF_BOT),
    sa.Column("queue", sa.String(64), nullable=False, default=""),
    sa.Column("reason", _Text, nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    # When the session entered its current queue (orders the queue).
    sa.Column("queued_at", _Time, nullable=False),
    sa.Column("agent", sa.String(255), nullable=True),
    sa.Column("agent_name", sa.String(255), nullable=False, default=""),
    # The last sign of life of the agent holding it (the timeout back to the queue).
    sa.Column("agent_seen_at", _Time, nullable=True),
    # Frames above pin_seq stay retained while queued or with an agent (user acks
    # stop below it), so the agent's stream can replay them.
    sa.Column("pin_seq", _Seq, nullable=False, default=0),
    # JSON: what the bot knew (slots, results, last turns) when it handed off.
    sa.Column("context", _Text, nullable=False),
    sa.Column("updated_at", _Time, nullable=False),
    sa.Index("ix_talkwire_handoffs_queue", "state", "queue", "queued_at"),
)


def time_columns() -> list[sa.Column[Any]]:
    """Every timestamp column (Unix seconds, a double)."""
    return [c for t in metadata.sorted_tables for c in t.columns if c.type is _Time]
