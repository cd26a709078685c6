"""The sql connector on SQLite, PostgreSQL and MariaDB (real servers; unreachable = failure).

Table names are generated identifiers, hence the f-strings in SQL text.
"""

# ruff: noqa: S608

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from talkwire.connectors.base import CallContext
from talkwire.connectors.errors import (
    BackendError,
    ConnectorConfigError,
    ConnectorTimeoutError,
    RejectedInputError,
    ResultNotFoundError,
)
from talkwire.connectors.sql import SqlConnector, classify_sql

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]

DDL = {
    "sqlite": "CREATE TABLE {t} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)",
    "postgresql": "CREATE TABLE {t} (id SERIAL PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)",
    "mariadb": "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(200) NOT NULL,"
    " qty INTEGER)",
}
SLOW = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    "WHERE x < 500000000) SELECT count(*) AS n FROM c",
    "postgresql": "SELECT pg_sleep(5) AS n",
    "mariadb": "SELECT SLEEP(5) AS n",
}


class Db:
    def __init__(self, kind: str, url: str, table: str) -> None:
        self.kind = kind
        self.url = url
        self.table = table

    async def count(self) -> int:
        engine = create_async_engine(self.url)
        try:
            async with engine.connect() as conn:
                return int(
                    (await conn.execute(text(f"SELECT count(*) FROM {self.table}"))).scalar()
                )
        finally:
            await engine.dispose()

    def connector(self, **extra: Any) -> SqlConnector:
        t = self.table
        ops: dict[str, Any] = {
            "get_item": {
                "sql": f"SELECT id, name, qty FROM {t} WHERE id = :id",
                "params": {"id": {"type": "integer"}},
                "result": "row",
            },
            "by_name": {
                "sql": f"SELECT id, name FROM {t} WHERE name = :name ORDER BY id",
                "params": {"name": "string"},
            },
            "all_items": {"sql": f"SELECT id, name FROM {t} ORDER BY id", "row_limit": 3},
            "count": {"sql": f"SELECT count(*) AS n FROM {t}", "result": "value"},
            "must_get": {
                "sql": f"SELECT id, name FROM {t} WHERE id = :id",
                "params": {"id": "integer"},
                "result": "object",
            },
            "mine": {
                "sql": f"SELECT id, name FROM {t} WHERE name = :user_sub",
                "result": "rows",
            },
            "slow": {"sql": SLOW[self.kind], "result": "value", "timeout": 0.5},
        }
        if not extra.get("read_only"):
            ops |= {
                "add_item": {
                    "sql": f"INSERT INTO {t} (name, qty) VALUES (:name, :qty) RETURNING id, name",
                    "params": {"name": "string", "qty": {"type": "integer", "default": 0}},
                    "write": True,
                    "result": "row",
                },
                "set_qty": {
                    "sql": f"UPDATE {t} SET qty = :qty WHERE id = :id",
                    "params": {"id": "integer", "qty": "integer"},
                },
                "insert_with_id": {
                    "sql": f"INSERT INTO {t} (id, name) VALUES (:id, :name)",
                    "params": {"id": "integer", "name": "string"},
                },
            }
        return SqlConnector("db", {"type": "sql", "url": self.url, "operations": ops, **extra})


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    kind = request.param
    url = {
        "sqlite": f"sqlite+aiosqlite:///{tmp_path}/x.db",
        "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        "mariadb": "mysql+aiomysql://root@127.0.0.1:3306/test",
    }[kind]
    table = f"tw_conn_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(DDL[kind].format(t=table)))
            for i, name in enumerate(["alice", "bob", "carol", "dave", "erin"], start=1):
                await conn.execute(
                    text(f"INSERT INTO {table} (name, qty) VALUES (:n, :q)"), {"n": name, "q": i}
                )
        yield Db(kind, url, table)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await engine.dispose()


async def test_read_shapes_and_coercion(db: Db) -> None:
    async with db.connector() as conn:
        assert await conn.invoke("get_item", {"id": "2"}) == {"id": 2, "name": "bob", "qty": 2}
        assert await conn.invoke("get_item", {"id": 99}) is None
        assert await conn.invoke("by_name", {"name": "carol"}) == [{"id": 3, "name": "carol"}]
        assert await conn.invoke("count", {}) == 5
        with pytest.raises(ResultNotFoundError):
            await conn.invoke("must_get", {"id": 99})
        assert await conn.invoke("mine", {}, CallContext(subject="dave")) == [
            {"id": 4, "name": "dave"}
        ]
        with pytest.raises(RejectedInputError, match="sub"):
            await conn.invoke("mine", {})


async def test_row_limit(db: Db) -> None:
    async with db.connector() as conn:
        rows = await conn.invoke("all_items", {})
    assert [r["id"] for r in rows] == [1, 2, 3]


async def test_injection_through_parameters_changes_nothing(db: Db) -> None:
    async with db.connector() as conn:
        for evil in ("1 OR 1=1", f"x'; DROP TABLE {db.table}; --", "' OR '1'='1"):
            assert await conn.invoke("by_name", {"name": evil}) == []
            with pytest.raises(RejectedInputError, match="'id'"):
                await conn.invoke("get_item", {"id": evil})
        got = await conn.invoke("add_item", {"name": f"x'); DELETE FROM {db.table}; --"})
        assert got["name"] == f"x'); DELETE FROM {db.table}; --"
    assert await db.count() == 6


async def test_writes_commit_and_return(db: Db) -> None:
    async with db.connector() as conn:
        created = await conn.invoke("add_item", {"name": "frank", "qty": 7})
        assert created["name"] == "frank"
        assert isinstance(created["id"], int)
        assert await conn.invoke("set_qty", {"id": created["id"], "qty": 9}) == {"rowcount": 1}
        assert (await conn.invoke("get_item", {"id": created["id"]}))["qty"] == 9
        with pytest.raises(BackendError, match="conflicts"):
            await conn.invoke("insert_with_id", {"id": 1, "name": "dup"})
    assert await db.count() == 6


async def test_statement_timeout_then_connector_still_works(db: Db) -> None:
    async with db.connector(pool={"size": 1, "max_overflow": 0}) as conn:
        with pytest.raises(ConnectorTimeoutError):
            await conn.invoke("slow", {})
        assert await conn.invoke("count", {}) == 5


async def raw_update(conn: SqlConnector, table: str) -> None:
    async with conn.engine.connect() as raw:
        await raw.execute(text(f"UPDATE {table} SET qty = 0"))
        await raw.commit()


async def test_read_only_connector_refuses_updates(db: Db) -> None:
    ops = {"bump": {"sql": f"UPDATE {db.table} SET qty = qty + 1", "write": True}}
    with pytest.raises(ConnectorConfigError, match="read_only"):
        SqlConnector("ro", {"url": db.url, "read_only": True, "operations": ops})
    hidden = {"bump": {"sql": f"UPDATE {db.table} SET qty = qty + 1", "write": False}}
    with pytest.raises(ConnectorConfigError, match="write"):
        SqlConnector("ro", {"url": db.url, "operations": hidden})
    async with db.connector(read_only=True) as conn:
        assert await conn.invoke("count", {}) == 5
        # the session itself is read-only on the server, whatever reaches it
        with pytest.raises(Exception, match=r"(?i)read.?only|readonly"):
            await raw_update(conn, db.table)
    assert await db.count() == 5
    async with db.connector() as conn:
        assert (await conn.invoke("get_item", {"id": 1}))["qty"] == 1


@pytest.mark.parametrize(
    ("sql", "write", "multi"),
    [
        ("SELECT * FROM t WHERE a = ':x; DROP TABLE t'", False, False),
        ("select replace(name, 'a', 'b') from t", False, False),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", True, False),
        ("UPDATE t SET a = 1", True, False),
        ("SELECT 1; DROP TABLE t", True, True),
        ("SELECT 1 -- ; DROP TABLE t", False, False),
        ("PRAGMA writable_schema = 1", True, False),
    ],
)
def test_classify_sql(sql: str, write: bool, multi: bool) -> None:
    assert classify_sql(sql) == (write, multi)


def test_config_errors() -> None:
    base = "sqlite+aiosqlite:///:memory:"
    with pytest.raises(ConnectorConfigError, match="one statement"):
        SqlConnector("db", {"url": base, "operations": {"x": {"sql": "SELECT 1; SELECT 2"}}})
    with pytest.raises(ConnectorConfigError, match=r":nope"):
        SqlConnector("db", {"url": base, "operations": {"x": {"sql": "SELECT :nope"}}})
    with pytest.raises(ConnectorConfigError, match="unsupported driver"):
        SqlConnector("db", {"url": "sqlite:///x.db", "operations": {"x": {"sql": "SELECT 1"}}})
