"""The schema on SQLite, PostgreSQL and MariaDB: timestamps keep sub-second precision,
and a database made by an older talkwire is upgraded in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from talkwire.server import schema
from talkwire.server.identity import Identity
from talkwire.server.outbound.outbox import OutboundOutbox
from talkwire.server.outbound.service import recorder_for
from talkwire.server.outbound.settings import OutboundSettings
from talkwire.server.store import SessionStore
from tests.outbound.helpers import converse, reply, user_message
from tests.store.test_store import BACKENDS, Clock
from tests.support.databases import temp_database

ALICE = Identity("alice", {})


@pytest.mark.parametrize("backend", BACKENDS)
async def test_timestamps_keep_sub_second_precision(backend: str, tmp_path: Path) -> None:
    clock = Clock()
    clock.now = 1_800_000_000.25
    async with temp_database(backend, tmp_path) as url, SessionStore(url, clock=clock) as store:
        record, _ = await store.create_session(ALICE)
        found = await store.get_session(record.id)
        assert found is not None
        assert found.last_active_at == pytest.approx(1_800_000_000.25, abs=1e-3)


@pytest.mark.mariadb
async def test_mariadb_schema_2_timestamps_are_widened_to_double(tmp_path: Path) -> None:
    async with temp_database("mariadb", tmp_path) as url:
        async with SessionStore(url) as store:
            # What talkwire up to schema 2 created: single-precision FLOAT columns.
            def downgrade(conn: sa.Connection) -> None:
                for column in schema.time_columns():
                    null = "NULL" if column.nullable else "NOT NULL"
                    conn.exec_driver_sql(
                        f"ALTER TABLE {column.table.name} MODIFY {column.name} FLOAT {null}"
                    )
                conn.execute(schema.schema_info.update().values(version=2))

            await store.transaction(downgrade)
        async with SessionStore(url) as store:
            assert await store.upgrade() == schema.SCHEMA_VERSION

            def types(conn: sa.Connection) -> set[str]:
                rows = conn.exec_driver_sql(
                    "SELECT DATA_TYPE FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME IN "
                    "('created_at', 'last_active_at', 'expires_at', 'updated_at')"
                )
                return {str(r[0]).lower() for r in rows}

            assert await store.reading(types) == {"double"}


async def test_sqlite_schema_3_outbox_is_rebuilt_keeping_every_pending_row(
    tmp_path: Path,
) -> None:
    settings = OutboundSettings.from_config(
        {"hold": {"type": "webhook", "url": "https://example.invalid/", "secret": "s" * 32}}
    )
    url = f"sqlite+aiosqlite:///{tmp_path}/v3.db"
    table = schema.outbound_pending.name
    async with SessionStore(url, events=recorder_for(settings)) as store:
        sid = await converse(store, 3)

        # What talkwire up to schema 3 created: a rowid table with a session index.
        def downgrade(conn: sa.Connection) -> None:
            conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO old")
            conn.exec_driver_sql(
                f"CREATE TABLE {table} (sink VARCHAR(64) NOT NULL, event_id INTEGER NOT NULL, "
                "session_id VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL, "
                "PRIMARY KEY (sink, event_id))"
            )
            conn.exec_driver_sql(
                f"CREATE INDEX ix_talkwire_outbound_pending_session ON {table} "
                "(sink, session_id, event_id)"
            )
            conn.exec_driver_sql(f"INSERT INTO {table} SELECT * FROM old")  # noqa: S608
            conn.exec_driver_sql("DROP TABLE old")
            conn.execute(schema.schema_info.update().values(version=3))

        await store.transaction(downgrade)
    async with SessionStore(url, events=recorder_for(settings)) as store:
        assert await store.upgrade() == schema.SCHEMA_VERSION
        outbox = OutboundOutbox(store.executor)
        expected = [e.id for e in await outbox.session_events(sid)]
        assert len(expected) == 7
        round_ = await outbox.next_events("hold", 10, 100)
        assert [e.id for e in round_[sid]] == expected

        def ddl(conn: sa.Connection) -> list[str]:
            rows = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL", (table,)
            )
            return [str(r[0]) for r in rows]

        (create,) = await store.reading(ddl)  # the session index is gone
        assert "WITHOUT ROWID" in create
        await store.append(sid, [reply("after the upgrade")], turn=user_message("more"))
        assert len((await outbox.next_events("hold", 10, 100))[sid]) == 9
