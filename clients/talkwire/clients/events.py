"""Produce well-formed talkwire change events onto a Kafka topic.

::

    async with EventProducer("kafka:9092", topic="erp.orders", format="json") as producer:
        await producer.emit(
            "order.status_changed",
            ["order:1001"],
            after={"id": 1001, "status": "shipped"},
            text="Order 1001 has shipped",
        )

Every event gets a UUID id (unless given), ``occurred_at`` now and an op
(``update`` by default). The Kafka record key is the event's first key, so all
events of one key land on one partition and keep their order. Formats:
``protobuf`` (serialised ``talkwire.v1.ChangeEvent``), ``json`` (its JSON
mapping) and ``cloudevents`` (binary mode: ``ce_*`` headers and JSON data;
``cloudevents_mode="structured"`` sends the whole envelope). A ``traceparent``
(W3C trace context) given to :meth:`EventProducer.emit` travels as a header.

The producer uses ``acks=all``. Idempotent production is off by default
because not every Kafka-protocol broker supports it (Tansu does not); turn it
on with ``idempotence=True`` against Apache Kafka.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

from aiokafka import AIOKafkaProducer
from google.protobuf import json_format

from talkwire.v1 import events_pb2

__all__ = ["EventFormat", "EventProducer", "build_event", "encode_event"]

EventFormat = Literal["protobuf", "json", "cloudevents"]

_OPS = {
    "create": events_pb2.CHANGE_OP_CREATE,
    "update": events_pb2.CHANGE_OP_UPDATE,
    "delete": events_pb2.CHANGE_OP_DELETE,
    "snapshot": events_pb2.CHANGE_OP_SNAPSHOT,
}


def _op(op: str | int) -> int:
    if isinstance(op, int):
        return op
    key = op.strip().lower().removeprefix("change_op_")
    if key not in _OPS:
        raise ValueError(f"unknown op {op!r} (expected one of {', '.join(_OPS)})")
    return _OPS[key]


def build_event(
    type: str,
    keys: Sequence[str],
    *,
    after: Mapping[str, Any] | None = None,
    before: Mapping[str, Any] | None = None,
    op: str | int = "update",
    source: str = "talkwire.clients",
    id: str | None = None,
    text: str = "",
    attributes: Mapping[str, str] | None = None,
) -> events_pb2.ChangeEvent:
    """A complete ChangeEvent: UUID id unless given, ``occurred_at`` now."""
    if not type:
        raise ValueError("an event needs a type")
    if isinstance(keys, str):
        keys = [keys]
    event = events_pb2.ChangeEvent(
        id=id or str(uuid.uuid4()),
        source=source,
        type=type,
        keys=list(keys),
        op=_op(op),  # type: ignore[arg-type]
        text=text,
        attributes=dict(attributes or {}),
    )
    if after is not None:
        event.after.update(dict(after))
    if before is not None:
        event.before.update(dict(before))
    event.occurred_at.GetCurrentTime()
    return event


def _data(event: events_pb2.ChangeEvent) -> dict[str, Any]:
    full = json_format.MessageToDict(event, preserving_proto_field_name=True)
    data: dict[str, Any] = {"op": events_pb2.ChangeOp.Name(event.op).removeprefix("CHANGE_OP_")}
    data["op"] = data["op"].lower()
    for name in ("keys", "before", "after", "text"):
        if name in full:
            data[name] = full[name]
    return data


def encode_event(
    event: events_pb2.ChangeEvent,
    format: EventFormat = "protobuf",
    *,
    cloudevents_mode: Literal["binary", "structured"] = "binary",
    traceparent: str | None = None,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The record value and headers for ``event`` in ``format``."""
    headers: list[tuple[str, bytes]] = []
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    if format == "protobuf":
        headers.append(("content-type", b"application/x-protobuf"))
        return event.SerializeToString(), headers
    if format == "json":
        headers.append(("content-type", b"application/json"))
        body = json_format.MessageToDict(event, preserving_proto_field_name=True)
        return json.dumps(body, separators=(",", ":")).encode(), headers
    if format != "cloudevents":
        raise ValueError(f"unknown format {format!r} (protobuf, json or cloudevents)")
    attrs: dict[str, str] = {
        "specversion": "1.0",
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.occurred_at.ToJsonString(),
    }
    if event.keys:
        attrs["subject"] = event.keys[0]
    for name, value in event.attributes.items():
        attrs.setdefault(name, value)
    data = _data(event)
    if cloudevents_mode == "structured":
        headers.append(("content-type", b"application/cloudevents+json"))
        envelope: dict[str, Any] = {**attrs, "datacontenttype": "application/json", "data": data}
        return json.dumps(envelope, separators=(",", ":")).encode(), headers
    headers.append(("content-type", b"application/json"))
    headers.extend((f"ce_{name}", value.encode()) for name, value in attrs.items())
    return json.dumps(data, separators=(",", ":")).encode(), headers


class EventProducer:
    """An async Kafka producer of talkwire change events (an async context manager)."""

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        topic: str,
        format: EventFormat = "protobuf",
        cloudevents_mode: Literal["binary", "structured"] = "binary",
        source: str = "talkwire.clients",
        idempotence: bool = False,
        client_id: str = "talkwire-producer",
        **producer_options: Any,
    ) -> None:
        if format not in ("protobuf", "json", "cloudevents"):
            raise ValueError(f"unknown format {format!r} (protobuf, json or cloudevents)")
        self.topic = topic
        self.format: EventFormat = format
        self.cloudevents_mode: Literal["binary", "structured"] = cloudevents_mode
        self.source = source
        servers = [bootstrap] if isinstance(bootstrap, str) else list(bootstrap)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=idempotence,
            **producer_options,
        )
        self._started = False
        self._closed = False

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
        if not self._started:
            self._started = True
            await self._producer.start()

    async def aclose(self) -> None:
        """Flush and stop. Idempotent."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        await self._producer.stop()

    async def send(
        self,
        event: events_pb2.ChangeEvent,
        *,
        traceparent: str | None = None,
        format: EventFormat | None = None,
    ) -> None:
        """Produce an already built event (and wait for the broker's ack)."""
        value, headers = encode_event(
            event,
            format or self.format,
            cloudevents_mode=self.cloudevents_mode,
            traceparent=traceparent,
        )
        key = event.keys[0].encode() if event.keys else None
        await self._producer.send_and_wait(self.topic, value=value, key=key, headers=headers)

    async def emit(
        self,
        type: str,
        keys: Sequence[str],
        *,
        after: Mapping[str, Any] | None = None,
        before: Mapping[str, Any] | None = None,
        op: str | int = "update",
        source: str | None = None,
        id: str | None = None,
        text: str = "",
        attributes: Mapping[str, str] | None = None,
        traceparent: str | None = None,
    ) -> events_pb2.ChangeEvent:
        """Build, produce and return one event."""
        event = build_event(
            type,
            keys,
            after=after,
            before=before,
            op=op,
            source=source or self.source,
            id=id,
            text=text,
            attributes=attributes,
        )
        await self.send(event, traceparent=traceparent)
        return event
