"""Idempotency keys on writes, remembered in the session database (SQLite, PostgreSQL, MariaDB).

Two registries stand for two replicas: each has its own SessionStore (engine, pool)
on one database, so the race between two calls with one key is decided by the
database, not by a lock in this process.
"""

# ruff: noqa: S608

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from talkwire.connectors.base import CallContext
from talkwire.connectors.errors import BackendError, RejectedInputError
from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.idempotency import SqlIdempotencyStore
from talkwire.server.store import SessionStore
from tests.connectors.conftest import FakeClock
from tests.support.databases import temp_database

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]
DDL = {
    "sqlite": "CREATE TABLE {t} (id INTEGER PRIMARY KEY, customer_id TEXT, subject TEXT)",
    "postgresql": "CREATE TABLE {t} (id SERIAL PRIMARY KEY, customer_id TEXT, subject TEXT)",
    "mariadb": "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, customer_id VARCHAR(64),"
    " subject VARCHAR(200))",
}


class Backend:
    def __init__(self, kind: str, url: str, table: str) -> None:
        self.kind, self.url, self.table = kind, url, table

    def sections(self) -> dict[str, Any]:
        returning = "" if self.kind == "mariadb" else " RETURNING id AS ticket_id"
        return {
            "crm": {
                "type": "sql",
                "url": self.url,
                "operations": {
                    "open_ticket": {
                        "sql": f"INSERT INTO {self.table} (customer_id, subject) "
                        f"VALUES (:user_customer_id, :subject){returning}",
                        "params": {"subject": "string"},
                        "write": True,
                        "result": "object",
                    },
                    "fail": {
                        "sql": f"INSERT INTO {self.table} (id, subject) VALUES (:id, :subject)",
                        "params": {"id": "integer", "subject": "string"},
                        "write": True,
                    },
                },
            }
        }

    async def rows(self) -> list[tuple[Any, ...]]:
        engine = create_async_engine(self.url)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(text(f"SELECT id, subject FROM {self.table}"))
                return [tuple(r) for r in result]
        finally:
            await engine.dispose()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind = request.param
    async with temp_database(kind, tmp_path) as url:
        table = f"tickets_{uuid.uuid4().hex[:8]}"
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text(DDL[kind].format(t=table)))
        await engine.dispose()
        yield Backend(kind, url, table)


def _ctx(key: str | None, subject: str = "alice") -> CallContext:
    return CallContext(subject=subject, claims={"customer_id": "c-1"}, idempotency_key=key)


async def _replica(
    url: str, sections: dict[str, Any], clock: FakeClock | None = None
) -> tuple[SessionStore, ConnectorRegistry]:
    store = SessionStore(url)
    await store.start()
    keys = SqlIdempotencyStore(store.executor, clock=clock) if clock else None
    reg = ConnectorRegistry(sections, idempotency=keys or SqlIdempotencyStore(store.executor))
    await reg.__aenter__()
    return store, reg


async def test_two_concurrent_calls_with_one_key_write_once(backend: Backend) -> None:
    a_store, a = await _replica(backend.url, backend.sections())
    b_store, b = await _replica(backend.url, backend.sections())
    try:
        params = {"subject": "printer on fire"}
        first, second = await asyncio.gather(
            a.invoke("crm", "open_ticket", params, _ctx("k1")),
            b.invoke("crm", "open_ticket", params, _ctx("k1")),
        )
        assert first == second
        assert len(await backend.rows()) == 1
        # Later calls (either replica) replay the first result; another key writes again.
        assert await a.invoke("crm", "open_ticket", params, _ctx("k1")) == first
        assert await b.invoke("crm", "open_ticket", params, _ctx("k1")) == first
        await a.invoke("crm", "open_ticket", params, _ctx("k2"))
        await a.invoke("crm", "open_ticket", params, _ctx(None))
        assert len(await backend.rows()) == 3
    finally:
        for reg, store in ((a, a_store), (b, b_store)):
            await reg.aclose()
            await store.aclose()


async def test_keys_are_per_caller_and_per_parameters(backend: Backend) -> None:
    store, reg = await _replica(backend.url, backend.sections())
    try:
        await reg.invoke("crm", "open_ticket", {"subject": "a"}, _ctx("k1", "alice"))
        await reg.invoke("crm", "open_ticket", {"subject": "a"}, _ctx("k1", "bob"))
        assert len(await backend.rows()) == 2
        with pytest.raises(RejectedInputError, match="different parameters") as err:
            await reg.invoke("crm", "open_ticket", {"subject": "b"}, _ctx("k1", "alice"))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.connector == "crm"
        assert len(await backend.rows()) == 2
    finally:
        await reg.aclose()
        await store.aclose()


async def test_a_failed_write_releases_its_key(backend: Backend) -> None:
    store, reg = await _replica(backend.url, backend.sections())
    try:
        await reg.invoke("crm", "fail", {"id": 7, "subject": "first"}, _ctx(None))
        with pytest.raises(BackendError):  # duplicate primary key: the write failed
            await reg.invoke("crm", "fail", {"id": 7, "subject": "x"}, _ctx("k9"))
        await reg.invoke("crm", "fail", {"id": 8, "subject": "first"}, _ctx(None))
        with pytest.raises(BackendError):  # the same key runs again, and fails again
            await reg.invoke("crm", "fail", {"id": 7, "subject": "x"}, _ctx("k9"))
    finally:
        await reg.aclose()
        await store.aclose()


async def test_keys_are_forgotten_after_the_window(backend: Backend) -> None:
    clock = FakeClock(1_000_000.0)
    store, reg = await _replica(backend.url, backend.sections(), clock)
    try:
        params = {"subject": "s"}
        await reg.invoke("crm", "open_ticket", params, _ctx("k1"))
        clock.advance(3600)
        await reg.invoke("crm", "open_ticket", params, _ctx("k1"))
        assert len(await backend.rows()) == 1
        clock.advance(24 * 3600)
        await reg.invoke("crm", "open_ticket", params, _ctx("k1"))
        assert len(await backend.rows()) == 2
        assert await SqlIdempotencyStore(store.executor, clock=clock).forget_expired() == 0
        clock.advance(25 * 3600)
        assert await SqlIdempotencyStore(store.executor, clock=clock).forget_expired() == 1
    finally:
        await reg.aclose()
        await store.aclose()
