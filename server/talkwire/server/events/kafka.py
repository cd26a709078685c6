"""Kafka ingress: a consumer group feeding the EventRouter, committing only what is stored.

Per ``getmany`` batch:

1. decode every record with its topic's format (a record that cannot be
   decoded is set aside for the dead-letter path; a Debezium tombstone is
   skipped);
2. route the decoded events with ONE ``store.fanout`` (one transaction,
   deduplicated by event id);
3. dead-letter the undecodable records (to ``dead_letter_topic`` with the
   reason in the ``talkwire-dead-letter-reason`` header, else into the store's
   ``dead_letters`` table);
4. THEN commit the offsets of exactly those records (next offset per
   partition).

When the store is unavailable (or anything else fails in 2-3) the same batch
is retried with exponential backoff; the consumer never commits past it and
never skips it. Because the router deduplicates by event id, re-processing
after a crash or a rebalance makes no second frame (records without an id get
``kafka:<topic>:<partition>:<offset>``).

Rebalances: on revoke, offsets already processed but not yet committed are
committed, and the in-flight batch drops the revoked partitions (it will not
commit them; the new owner re-reads and the event-id dedup absorbs the
overlap).

A watchdog tracks the last progress (a committed batch, or an empty poll);
``healthy`` turns false and a warning is logged when there has been none for
``stall_after`` seconds (e.g. the store is down and the batch keeps retrying).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from talkwire.server.events.decode import DecodeError, decode
from talkwire.server.events.router import EventRouter
from talkwire.server.events.routing import TopicRoute
from talkwire.server.events.settings import KafkaSettings
from talkwire.server.store import SessionStore
from talkwire.v1 import events_pb2

__all__ = ["DEAD_LETTER_REASON_HEADER", "KafkaIngress"]

log = logging.getLogger(__name__)

DEAD_LETTER_REASON_HEADER = "talkwire-dead-letter-reason"


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it; re-raise if *we* are being cancelled meanwhile."""
    if task is None or task.done():
        if task is not None and not task.cancelled():
            task.exception()  # mark retrieved
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: BLE001 - already failed; logged by its owner
        log.debug("task %s ended with an error while cancelled", task.get_name())


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingress: KafkaIngress) -> None:
        self._ingress = ingress

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._ingress._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._ingress._on_assigned(set(assigned))


class KafkaIngress:
    """Consumes the configured change topics into ``router``; an async context manager."""

    def __init__(
        self,
        config: Mapping[str, Any] | KafkaSettings,
        router: EventRouter,
        store: SessionStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = (
            config if isinstance(config, KafkaSettings) else KafkaSettings.from_config(config)
        )
        self.router = router
        self.store = store
        self._routes: dict[str, TopicRoute] = dict(self.settings.topics)
        self._clock = clock
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._closed = False
        self._started = False
        self._failed: BaseException | None = None
        self._assigned: set[TopicPartition] = set()
        self._batch_revoked: set[TopicPartition] = set()
        self._pending: dict[TopicPartition, int] = {}
        self._committing: asyncio.Task[None] | None = None
        self._commit_now = asyncio.Event()
        self._lag: dict[TopicPartition, int] = {}
        self.last_progress: float = clock()
        self._stall_reported = False
        self.batches = 0
        self.records = 0
        self.dead_lettered = 0
        self.retries = 0

    # -- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        s = self.settings
        kwargs = s.client_kwargs()
        consumer = AIOKafkaConsumer(
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset=s.start,
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval * 1000),
            **kwargs,
        )
        try:
            consumer.subscribe(topics=list(self._routes), listener=_Listener(self))
            await consumer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise
        self._consumer = consumer
        if s.dead_letter_topic:
            producer = AIOKafkaProducer(acks="all", **kwargs)
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                await consumer.stop()
                raise
            self._producer = producer
        self.last_progress = self._clock()
        self._task = asyncio.create_task(self._run(), name="talkwire-kafka-ingress")

    async def aclose(self, *, drain_timeout: float | None = None) -> None:
        """Finish the current batch (bounded), stop consuming, leave the group. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        task = self._task
        if task is not None and not task.done():
            timeout = (
                drain_timeout
                if drain_timeout is not None
                else self.settings.poll_timeout + self.settings.retry_max + 5
            )
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                await cancel_and_wait(task)
        elif task is not None and not task.cancelled():
            task.exception()
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            except KafkaError as exc:
                log.warning("kafka consumer did not stop cleanly: %s", exc)
        if self._producer is not None:
            try:
                await self._producer.stop()
            except KafkaError as exc:
                log.warning("dead-letter producer did not stop cleanly: %s", exc)

    # -- health -----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def healthy(self) -> bool:
        """Running and made progress within ``stall_after`` seconds."""
        if not self.running or self._failed is not None:
            return False
        return bool(self._clock() - self.last_progress <= self.settings.stall_after)

    @property
    def lag(self) -> int:
        """Records behind the high watermark over the assigned partitions (last known)."""
        return sum(v for tp, v in self._lag.items() if tp in self._assigned)

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._assigned)

    # -- rebalance --------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._batch_revoked |= revoked
        await self._flush_commits()
        self._assigned -= revoked
        done = {tp: off for tp, off in self._pending.items() if tp in revoked}
        if done and self._consumer is not None:
            try:
                await self._consumer.commit(done)
            except KafkaError as exc:
                log.warning("commit on revoke failed (records will be re-read, deduped): %s", exc)
        for tp in revoked:
            self._pending.pop(tp, None)
            self._lag.pop(tp, None)
        log.info("kafka partitions revoked: %s", sorted(str(tp) for tp in revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned = set(assigned)
        log.info("kafka partitions assigned: %s", sorted(str(tp) for tp in assigned))

    # -- the loop ---------------------------------------------------------

    async def _run(self) -> None:
        watchdog = asyncio.create_task(self._watchdog(), name="talkwire-kafka-watchdog")
        try:
            await self._consume()
            await self._flush_commits()
        except asyncio.CancelledError:
            await cancel_and_wait(self._committing)
            raise
        except BaseException as exc:
            self._failed = exc
            log.exception("kafka ingress stopped on an unexpected error")
            await cancel_and_wait(self._committing)
            raise
        finally:
            await cancel_and_wait(watchdog)

    async def _pause(self, seconds: float) -> None:
        """Back off, waking early when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None  # noqa: S101 - set by start()
        s = self.settings
        backoff = s.retry_initial
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(
                    timeout_ms=int(s.poll_timeout * 1000), max_records=s.max_records
                )
            except KafkaError as exc:
                log.warning("kafka fetch failed, retrying in %.1fs: %s", backoff, exc)
                await self._pause(backoff)
                backoff = min(backoff * 2, s.retry_max)
                continue
            backoff = s.retry_initial
            if not batch:
                self._progress()
                continue
            await self._process(consumer, batch)

    def _progress(self) -> None:
        self.last_progress = self._clock()
        if self._stall_reported:
            log.warning("kafka ingress is making progress again")
            self._stall_reported = False

    async def _watchdog(self) -> None:
        interval = max(0.05, min(1.0, self.settings.stall_after / 4))
        while True:
            await asyncio.sleep(interval)
            idle = self._clock() - self.last_progress
            if idle > self.settings.stall_after and not self._stall_reported:
                self._stall_reported = True
                log.warning(
                    "kafka ingress stalled: no progress for %.1fs (lag %d, retries %d)",
                    idle,
                    self.lag,
                    self.retries,
                )

    async def _process(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[Any]]
    ) -> None:
        self._batch_revoked = set()
        items: list[tuple[TopicPartition, events_pb2.ChangeEvent, TopicRoute]] = []
        dead: list[tuple[TopicPartition, Any, str]] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            route = self._routes.get(tp.topic)
            for rec in records:
                offsets[tp] = rec.offset + 1
                if route is None:
                    dead.append((tp, rec, f"no route configured for topic {tp.topic}"))
                    continue
                try:
                    event = decode(
                        route.format,
                        rec.value,
                        rec.key,
                        rec.headers or (),
                        topic=tp.topic,
                        fallback_id=f"kafka:{tp.topic}:{tp.partition}:{rec.offset}",
                    )
                except DecodeError as exc:
                    dead.append((tp, rec, exc.reason))
                    continue
                if event is not None:
                    items.append((tp, event, route))
        backoff = self.settings.retry_initial
        while True:
            gone = self._batch_revoked
            if gone:
                items = [i for i in items if i[0] not in gone]
                dead = [d for d in dead if d[0] not in gone]
                offsets = {tp: o for tp, o in offsets.items() if tp not in gone}
            if not offsets:
                return
            try:
                await self.router.route([(ev, route) for _, ev, route in items])
                await self._dead_letter(dead)
                break
            except Exception as exc:  # noqa: BLE001 - retry the same batch; never skip it
                self.retries += 1
                log.warning(
                    "kafka batch of %d record(s) not stored, retrying in %.1fs: %s",
                    sum(len(r) for r in batch.values()),
                    backoff,
                    exc,
                )
                await self._pause(backoff)
                backoff = min(backoff * 2, self.settings.retry_max)
                if self._stopping.is_set():
                    return  # not committed: the next owner re-reads it
        offsets = {tp: o for tp, o in offsets.items() if tp not in self._batch_revoked}
        self._pending.update(offsets)
        # Commit in the background, in order, while the next batch is fetched: the
        # offsets are already safe to commit (their store transaction is done).
        if self.settings.commit_interval > 0:
            if self._committing is None or self._committing.done():
                self._committing = asyncio.create_task(self._commit_periodically(consumer))
        else:
            self._committing = asyncio.create_task(
                self._commit_after(self._committing, consumer, offsets)
            )
        self.batches += 1
        self.records += sum(len(r) for r in batch.values())
        self.dead_lettered += len(dead)
        for tp, next_offset in offsets.items():
            high = consumer.highwater(tp)
            if high is not None:
                self._lag[tp] = max(0, int(high) - next_offset)
        self._progress()

    async def _commit_after(
        self,
        previous: asyncio.Task[None] | None,
        consumer: AIOKafkaConsumer,
        offsets: dict[TopicPartition, int],
    ) -> None:
        if previous is not None:
            await previous
        await self._commit(consumer, offsets)

    async def _commit_periodically(self, consumer: AIOKafkaConsumer) -> None:
        """``commit_interval`` > 0: commit the newest stored offsets every interval."""
        while self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.commit_interval):
                    await self._commit_now.wait()  # a flush (revoke, stop) cuts the wait short
            self._commit_now.clear()
            try:
                await self._commit(consumer, dict(self._pending))
            except Exception:  # keep committing: the next round retries the newest offsets
                log.exception("kafka offset commit failed")

    async def _flush_commits(self) -> None:
        """Commit what is stored now and wait for the background commits started so far."""
        self._commit_now.set()
        task = self._committing
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took these partitions away: the new owner re-reads from
            # the last commit and the event-id dedup absorbs the overlap.
            log.warning("kafka commit failed (records will be re-read, deduped): %s", exc)
        for tp, off in offsets.items():
            if self._pending.get(tp) == off:
                del self._pending[tp]

    async def _dead_letter(self, dead: list[tuple[TopicPartition, Any, str]]) -> None:
        for tp, rec, reason in dead:
            log.warning("dead-lettering %s[%d]@%d: %s", tp.topic, tp.partition, rec.offset, reason)
            headers = list(rec.headers or ())
            if self._producer is not None:
                extra = [
                    (DEAD_LETTER_REASON_HEADER, reason.encode()),
                    ("talkwire-source-topic", tp.topic.encode()),
                    ("talkwire-source-partition", str(tp.partition).encode()),
                    ("talkwire-source-offset", str(rec.offset).encode()),
                ]
                await self._producer.send_and_wait(
                    self.settings.dead_letter_topic,
                    value=rec.value,
                    key=rec.key,
                    headers=headers + extra,
                )
            else:
                await self.store.dead_letter(
                    source=f"kafka:{tp.topic}",
                    reason=reason,
                    payload=rec.value,
                    partition=tp.partition,
                    offset=rec.offset,
                    headers={k: (v or b"").decode("utf-8", errors="replace") for k, v in headers},
                )
