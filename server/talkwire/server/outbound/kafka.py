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
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from talkwire.connectors.breaker import CircuitBreaker
from talkwire.server.events.settings import SecuritySettings
from talkwire.server.outbound.events import to_json
from talkwire.server.outbound.settings import SinkSettings
from talkwire.server.outbound.sink import DeliveryError, Outcome, SessionBatch
from talkwire.v1 import conversation_pb2

__all__ = ["KAFKA_KEYS", "KafkaSink", "cloudevent_headers"]

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


class KafkaSink:
    """Publishes to one topic with an idempotent producer."""

    type = "kafka"

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
        self._content_type = "application/json" if self.json else "application/protobuf"
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
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

    def _value(self, event: conversation_pb2.ConversationEvent) -> bytes:
        if self.json:
            return json.dumps(to_json(event), separators=(",", ":")).encode()
        return event.SerializeToString()

    async def _partitions(self, producer: AIOKafkaProducer) -> list[int]:
        try:
            async with asyncio.timeout(self.timeout):
                return sorted(await producer.partitions_for(self.topic))
        except (KafkaError, TimeoutError) as exc:
            raise DeliveryError(f"topic metadata unavailable: {exc!r}", retriable=True) from None

    async def deliver(self, batch: SessionBatch) -> dict[str, Outcome]:
        producer = await self._ready()
        partitions = await self._partitions(producer)
        sent: dict[str, list[asyncio.Future[Any]]] = {}
        failed: dict[str, DeliveryError] = {}
        for session_id, events in batch.items():
            futures = sent.setdefault(session_id, [])
            key = session_id.encode()
            # The key's partition once per session (the default murmur2 partitioner).
            partition = self._partitioner(key, partitions, partitions)
            for event in events:
                headers = cloudevent_headers(
                    event, source=self.source, content_type=self._content_type
                )
                try:
                    futures.append(
                        await producer.send(
                            self.topic,
                            self._value(event),
                            key=key,
                            partition=partition,
                            headers=headers,
                        )
                    )
                except KafkaError as exc:
                    failed[session_id] = DeliveryError(f"send failed: {exc!r}", retriable=True)
                    break
        everything = [f for futures in sent.values() for f in futures]
        if everything:
            await asyncio.wait(everything, timeout=self.timeout)
        out = {sid: self._settled(futures, failed.get(sid)) for sid, futures in sent.items()}
        if any(o.error for o in out.values()):
            await self._reset()
        return out

    @staticmethod
    def _settled(futures: list[asyncio.Future[Any]], error: DeliveryError | None) -> Outcome:
        """The acknowledged prefix of one session's records."""
        done = 0
        for fut in futures:
            if not fut.done():
                for rest in futures[done:]:
                    rest.cancel()
                return Outcome(done, DeliveryError("not acknowledged in time", retriable=True))
            if fut.cancelled() or fut.exception() is not None:
                exc = None if fut.cancelled() else fut.exception()
                return Outcome(done, DeliveryError(f"not acknowledged: {exc!r}", retriable=True))
            done += 1
        return Outcome(done, error)

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
