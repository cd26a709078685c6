"""Throw-away databases on the machine's PostgreSQL and MariaDB (never skipped: a test
that needs one fails when the server is down)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomysql
import asyncpg

__all__ = ["MARIADB", "PG_DSN", "temp_database"]

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@asynccontextmanager
async def temp_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """Yield a SQLAlchemy URL of a fresh, empty database; drop it afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    name = f"talkwire_t_{secrets.token_hex(4)}"
    if backend == "postgresql":
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
            yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
        return
    if backend == "mariadb":
        conn = await aiomysql.connect(**MARIADB)
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            yield f"mysql+asyncmy://root@127.0.0.1:3306/{name}"
        finally:
            async with conn.cursor() as cur:
                await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            conn.close()
        return
    raise ValueError(backend)
