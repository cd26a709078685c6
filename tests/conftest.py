"""Shared fixtures: configs, an in-process server, tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from talkwire.server.app import Application
from talkwire.server.config import Config, load_config
from tests.support.broker import TansuBroker

TOKENS = {
    "alice-token": {"subject": "alice", "claims": {"customer_id": "c-100"}},
    "bob-token": {"subject": "bob", "claims": {"customer_id": "c-200"}},
    "admin-token": {"subject": "ops", "roles": ["admin"]},
}

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql+aiomysql://root@127.0.0.1:3306/test"


def make_config(tmp_path: Path, **sections: Any) -> Config:
    """A test config: loopback port 0, SQLite store in tmp_path, static tokens, echo bot.

    Unless ``policy`` is given (or ``demo`` set), every key may be subscribed.
    """
    raw: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "handler": "echo", "sweep_interval": 3600},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"},
        "auth": {"kind": "static", "tokens": TOKENS},
        "demo": False,
    }
    if not sections.get("demo") and "policy" not in sections:
        # No policy section denies every subscription: the echo tests allow any key
        # (the demo ships its own policy; a test's own policy replaces this one).
        raw["policy"] = {"default": "allow"}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return load_config(None, env={}, overrides=raw)


AppFactory = Callable[..., "Application"]


@pytest.fixture
async def make_app(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start Applications on demand; all are closed at teardown."""
    started: list[Application] = []

    async def factory(config: Config | None = None, **kwargs: Any) -> Application:
        app = Application(config or make_config(tmp_path), **kwargs)
        await app.__aenter__()
        started.append(app)
        return app

    yield factory
    for app in reversed(started):
        await app.aclose()


@pytest.fixture
async def app(make_app: Callable[..., Any]) -> Application:
    result: Application = await make_app()
    return result


@pytest.fixture
async def channel(app: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(app.target) as ch:
        yield ch


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuBroker]:
    """One Tansu broker for the whole run; failing to start FAILS the tests that need it."""
    broker = TansuBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the history checker's counts of every fault test (CI logs show the zeros)."""
    from tests.support.history import SUMMARIES

    if SUMMARIES:
        terminalreporter.section("history checker")
        for line in dict.fromkeys(SUMMARIES):
            terminalreporter.write_line(line)
