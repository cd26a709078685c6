"""The schema on SQLite, PostgreSQL and MariaDB: timestamps keep sub-second precision,
and a database made by an older talkwire is upgraded in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from talkwire.server import schema
from talkwire.server.identity import Identity
from talkwire.server.store import SessionStore
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
