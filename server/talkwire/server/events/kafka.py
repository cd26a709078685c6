"""Kafka ingress: a consumer group feeding the EventRouter, committing only what is stored.

Start-up never waits for the broker: :meth:`KafkaIngress.start` only starts
the background task, which connects (an unreachable broker is retried with
jittered exponential backoff, ``retry_initial`` .. ``retry_max``), joins the
group and consumes. Health is reported through ``on_health`` (``False`` until
the consumer has joined and while it stalls) and the consumer lag and stall
gauges through ``metrics``.

Two tasks share the work. The fetcher polls (``getmany``) and decodes every
record with its topic's format (a record that cannot be decoded is set aside
for the dead-letter path; a Debezium tombstone is skipped). The storer takes
every poll decoded so far, in fetch order, and

1. routes their events with ONE ``store.fanout`` (one transaction,
   deduplicated by event id);
2. dead-letters the undecodable records (to ``dead_letter_topic`` with the
   reason in the ``talkwire-dead-letter-reason`` header, else into the store's
   ``dead_letters`` table);
3. THEN hands the offsets of exactly those records to the
   :class:`~talkwire.server.events.commits.OffsetCommitter` (next offset per
   partition), which commits them in the background, in order.

So while one transaction is being written the next polls are fetched and
decoded (at most ``_MAX_AHEAD`` of them; then the fetcher waits), and under load
they go into the store together: fewer, larger transactions. One store call
at a time, in fetch order: a partition's records are stored in offset order.

When the store is unavailable (or anything else fails in 2-3) the same batch
is retried with exponential backoff; the consumer never commits past it and
never skips it. Because the router deduplicates by event id, re-processing
after a crash or a rebalance makes no second frame (records without an id get
``kafka:<topic>:<partition>:<offset>``).

Rebalances: on revoke, offsets already stored but not yet committed are
committed, and the batches fetched before the revoke (decoded, or in the store)
drop the revoked partitions (they will not commit them; the new owner re-reads
and the event-id dedup absorbs the overlap). A partition assigned again is
re-read from its committed offset, so a poll fetched after that keeps it.
On stop the consumer finishes the batch in the store (decoded polls not yet
stored are dropped, uncommitted), commits what is stored and leaves the group
(a LeaveGroup request), so the others take its partitions at once instead of
after ``session_timeout``. Membership is dynamic on purpose: aiokafka sends no
LeaveGroup for a static member (``group_instance_id``), so static membership
would turn every SIGTERM into a ``session_timeout`` stall, and aiokafka has no
cooperative (incremental) rebalancing.

A watchdog tracks the last progress (a stored batch, or an empty poll with
nothing waiting for the store);
``healthy`` turns false and a warning is logged when there has been none for
``stall_after`` seconds (e.g. the store is down and the batch keeps retrying).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

from talkwire.server.aio import Backoff, cancel_and_wait
from talkwire.server.events.commits import OffsetCommitter
from talkwire.server.events.decode import DecodeError, decode
from talkwire.server.events.health import ConsumerHealth, HealthCallback
from talkwire.server.events.router import EventRouter
from talkwire.server.events.routing import TopicRoute
from talkwire.server.events.settings import KafkaSettings
from talkwire.server.metrics import Metrics
from talkwire.server.store import SessionStore
from talkwire.v1 import events_pb2

__all__ = ["DEAD_LETTER_REASON_HEADER", "HealthCallback", "KafkaIngress"]

log = logging.getLogger(__name__)

DEAD_LETTER_REASON_HEADER = "talkwire-dead-letter-reason"

_Item = tuple[TopicPartition, events_pb2.ChangeEvent, TopicRoute]
_Dead = tuple[TopicPartition, Any, str]


# How long an abandoned start (stopping while the join is in flight) may take to stop.
_ABANDON_TIMEOUT = 1.0

# Decoded polls waiting for the store (while one transaction is being written).
_MAX_AHEAD = 4


@dataclass(slots=True)
class _Batch:
    """Decoded records of one poll (or of several, merged for one store call)."""

    items: list[_Item]
    dead: list[_Dead]
    offsets: dict[TopicPartition, int]  # next offset per partition
    size: int  # records fetched
    # partitions revoked since this was fetched: their records are not stored or committed
    revoked: set[TopicPartition] = field(default_factory=set)

    def drop(self, gone: set[TopicPartition]) -> None:
        """Forget the records and offsets of ``gone``."""
        if not gone:
            return
        self.items = [i for i in self.items if i[0] not in gone]
        self.dead = [d for d in self.dead if d[0] not in gone]
        for tp in gone:
            self.offsets.pop(tp, None)


def _merge(batches: list[_Batch]) -> _Batch:
    """One batch of ``batches`` (fetch order), each without its own revoked partitions."""
    merged = _Batch([], [], {}, 0)
    for b in batches:
        b.drop(b.revoked)
        merged.items.extend(b.items)
        merged.dead.extend(b.dead)
        merged.offsets.update(b.offsets)  # a later poll's offset of a partition is higher
        merged.size += b.size
    return merged


async def _abandon(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer whose start failed or was cancelled, without waiting out its join.

    ``consumer.stop()`` waits for a JoinGroup in flight (the broker may hold it
    for a whole rebalance); we are not a member yet, so there is no group to
    leave: past ``_ABANDON_TIMEOUT`` the stop is cut short and the fetcher and
    the connections are closed directly.
    """
    stop = asyncio.ensure_future(consumer.stop())
    try:
        await asyncio.wait({stop}, timeout=_ABANDON_TIMEOUT)
    except BaseException:
        stop.cancel()
        raise
    if stop.done():
        if not stop.cancelled() and stop.exception() is None:
            return
    else:
        # Not cancel_and_wait: we are usually in a cancellation already (aclose
        # cancelled the start), and the connections below must be closed anyway.
        stop.cancel()
        await asyncio.wait({stop})
    with contextlib.suppress(Exception):
        if consumer._fetcher is not None:
            await consumer._fetcher.close()
        await consumer._client.close()


async def _leave_generation_zero(consumer: AIOKafkaConsumer) -> None:
    """Send the LeaveGroup that aiokafka skips for a member of generation 0.

    aiokafka's ``stop()`` leaves the group only when ``generation > 0`` (Kafka
    numbers generations from 1); Tansu numbers them from 0, so a member that
    stops in the group's first generation would keep its partitions until
    ``session_timeout`` expires. Uses aiokafka's coordinator internals: there is
    no public API for it.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "generation", None) != 0:
        return
    if coordinator.member_id == JoinGroupRequest.UNKNOWN_MEMBER_ID:
        return
    try:
        await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, coordinator.member_id))
    except KafkaError as exc:
        log.warning("kafka LeaveGroup failed (partitions move after session_timeout): %s", exc)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingress: KafkaIngress) -> None:
        self._ingress = ingress

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._ingress._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._ingress._on_assigned(set(assigned))


class KafkaIngress:
    """Consumes the configured change topics into ``router``; an async context manager.

    ``on_health`` receives the health (see :attr:`healthy`) whenever it changes;
    ``metrics`` (optional) gets the consumer lag and stall gauges.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | KafkaSettings,
        router: EventRouter,
        store: SessionStore,
        *,
        on_health: HealthCallback | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = (
            config if isinstance(config, KafkaSettings) else KafkaSettings.from_config(config)
        )
        self.router = router
        self.store = store
        self._routes: dict[str, TopicRoute] = dict(self.settings.topics)
        self._health = ConsumerHealth(
            stall_after=self.settings.stall_after, on_health=on_health, metrics=metrics, clock=clock
        )
        self._producer: AIOKafkaProducer | None = None
        self._commits: OffsetCommitter | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._closed = False
        self._joined = False
        self._failed: BaseException | None = None
        self._assigned: set[TopicPartition] = set()
        self._queued: list[_Batch] = []  # decoded, waiting for the store, fetch order
        self._storing: _Batch | None = None  # in the store now
        self._ready = asyncio.Event()  # something queued (or stopping): wakes the storer
        self._room = asyncio.Event()  # room in the queue (or stopping): wakes the fetcher
        self._lag: dict[TopicPartition, int] = {}
        self.connect_attempts = 0
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
        """Start connecting and consuming in the background; returns at once."""
        if self._task is not None or self._closed:
            return
        await self._report()
        self._task = asyncio.create_task(self._run(), name="talkwire-kafka-ingress")

    async def aclose(self, *, drain_timeout: float | None = None) -> None:
        """Finish the current batch (bounded), commit what is stored, leave the group.

        Idempotent. Not yet joined (the broker unreachable, or the join still
        going on): the connection attempt is cancelled at once.
        """
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._ready.set()
        self._room.set()
        task = self._task
        if task is not None and not task.done():
            if not self._joined:
                await cancel_and_wait(task)
            else:
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

    # -- health -----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def joined(self) -> bool:
        """Connected to the broker and a member of the consumer group."""
        return self._joined

    @property
    def healthy(self) -> bool:
        """Joined, running and made progress within ``stall_after`` seconds."""
        if not self.running or not self._joined or self._failed is not None:
            return False
        return self._health.fresh

    @property
    def lag(self) -> int:
        """Records behind the high watermark over the assigned partitions (last known)."""
        return sum(v for tp, v in self._lag.items() if tp in self._assigned)

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._assigned)

    async def _report(self) -> None:
        await self._health.report(self.healthy, self.lag)

    # -- rebalance --------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        for batch in self._queued:
            batch.revoked |= revoked
        if self._storing is not None:
            self._storing.revoked |= revoked
        if self._commits is not None:
            await self._commits.revoke(revoked)
        self._assigned -= revoked
        for tp in revoked:
            self._lag.pop(tp, None)
        log.info("kafka partitions revoked: %s", sorted(str(tp) for tp in revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned = set(assigned)
        log.info("kafka partitions assigned: %s", sorted(str(tp) for tp in assigned))

    # -- connect ----------------------------------------------------------

    async def _run(self) -> None:
        watchdog = asyncio.create_task(
            self._health.watch(
                lambda: self.healthy,
                lambda: self.lag,
                lambda: self._joined,
                detail=lambda: f"lag {self.lag}, retries {self.retries}",
            ),
            name="talkwire-kafka-watchdog",
        )
        try:
            consumer = await self._connect()
            if consumer is None:
                return  # stopped before the broker was reachable
            try:
                async with OffsetCommitter(
                    consumer.commit, interval=self.settings.commit_interval
                ) as commits:
                    self._commits = commits
                    await self._consume(consumer)
            finally:
                await self._disconnect(consumer)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failed = exc
            log.exception("kafka ingress stopped on an unexpected error")
            raise
        finally:
            self._joined = False
            await cancel_and_wait(watchdog)
            with contextlib.suppress(Exception):
                await self._report()

    async def _connect(self) -> AIOKafkaConsumer | None:
        """Connect and join the group, retrying an unreachable broker with backoff.

        None: stopped before it succeeded.
        """
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        while True:
            self.connect_attempts += 1
            try:
                consumer = await self._open()
            except (KafkaError, OSError) as exc:
                delay = backoff.next()
                log.warning(
                    "kafka broker %s not reachable (attempt %d), retrying in %.1fs: %s",
                    ",".join(self.settings.bootstrap),
                    self.connect_attempts,
                    delay,
                    exc,
                )
                await self._pause(delay)
                if self._stopping.is_set():
                    return None
                continue
            self._joined = True
            self._health.progress()
            log.info("kafka consumer joined group %s", self.settings.group_id)
            await self._report()
            return consumer

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset=s.start,
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval * 1000),
            rebalance_timeout_ms=int(s.rebalance_timeout * 1000),
            max_poll_interval_ms=int(s.max_poll_interval * 1000),
            **s.client_kwargs(),
        )

    async def _open(self) -> AIOKafkaConsumer:
        consumer = self._new_consumer()
        try:
            consumer.subscribe(topics=list(self._routes), listener=_Listener(self))
            await consumer.start()  # bootstrap, then wait for the first assignment
            if self.settings.dead_letter_topic:
                producer = AIOKafkaProducer(acks="all", **self.settings.client_kwargs())
                try:
                    await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
        except BaseException:
            await _abandon(consumer)
            raise
        return consumer

    async def _disconnect(self, consumer: AIOKafkaConsumer) -> None:
        """Stop the clients; ``consumer.stop()`` leaves the group (a LeaveGroup request)."""
        self._joined = False
        self._commits = None
        await _leave_generation_zero(consumer)
        try:
            await consumer.stop()
        except KafkaError as exc:
            log.warning("kafka consumer did not stop cleanly: %s", exc)
        else:
            log.info("kafka consumer left group %s", self.settings.group_id)
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except KafkaError as exc:
                log.warning("dead-letter producer did not stop cleanly: %s", exc)

    # -- the loop ---------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Back off, waking early when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._fetch(consumer), name="talkwire-kafka-fetch")
            tg.create_task(self._store_loop(consumer), name="talkwire-kafka-store")

    async def _fetch(self, consumer: AIOKafkaConsumer) -> None:
        """Poll and decode, staying at most ``_MAX_AHEAD`` polls ahead of the store."""
        s = self.settings
        backoff = Backoff(s.retry_initial, s.retry_max)
        while not self._stopping.is_set():
            if len(self._queued) >= _MAX_AHEAD:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                batch = await consumer.getmany(
                    timeout_ms=int(s.poll_timeout * 1000), max_records=s.max_records
                )
            except KafkaError as exc:
                delay = backoff.next()
                log.warning("kafka fetch failed, retrying in %.1fs: %s", delay, exc)
                await self._pause(delay)
                continue
            backoff.reset()
            if not batch:
                if not self._queued and self._storing is None:
                    self._health.progress()  # idle, not stuck behind a failing store
                continue
            self._queued.append(self._decode(batch))
            self._ready.set()

    async def _store_loop(self, consumer: AIOKafkaConsumer) -> None:
        """Store everything decoded so far in one call, one call at a time, until stopping."""
        while not self._stopping.is_set():
            if not self._queued:
                self._ready.clear()
                await self._ready.wait()
                continue
            batches, self._queued = self._queued, []
            self._room.set()
            batch = _merge(batches)
            self._storing = batch
            try:
                await self._process(consumer, batch)
            finally:
                self._storing = None

    async def _process(self, consumer: AIOKafkaConsumer, batch: _Batch) -> None:
        """Store (retried until it succeeds or we stop), then hand over the offsets."""
        if not await self._store(batch):
            return
        offsets = {tp: o for tp, o in batch.offsets.items() if tp not in batch.revoked}
        if self._commits is not None:
            self._commits.stored(offsets)
        self.batches += 1
        self.records += batch.size
        self.dead_lettered += len(batch.dead)
        for tp, next_offset in offsets.items():
            high = consumer.highwater(tp)
            if high is not None:
                self._lag[tp] = max(0, int(high) - next_offset)
        self._health.progress()

    def _decode(self, batch: Mapping[TopicPartition, list[Any]]) -> _Batch:
        items: list[_Item] = []
        dead: list[_Dead] = []
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
        return _Batch(items, dead, offsets, sum(map(len, batch.values())))

    async def _store(self, batch: _Batch) -> bool:
        """Route + dead-letter in a retry loop; False: nothing left to commit, or stopping."""
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        while True:
            batch.drop(batch.revoked)
            if not batch.offsets:
                return False
            try:
                await self.router.route([(ev, route) for _, ev, route in batch.items])
                await self._dead_letter(batch.dead)
                return True
            except Exception as exc:  # noqa: BLE001 - retry the same batch; never skip it
                self.retries += 1
                delay = backoff.next()
                log.warning(
                    "kafka batch of %d record(s) not stored, retrying in %.1fs: %s",
                    batch.size,
                    delay,
                    exc,
                )
                await self._pause(delay)
                if self._stopping.is_set():
                    return False  # not committed: the next owner re-reads it

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
