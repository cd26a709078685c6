"""The Kafka sink: one record per event, CloudEvents 1.0 binary mode, key = session id.

Headers: ``ce_specversion: 1.0``, ``ce_id`` (the stable event id), ``ce_source``,
``ce_type: io.talkwire.conversation.<kind>``, ``ce_subject`` (session id), ``ce_time``
and ``content-type`` (``application/protobuf`` or ``application/json``). The producer
is idempotent (``enable_idempotence``, ``acks=all``; ``idempotence: false`` for brokers
without ``InitProducerId``, such as Tansu); one key means one partition, and aiokafka
keeps one batch per partition in flight, so a session's events keep their order.

Keys: ``bootstrap``, ``topic``, ``format`` (protobuf | json), ``source``,
``client_id``, ``security`` (as ``events.security``), ``timeout``, ``idempotence``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from talkwire.connectors.breaker import CircuitBreaker
from talkwire.server.events.settings import SecuritySettings
from talkwire.server.outbound.events import StoredEvent, to_bytes, to_json, to_message
from talkwire.server.outbound.settings import SinkSettings
from talkwire.server.outbound.sink import DeliveryError, Outcome, StoredBatch
from talkwire.v1 import conversation_pb2

__all__ = ["KAFKA_KEYS", "KafkaSink", "RowHeaders", "cloudevent_headers"]

_PARTITION_CACHE = 100_000  # sessions whose partition is remembered

KAFKA_KEYS = frozenset(
    {"bootstrap", "topic", "format", "source", "client_id", "security", "timeout", "idempotence"}
)


def cloudevent_headers(
    event: conversation_pb2.ConversationEvent, *, source: str, content_type: str
) -> list[tuple[str, bytes]]:
    """The CloudEvents 1.0 Kafka binary-mode headers of one event."""
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event.id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", f"io.talkwire.conversation.{event.kind}".encode()),
        ("ce_subject", event.session_id.encode()),
        ("ce_time", _rfc3339(event.occurred_at.seconds, event.occurred_at.nanos)),
        ("content-type", content_type.encode()),
    ]


def _rfc3339(seconds: int, nanos: int) -> bytes:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}Z"
    ).encode()


class RowHeaders:
    """:func:`cloudevent_headers` of a stored row, without building its message: the
    constant headers are encoded once, ``ce_type`` once per kind, the seconds of
    ``ce_time`` once per second."""

    def __init__(self, source: str, content_type: str) -> None:
        self._spec = ("ce_specversion", b"1.0")
        self._source = ("ce_source", source.encode())
        self._content_type = ("content-type", content_type.encode())
        self._types: dict[str, tuple[str, bytes]] = {}
        self._second = -1
        self._stamp = ""

    def __call__(self, row: StoredEvent, subject: bytes | None = None) -> list[tuple[str, bytes]]:
        """The headers of ``row``; ``subject`` is its session id encoded, if at hand."""
        ce_type = self._types.get(row.kind)
        if ce_type is None:
            ce_type = ("ce_type", f"io.talkwire.conversation.{row.kind}".encode())
            self._types[row.kind] = ce_type
        # As Timestamp.FromNanoseconds(int(created_at * 1e9)) splits it (to_message).
        seconds, nanos = divmod(int(row.created_at * 1e9), 1_000_000_000)
        if seconds != self._second:
            self._second = seconds
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        if subject is None:
            subject = row.session_id.encode()
        return [
            self._spec,
            ("ce_id", b"%s:%d" % (subject, row.id)),
            self._source,
            ce_type,
            ("ce_subject", subject),
            ("ce_time", f"{self._stamp}.{nanos // 1000:06d}Z".encode()),
            self._content_type,
        ]


class KafkaSink:
    """Publishes to one topic with an idempotent producer."""

    type = "kafka"
    parts_in_flight = 2  # a backlog round: one part is settled while the next is sent

    def __init__(self, settings: SinkSettings) -> None:
        sec = settings.section
        self.name = settings.name
        self.bootstrap = sec.strings("bootstrap", split=True)
        if not self.bootstrap:
            raise sec.error("bootstrap", "required (host:port, or a list of them)")
        self.topic = sec.text("topic")
        if not self.topic:
            raise sec.error("topic", "required")
        self.json = sec.text("format", "protobuf", choices=("protobuf", "json")) == "json"
        self.source = sec.text("source", "talkwire")
        self.client_id = sec.text("client_id", f"talkwire-outbound-{self.name}")
        self.timeout = sec.number("timeout", 10.0, positive=True)
        self.idempotence = sec.flag("idempotence", True)
        self.security = SecuritySettings.from_config(
            sec.section("security"), where=sec.child_key("security")
        )
        self.breaker = CircuitBreaker.from_config(
            settings.breaker, sec.child_key("breaker"), name=self.name
        )
        self.redact = settings.redact
        self._content_type = "application/json" if self.json else "application/protobuf"
        self._headers = RowHeaders(self.source, self._content_type)
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._partition_of: dict[str, int] = {}
        self._partitions_seen: list[int] = []
        self._closed = False

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=list(self.bootstrap),
            client_id=self.client_id,
            enable_idempotence=self.idempotence,
            acks="all",
            linger_ms=2,
            request_timeout_ms=int(self.timeout * 1000),
            **self.security.client_kwargs(),
        )

    async def start(self) -> None:
        """Connect the producer now, so the first events do not wait for it; a broker that
        is down at start is not an error (the outbox grows; deliveries connect later)."""
        with contextlib.suppress(DeliveryError):
            await self._ready()

    async def _ready(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self._new_producer()
            try:
                async with asyncio.timeout(self.timeout):
                    await producer.start()
            except (KafkaError, TimeoutError, OSError) as exc:
                await producer.stop()
                raise DeliveryError(f"broker unreachable: {exc!r}", retriable=True) from None
            self._producer = producer
        return self._producer

    def _value(self, row: StoredEvent) -> bytes:
        if self.json:
            message = to_message(row, redact=self.redact)
            return json.dumps(to_json(message), separators=(",", ":")).encode()
        return to_bytes(row, redact=self.redact)

    async def _partitions(self, producer: AIOKafkaProducer) -> list[int]:
        try:
            async with asyncio.timeout(self.timeout):
                return sorted(await producer.partitions_for(self.topic))
        except (KafkaError, TimeoutError) as exc:
            raise DeliveryError(f"topic metadata unavailable: {exc!r}", retriable=True) from None

    def _partition(self, session_id: str, partitions: list[int]) -> int:
        """The key's partition (the default murmur2 partitioner, as ``send`` picks it),
        remembered per session while the topic's partitions stay the same."""
        if partitions != self._partitions_seen or len(self._partition_of) >= _PARTITION_CACHE:
            self._partition_of.clear()
            self._partitions_seen = partitions
        partition = self._partition_of.get(session_id)
        if partition is None:
            key = session_id.encode()
            partition = self._partitioner(key, partitions, partitions)
            self._partition_of[session_id] = partition
        return partition

    async def deliver(self, batch: StoredBatch) -> dict[str, Outcome]:
        """Every session's records go into record batches of its key's partition (built
        here, one ``send_batch`` each, as ``send`` would fill them), partitions in parallel;
        a session's acknowledged prefix is what its batches' acknowledgements cover."""
        producer = await self._ready()
        partitions = await self._partitions(producer)
        by_partition: dict[int, list[str]] = {}
        for session_id in batch:
            by_partition.setdefault(self._partition(session_id, partitions), []).append(session_id)
        deadline = asyncio.get_running_loop().time() + self.timeout
        results = await asyncio.gather(
            *(
                self._send_partition(producer, partition, sids, batch, deadline)
                for partition, sids in by_partition.items()
            )
        )
        out = {sid: outcome for result in results for sid, outcome in result.items()}
        if any(o.error for o in out.values()):
            await self._reset()
        return out

    async def _send_partition(
        self,
        producer: AIOKafkaProducer,
        partition: int,
        session_ids: list[str],
        batch: StoredBatch,
        deadline: float,
    ) -> dict[str, Outcome]:
        """One partition's sessions, in order, as full record batches; then their outcomes."""
        futures: list[asyncio.Future[Any]] = []
        # Per session: (index of a record batch, how many of its records are in it).
        spans: dict[str, list[tuple[int, int]]] = {sid: [] for sid in session_ids}
        error: DeliveryError | None = None
        builder = producer.create_batch()
        headers = self._headers
        value_of = self._value if self.json else partial(to_bytes, redact=self.redact)
        try:
            for session_id in session_ids:
                key = session_id.encode()
                span = spans[session_id]
                n = 0
                for row in batch[session_id]:
                    value = value_of(row)
                    head = headers(row, key)
                    if builder.append(timestamp=None, key=key, value=value, headers=head) is None:
                        if n:
                            span.append((len(futures), n))
                            n = 0
                        futures.append(await self._submit(producer, builder, partition))
                        builder = producer.create_batch()
                        # An empty batch takes any first record, however large.
                        builder.append(timestamp=None, key=key, value=value, headers=head)
                    n += 1
                if n:
                    span.append((len(futures), n))
            if builder.record_count():
                futures.append(await self._submit(producer, builder, partition))
        except DeliveryError as exc:
            error = exc
        if futures:
            remaining = deadline - asyncio.get_running_loop().time()
            await asyncio.wait(futures, timeout=max(remaining, 0.001))
        return {sid: _settled(futures, spans[sid], len(batch[sid]), error) for sid in session_ids}

    async def _submit(
        self, producer: AIOKafkaProducer, builder: Any, partition: int
    ) -> asyncio.Future[Any]:
        builder.close()  # full or the last one: no lingering in the accumulator
        try:
            fut: asyncio.Future[Any] = await producer.send_batch(
                builder, self.topic, partition=partition
            )
        except KafkaError as exc:
            raise DeliveryError(f"send failed: {exc!r}", retriable=True) from None
        return fut

    async def _reset(self) -> None:
        """After a failure start over with a fresh producer (a new idempotent sequence)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # it failed already; the next delivery reconnects
                await producer.stop()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._reset()


def _settled(
    futures: list[asyncio.Future[Any]],
    span: list[tuple[int, int]],
    total: int,
    error: DeliveryError | None,
) -> Outcome:
    """The acknowledged prefix of one session's ``total`` records: ``span`` says how many
    of them each record batch holds, in order; ``error`` stopped the sending."""
    done = 0
    for index, n in span:
        if index >= len(futures):  # the batch was never sent: the error stopped it
            break
        fut = futures[index]
        if not fut.done():
            return Outcome(done, DeliveryError("not acknowledged in time", retriable=True))
        if fut.cancelled() or fut.exception() is not None:
            exc = None if fut.cancelled() else fut.exception()
            return Outcome(done, DeliveryError(f"not acknowledged: {exc!r}", retriable=True))
        done += n
    if done == total:
        return Outcome(done)
    return Outcome(done, error or DeliveryError("not sent", retriable=True))
