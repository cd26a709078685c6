"""Shared pieces of the fault suite: sizes, configs, recording readers and producers.

Every test has a small CI version; ``TALKWIRE_LARGE=1`` runs the large one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from talkwire.clients import AdminClient, ChatClient
from talkwire.clients.chat import ChatSession, ConnectionEvent, ReconnectPolicy
from talkwire.clients.errors import RpcError, SessionClosed, TalkwireError
from tests.conftest import TOKENS
from tests.support.history import History, Report

LARGE = os.environ.get("TALKWIRE_LARGE") == "1"
ALICE = "alice-token"
ADMIN = "admin-token"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"

#: Fast, patient reconnects for tests: the server is back within seconds.
POLICY = ReconnectPolicy(initial_backoff=0.05, max_backoff=0.5, max_attempts=None, max_elapsed=90)

# A publish that reached a server while it shut down may end CANCELLED (grpc cancels
# calls it had accepted but not yet handed to a handler): its outcome is unknown, and
# retrying with the same event id is safe (the router deduplicates).
RETRY_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


def scale(small: Any, large: Any) -> Any:
    return large if LARGE else small


def base_config(store_url: str, **server: Any) -> dict[str, Any]:
    """A ``talkwire serve`` config dict: echo handler, static tokens, no demo."""
    return {
        "server": {"handler": "echo", "sweep_interval": 3600, "grace_period": 2, **server},
        "store": {"url": store_url},
        "auth": {"kind": "static", "tokens": TOKENS},
        "policy": {"default": "allow"},
        "demo": False,
    }


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def print_report(report: Report, label: str) -> None:
    print(report.summary(label))


# -- recording readers -------------------------------------------------------------


class Reader:
    """Iterates one ChatSession, recording every frame delivered into the history."""

    def __init__(self, session: ChatSession, history: History) -> None:
        self.session = session
        self.history = history
        self.error: BaseException | None = None
        self.delivered = 0
        self.latencies: list[float] = []
        self.sent_at: dict[str, float] | None = None
        self.gate: asyncio.Event | None = None  # when set to a cleared event, reading pauses
        history.session(session.session_id, first_seq=session.last_seq + 1)
        self.task = asyncio.create_task(self._run(), name=f"reader-{session.session_id}")

    @property
    def sid(self) -> str:
        return self.session.session_id

    async def _run(self) -> None:
        try:
            async for frame in self.session:
                now = time.monotonic()
                self.history.record_frame(self.sid, frame)
                kind = frame.WhichOneof("frame")
                if kind == "subscription" and frame.subscription.active:
                    self.history.subscribed(self.sid, frame.subscription.key, at=now)
                if kind == "update" and self.sent_at is not None:
                    at = self.sent_at.get(frame.update.event_id)
                    if at is not None:
                        self.latencies.append(now - at)
                if frame.seq:
                    self.delivered += 1
                if self.gate is not None:
                    await self.gate.wait()
        except SessionClosed:
            pass
        except TalkwireError as exc:
            self.error = exc

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def open_subscribed(
    client: ChatClient, history: History, keys: Sequence[str], *, timeout: float = 30
) -> Reader:
    """Open a session, subscribe it to ``keys`` and wait until the server confirmed them."""
    session = await client.open(channel="test")
    reader = Reader(session, history)
    for key in keys:
        await session.subscribe(key)
    await wait_subscribed(history, reader.sid, keys, timeout=timeout)
    return reader


async def wait_subscribed(
    history: History, sid: str, keys: Sequence[str], *, timeout: float = 30
) -> None:
    async with asyncio.timeout(timeout):
        while not all(k in history._subs.get(sid, {}) for k in keys):
            await asyncio.sleep(0.01)


# -- producers -------------------------------------------------------------------


class Producer:
    """Publishes events to keys through AdminService.Publish, recording them in a history.

    One task per key group publishes sequentially (so per-key order is defined).
    A publish that fails with a retriable status is recorded as "maybe" and
    retried with the SAME event id (the router deduplicates), until it succeeds;
    then it is recorded as produced. ``targets()`` gives the admin target to use
    (it may change during the test, e.g. after a SIGTERM).
    """

    def __init__(
        self,
        history: History,
        targets: Callable[[], Sequence[str]],
        keys: Sequence[str],
        *,
        interval: float = 0.01,
        text: str = "",
        tasks: int = 0,
    ) -> None:
        self.history = history
        self.targets = targets
        self.keys = list(keys)
        self.interval = interval
        self.text = text
        self.sent_at: dict[str, float] = {}
        self.published = 0
        self.retries = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._clients: dict[str, AdminClient] = {}
        n = tasks or len(self.keys)
        groups = [self.keys[i::n] for i in range(n)]
        self._tasks = [asyncio.create_task(self._run(g)) for g in groups if g]

    def _admin(self, target: str) -> AdminClient:
        client = self._clients.get(target)
        if client is None:
            client = AdminClient(target, token=ADMIN, timeout=5.0)
            self._clients[target] = client
        return client

    async def publish_one(self, key: str, event_id: str) -> None:
        started = time.monotonic()
        self.sent_at[event_id] = started
        attempt = 0
        while True:
            targets = list(self.targets())
            target = targets[attempt % len(targets)]
            try:
                await self._admin(target).publish(
                    key=key, event_id=event_id, text=self.text or event_id, type="test"
                )
            except RpcError as exc:
                if exc.code not in RETRY_CODES:
                    self.failures.append(f"{event_id}: {exc}")
                    self.history.maybe_produced(event_id, key, at=started)
                    return
                self.history.maybe_produced(event_id, key, at=started)
                self.retries += 1
                attempt += 1
                if attempt > 400:
                    self.failures.append(f"{event_id}: gave up after {attempt} attempts")
                    return
                await asyncio.sleep(0.05)
                continue
            self.history.produced(event_id, key, at=started)
            self.published += 1
            return

    async def _run(self, keys: Sequence[str]) -> None:
        n = 0
        while not self._stop.is_set():
            for key in keys:
                n += 1
                await self.publish_one(key, f"{key}#{n}-{uuid.uuid4().hex[:6]}")
            if self.interval:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for client in self._clients.values():
            await client.aclose()


async def wait_caught_up(history: History, *, timeout: float = 60.0) -> Report:
    """Wait until no session misses an acknowledged event (or time out); return the report."""
    deadline = time.monotonic() + timeout
    while True:
        report = history.check()
        if report.total("lost") == 0 or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.2)


def chat_client(target: str, **kwargs: Any) -> ChatClient:
    kwargs.setdefault("reconnect", POLICY)
    # Acks are one store write each; the library default (0.5 s) with hundreds of
    # sessions on one SQLite writer starves the publishers (see the report).
    kwargs.setdefault("ack_interval", 2.0)
    return ChatClient(target, token=ALICE, **kwargs)


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test (dropped afterwards); yields its SQLAlchemy URL."""
    asyncpg = pytest.importorskip("asyncpg")
    name = f"talkwire_rel_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def on_events(sink: list[ConnectionEvent]) -> Callable[[ConnectionEvent], None]:
    return sink.append
