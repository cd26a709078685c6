"""Idempotency keys for write operations, honoured by every connector (SQL included).

A write called with ``CallContext.idempotency_key`` runs **once** per
(connector, operation, caller subject, key) within a window: a later call with
the same key gets the first call's result without touching the backend, and a
concurrent call with the same key waits for the first one and gets its result.
Reusing a key with *different* parameters is refused (``INVALID_ARGUMENT``), as
payment APIs do.

Where keys are remembered is an :class:`IdempotencyStore` injected into the
registry. The server passes one backed by its session database (SQLite,
PostgreSQL, MariaDB: :mod:`talkwire.server.idempotency`), so keys survive
restarts and are shared by replicas; without one the registry keeps them in
memory (:class:`MemoryIdempotencyStore`).

A key's life: ``claim`` inserts a *pending* record (the unique primary key
decides the race between replicas); the winner runs the write and ``complete``
stores its JSON result; a failed write ``release`` s the key so a retry may run
it again. Callers that lose the race poll the record until it is done (bounded
by their deadline). A pending record older than ``stale_after`` (its owner died
mid-call) may be taken over; ``window`` is how long a done record is kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from talkwire.connectors.errors import ConnectorTimeoutError, RejectedInputError

__all__ = [
    "IdempotencyGuard",
    "IdempotencyRecord",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "fingerprint",
    "record_id",
]

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 24 * 3600.0
DEFAULT_STALE_AFTER = 300.0
_WAIT_WITHOUT_DEADLINE = 30.0


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What is remembered for one key: ``pending`` (running) or ``done`` with a JSON result."""

    state: Literal["pending", "done"]
    fingerprint: str
    result: str | None = None


class IdempotencyStore(Protocol):
    """Where keys are remembered; ``key`` is an opaque id of at most 64 characters."""

    async def claim(
        self, key: str, fingerprint: str, *, window: float, stale_after: float
    ) -> IdempotencyRecord | None:
        """Reserve ``key`` (``None``: the caller runs the write) or return the existing record.

        An expired record, or a pending one older than ``stale_after``, is replaced.
        """
        ...

    async def complete(self, key: str, result: str) -> None:
        """Store the JSON result of the write that claimed ``key``."""
        ...

    async def release(self, key: str) -> None:
        """Forget a pending ``key`` whose write failed (a retry may run it again)."""
        ...

    async def lookup(self, key: str) -> IdempotencyRecord | None:
        """The record of ``key``, if any."""
        ...


def record_id(connector: str, operation: str, subject: str, key: str) -> str:
    """The store id of one key: a hash, so long subjects and keys fit a fixed column."""
    raw = "\x1f".join((connector, operation, subject, key)).encode()
    return hashlib.sha256(raw).hexdigest()


def fingerprint(params: Mapping[str, Any]) -> str:
    """A stable hash of validated parameters (same key + other parameters is refused)."""
    raw = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class MemoryIdempotencyStore:
    """Keys in this process only (the registry's default when no store is injected)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._records: dict[str, tuple[IdempotencyRecord, float, float]] = {}

    async def claim(
        self, key: str, fingerprint: str, *, window: float, stale_after: float
    ) -> IdempotencyRecord | None:
        now = self._clock()
        self._records = {k: v for k, v in self._records.items() if v[2] > now}
        held = self._records.get(key)
        if held is not None:
            record, created, _ = held
            if record.state == "done" or created > now - stale_after:
                return record
        self._records[key] = (IdempotencyRecord("pending", fingerprint), now, now + window)
        return None

    async def complete(self, key: str, result: str) -> None:
        held = self._records.get(key)
        if held is not None:
            record, created, expires = held
            done = IdempotencyRecord("done", record.fingerprint, result)
            self._records[key] = (done, created, expires)

    async def release(self, key: str) -> None:
        held = self._records.get(key)
        if held is not None and held[0].state == "pending":
            del self._records[key]

    async def lookup(self, key: str) -> IdempotencyRecord | None:
        held = self._records.get(key)
        return held[0] if held is not None and held[2] > self._clock() else None


class IdempotencyGuard:
    """Runs a write at most once per key (see the module docstring)."""

    def __init__(
        self,
        store: IdempotencyStore,
        *,
        window: float = DEFAULT_WINDOW,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        if window <= 0 or stale_after <= 0:
            raise ValueError("idempotency window and stale_after must be > 0")
        self.store = store
        self.window = window
        self.stale_after = stale_after
        # Calls in flight in this process, so a local duplicate waits without polling.
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def run(
        self,
        key: str,
        params: Mapping[str, Any],
        call: Callable[[], Awaitable[Any]],
        *,
        deadline: float | None,
    ) -> Any:
        """The first result for ``key``: runs ``call`` only if no call with ``key`` ran yet."""
        fp = fingerprint(params)
        wait_until = deadline if deadline is not None else time.monotonic() + _WAIT_WITHOUT_DEADLINE
        delay = 0.005
        while True:
            local = self._inflight.get(key)
            if local is not None:
                await asyncio.shield(local)
                continue
            record = await self.store.claim(
                key, fp, window=self.window, stale_after=self.stale_after
            )
            if record is None:
                return await self._first(key, call)
            if record.fingerprint != fp:
                raise RejectedInputError(
                    "this idempotency key was already used with different parameters"
                )
            if record.state == "done":
                return json.loads(record.result) if record.result is not None else None
            # Another replica runs it: wait for its result (or for it to give up).
            remaining = wait_until - time.monotonic()
            if remaining <= 0:
                raise ConnectorTimeoutError(
                    "a call with this idempotency key is still running; retry later"
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.2)

    async def _first(self, key: str, call: Callable[[], Awaitable[Any]]) -> Any:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            try:
                result = await call()
            except BaseException:
                await asyncio.shield(self.store.release(key))
                raise
            text = json.dumps(result, separators=(",", ":"), default=str)
            try:
                await asyncio.shield(self.store.complete(key, text))
            except Exception:
                # The key stays pending until stale_after: duplicates wait, nothing runs twice.
                log.warning("could not record the result of an idempotent write", exc_info=True)
            return result
        finally:
            del self._inflight[key]
            done.set_result(None)
