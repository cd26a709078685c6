"""Kafka offset commits, strictly after the store transaction, in order, off the hot path.

:class:`OffsetCommitter` holds the newest *stored* offset per partition
(:meth:`OffsetCommitter.stored` is called only after the batch's store
transaction committed) and one background task commits them:

* ``interval == 0``: a commit round starts as soon as something is stored
  (rounds coalesce: what is stored while a commit is in flight goes in the
  next round);
* ``interval > 0``: at most one round per ``interval`` seconds (fewer broker
  round trips; a crash re-reads more, deduplicated by event id).

Rounds run one at a time and each sends the newest offsets, so commits never
go backwards. :meth:`flush` (a revoke, the stop) commits now and waits for it.
A failed commit is logged and retried by the next round (the offsets stay
pending); a partition that was revoked is dropped (its new owner re-reads
from the last commit, and the event-id dedup absorbs the overlap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Self

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from talkwire.server.aio import cancel_and_wait

__all__ = ["CommitFn", "OffsetCommitter"]

log = logging.getLogger(__name__)

CommitFn = Callable[[dict[TopicPartition, int]], Awaitable[None]]
"""Commits ``{partition: next offset}`` (``AIOKafkaConsumer.commit``)."""


class OffsetCommitter:
    """Commits stored offsets in the background; an async context manager."""

    def __init__(self, commit: CommitFn, *, interval: float = 0.0) -> None:
        self._commit = commit
        self.interval = interval
        self._pending: dict[TopicPartition, int] = {}
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []  # flushes the next round serves
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0
        self.failures = 0

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop(), name="talkwire-kafka-commits")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(flush=exc_type is None)

    @property
    def pending(self) -> Mapping[TopicPartition, int]:
        """Stored but not yet committed: ``{partition: next offset}``."""
        return dict(self._pending)

    def stored(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record offsets whose records are in the store (their transaction committed)."""
        if not offsets:
            return
        self._pending.update(offsets)
        if self.interval <= 0:
            self._wake.set()

    async def flush(self) -> None:
        """Commit everything stored so far now, and wait until that round is done."""
        if self._task is None or self._task.done():
            await self._commit_round()
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self._wake.set()
        await asyncio.shield(done)  # a cancelled flush leaves the round alone

    async def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions are leaving: commit what is stored for them, then forget them."""
        gone = set(partitions)
        with contextlib.suppress(KafkaError):
            await self.flush()
        for tp in gone:
            self._pending.pop(tp, None)

    async def aclose(self, *, flush: bool = True) -> None:
        """Commit what is stored (unless ``flush`` is false), stop the task. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if flush:
            await self.flush()
        await cancel_and_wait(self._task)

    # -- the task ------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            while True:
                if self.interval > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval):
                            await self._wake.wait()  # a flush cuts the interval short
                else:
                    await self._wake.wait()
                self._wake.clear()
                waiters, self._waiters = self._waiters, []
                await self._commit_round()
                _release(waiters)
        finally:
            _release(self._waiters)  # a flush never outlives the task

    async def _commit_round(self) -> None:
        offsets = dict(self._pending)
        if not offsets:
            return
        try:
            await self._commit(offsets)
        except KafkaError as exc:
            # A rebalance took these partitions away, or the broker is away: the
            # next round retries; the new owner re-reads and the dedup absorbs it.
            self.failures += 1
            log.warning("kafka commit failed (records will be re-read, deduped): %s", exc)
            return
        except Exception:
            self.failures += 1
            log.exception("kafka offset commit failed")
            return
        self.commits += 1
        for tp, off in offsets.items():
            if self._pending.get(tp) == off:
                del self._pending[tp]


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)
    waiters.clear()
