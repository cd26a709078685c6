"""Kafka ingress: a consumer group feeding the EventRouter, committing only what is stored.

Start-up never waits for the broker: :meth:`KafkaIngress.start` only starts
the background task, which connects (an unreachable broker is retried with
jittered exponential backoff, ``retry_initial`` .. ``retry_max``), joins the
group and consumes. Health is reported through ``on_health`` (``False`` until
the consumer has joined and while it stalls) and the consumer lag and stall
gauges through ``metrics``.

Per ``getmany`` batch:

1. decode every record with its topic's format (a record that cannot be
   decoded is set aside for the dead-letter path; a Debezium tombstone is
   skipped);
2. route the decoded events with ONE ``store.fanout`` (one transaction,
   deduplicated by event id);
3. dead-letter the undecodable records (to ``dead_letter_topic`` with the
   reason in the ``talkwire-dead-letter-reason`` header, else into the store's
   ``dead_letters`` table);
4. THEN hand the offsets of exactly those records to the
   :class:`~talkwire.server.events.commits.OffsetCommitter` (next offset per
   partition), which commits them in the background, in order.

When the store is unavailable (or anything else fails in 2-3) the same batch
is retried with exponential backoff; the consumer never commits past it and
never skips it. Because the router deduplicates by event id, re-processing
after a crash or a rebalance makes no second frame (records without an id get
``kafka:<topic>:<partition>:<offset>``).

Rebalances: on revoke, offsets already stored but not yet committed are
committed, and the in-flight batch drops the revoked partitions (it will not
commit them; the new owner re-reads and the event-id dedup absorbs the
overlap). On stop the consumer commits what is stored and leaves the group
(a LeaveGroup request), so the others take its partitions at once instead of
after ``session_timeout``. Membership is dynamic on purpose: aiokafka sends no
LeaveGroup for a static member (``group_instance_id``), so static membership
would turn every SIGTERM into a ``session_timeout`` stall, and aiokafka has no
cooperative (incremental) rebalancing.

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
        self._batch_revoked: set[TopicPartition] = set()
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
        self._batch_revoked |= revoked
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
        s = self.settings
        backoff = Backoff(s.retry_initial, s.retry_max)
        while not self._stopping.is_set():
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
                self._health.progress()
                continue
            await self._process(consumer, batch)

    async def _process(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[Any]]
    ) -> None:
        """Decode, store (retried until it succeeds or we stop), then hand over the offsets."""
        self._batch_revoked = set()
        items, dead, offsets = self._decode(batch)
        if not await self._store(items, dead, offsets, size=sum(map(len, batch.values()))):
            return
        offsets = {tp: o for tp, o in offsets.items() if tp not in self._batch_revoked}
        if self._commits is not None:
            self._commits.stored(offsets)
        self.batches += 1
        self.records += sum(len(r) for r in batch.values())
        self.dead_lettered += len(dead)
        for tp, next_offset in offsets.items():
            high = consumer.highwater(tp)
            if high is not None:
                self._lag[tp] = max(0, int(high) - next_offset)
        self._health.progress()

    def _decode(
        self, batch: Mapping[TopicPartition, list[Any]]
    ) -> tuple[list[_Item], list[_Dead], dict[TopicPartition, int]]:
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
        return items, dead, offsets

    async def _store(
        self,
        items: list[_Item],
        dead: list[_Dead],
        offsets: dict[TopicPartition, int],
        *,
        size: int,
    ) -> bool:
        """Route + dead-letter in a retry loop; False: nothing left to commit, or stopping."""
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        while True:
            gone = self._batch_revoked
            if gone:
                items = [i for i in items if i[0] not in gone]
                dead = [d for d in dead if d[0] not in gone]
                for tp in gone:
                    offsets.pop(tp, None)
            if not offsets:
                return False
            try:
                await self.router.route([(ev, route) for _, ev, route in items])
                await self._dead_letter(dead)
                return True
            except Exception as exc:  # noqa: BLE001 - retry the same batch; never skip it
                self.retries += 1
                delay = backoff.next()
                log.warning(
                    "kafka batch of %d record(s) not stored, retrying in %.1fs: %s",
                    size,
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
