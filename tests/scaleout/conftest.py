"""Fixtures: a dedicated PostgreSQL database, a Redis key prefix and three replicas.

Nothing is skipped: when PostgreSQL or Redis is down these fixtures raise and
the tests fail.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from talkwire.server.store import SessionStore
from tests.scaleout.cluster import Replica, replica_config

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def _create_db(name: str) -> str:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    # Create the schema once, before three processes race to create it.
    async with SessionStore(url) as store:
        await store.upgrade()
    return url


async def _drop_db(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _redis_cleanup(prefix: str) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        await client.ping()  # fail here, loudly, when Redis is down
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def scale_db() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped at the end)."""
    name = f"talkwire_scale_{secrets.token_hex(4)}"
    url = asyncio.run(_create_db(name))
    try:
        yield url
    finally:
        asyncio.run(_drop_db(name))


@pytest.fixture(scope="session")
def bus_prefix() -> Iterator[str]:
    """A Redis key/channel prefix unique to this run."""
    prefix = f"talkwire-test-{secrets.token_hex(4)}:"
    asyncio.run(_redis_cleanup(prefix))
    yield prefix
    asyncio.run(_redis_cleanup(prefix))


async def _start_cluster(store_url: str, prefix: str, workdir: Path) -> dict[str, Replica]:
    run = secrets.token_hex(3)
    replicas = {
        name: Replica(name, workdir, replica_config(f"{name}-{run}", store_url, prefix))
        for name in ("a", "b", "c")
    }
    try:
        await asyncio.gather(*(r.start() for r in replicas.values()))
    except BaseException:
        await _stop_cluster(replicas)
        raise
    return replicas


async def _stop_cluster(replicas: dict[str, Replica]) -> None:
    await asyncio.gather(*(r.stop() for r in replicas.values()), return_exceptions=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    scale_db: str, bus_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Replica]]:
    """Replicas ``a``, ``b`` and ``c`` shared by a module's tests (none of which kills one)."""
    replicas = await _start_cluster(scale_db, bus_prefix, tmp_path_factory.mktemp("cluster"))
    yield replicas
    await _stop_cluster(replicas)


@pytest_asyncio.fixture(loop_scope="module")
async def fresh_cluster(
    scale_db: str, bus_prefix: str, tmp_path: Path
) -> AsyncIterator[dict[str, Replica]]:
    """Three replicas of one test's own (for tests that kill one)."""
    replicas = await _start_cluster(scale_db, bus_prefix, tmp_path)
    yield replicas
    await _stop_cluster(replicas)
