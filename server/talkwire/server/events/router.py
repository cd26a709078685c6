"""The EventRouter: change events in, one ``update`` frame per subscribed session out.

Every ingress (Kafka, webhooks, ``AdminService.Publish``) ends here. For a
batch of events the router

1. applies each topic's filters and derives the subscription keys,
2. invalidates connector cache entries for those keys (before the push, so a
   reply built after the user sees the update never shows older data),
3. builds one ``ConverseResponse{update}`` template per event,
4. appends them with ONE :meth:`SessionStore.fanout` (one transaction,
   deduplicated by event id, gap-free seqs), and only then
5. hands the stored frames to the :class:`FrameSink` (the SessionHub), which
   wakes live attachments; sessions not attached here read them on resume.

``route`` raises ``UnavailableError`` when the store is down; nothing was
recorded and the caller retries the same batch (the Kafka ingress does not
commit past it).

An update frame's ``key`` is the event's first key (its primary key); a
session subscribed to several of an event's keys still gets one frame.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import Tracer

from talkwire.server.events.decode import struct_to_dict
from talkwire.server.events.routing import TopicRoute, event_context
from talkwire.server.frames import StoredFrame, encode_template, now_timestamp
from talkwire.server.store import FanoutEvent, FanoutResult, SessionStore
from talkwire.server.tracing import RouteSpans, default_tracer
from talkwire.v1 import chat_pb2, events_pb2

__all__ = ["EventRouter", "FrameSink", "RouterMetrics", "update_frame"]

log = logging.getLogger(__name__)


class FrameSink(Protocol):
    """Wakes live attachments (``SessionHub.deliver``): sync and non-blocking."""

    def deliver(self, frames: Mapping[str, Sequence[StoredFrame]]) -> None: ...


class RouterMetrics(Protocol):
    """Optional metrics hooks."""

    def events_routed(self, received: int, frames: int, duplicates: int) -> None: ...

    def push_latency(self, seconds: float) -> None: ...


class _NullSink:
    def deliver(self, frames: Mapping[str, Sequence[StoredFrame]]) -> None:
        return None


def update_frame(
    event: events_pb2.ChangeEvent,
    *,
    key: str,
    text: str,
    now: float | None = None,
    traceparent: str = "",
    sent_at: Timestamp | None = None,
) -> bytes:
    """The serialised ``ConverseResponse{update}`` template (no seq) for ``event``.

    ``sent_at`` (one per routed batch) is copied as it is; else it is ``now``.
    """
    frame = chat_pb2.ConverseResponse()
    if sent_at is not None:
        frame.sent_at.CopyFrom(sent_at)
    update = frame.update
    update.event_id = event.id
    update.traceparent = traceparent
    update.key = key
    update.type = event.type
    update.text = text
    update.source = event.source
    if event.HasField("after"):
        update.data.CopyFrom(event.after)
    elif event.HasField("before"):
        update.data.CopyFrom(event.before)
    if event.HasField("occurred_at"):
        update.occurred_at.CopyFrom(event.occurred_at)
    return encode_template(frame, now)


class EventRouter:
    """Routes change events into session outboxes; see the module docstring."""

    def __init__(
        self,
        store: SessionStore,
        sink: FrameSink | None = None,
        *,
        invalidate: Callable[[Iterable[str]], object] | None = None,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.time,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self._tracer = tracer if tracer is not None else default_tracer()
        self.sink: FrameSink = sink if sink is not None else _NullSink()
        self._invalidate = invalidate
        self._metrics = metrics
        self._clock = clock

    def prepare(
        self,
        event: events_pb2.ChangeEvent,
        route: TopicRoute | None,
        *,
        traceparent: str = "",
        sent_at: Timestamp | None = None,
    ) -> FanoutEvent | None:
        """Filter and key one event; ``None`` when the filters drop it or it has no keys."""
        if route is None:
            keys = list(dict.fromkeys(k for k in event.keys if k))
            text = event.text or event.type
        else:
            ctx = event_context(event)
            if not route.accepts(event, ctx):
                return None
            if route.type and not event.type:
                event.type = route.type
                ctx["type"] = event.type
            if route.source and not event.source:
                event.source = route.source
            keys = route.derive_keys(event, ctx)
            text = route.render_text(event, ctx)
        if not keys:
            return None
        return FanoutEvent(
            event_id=event.id,
            template=update_frame(
                event, key=keys[0], text=text, traceparent=traceparent, sent_at=sent_at
            ),
            keys=tuple(keys),
        )

    async def route(
        self,
        items: Sequence[tuple[events_pb2.ChangeEvent, TopicRoute | None]],
        *,
        ingress: str = "kafka",
        delivery_id: str | None = None,
    ) -> FanoutResult:
        """Route a batch in one store transaction, then wake the live attachments.

        ``delivery_id`` (webhooks) is claimed in that same transaction, even when
        the filters drop every event: a used one raises ``AlreadyExistsError``
        and nothing is pushed (see :meth:`SessionStore.fanout`).
        """
        with RouteSpans(self._tracer) as spans:
            prepared: list[FanoutEvent] = []
            occurred: dict[str, float] = {}
            sent_at = now_timestamp()  # one stamp for the batch
            for event, route in items:
                fan = self.prepare(
                    event,
                    route,
                    traceparent=spans.start(event, ingress=ingress),
                    sent_at=sent_at,
                )
                if fan is None:
                    continue
                spans.keys(fan.keys)
                prepared.append(fan)
                if event.HasField("occurred_at"):
                    occurred[event.id] = event.occurred_at.ToNanoseconds() / 1e9
            result = await self._fanout(
                prepared, occurred, received=len(items), delivery_id=delivery_id
            )
            spans.outcome(result.delivered, result.duplicates)
        return result

    async def publish(
        self,
        event: events_pb2.ChangeEvent,
        *,
        session_id: str | None = None,
        key: str | None = None,
    ) -> FanoutResult:
        """``AdminService.Publish``: push ``event`` to one session or every subscriber of a key.

        With neither target the event's own keys are used. An empty id gets a
        fresh UUID (written back into ``event``).
        """
        if not event.id:
            event.id = str(uuid.uuid4())
        keys = [key] if key else list(dict.fromkeys(k for k in event.keys if k))
        text = event.text or event.type
        frame_key = keys[0] if keys else ""
        with RouteSpans(self._tracer) as spans:
            traceparent = spans.start(event, ingress="admin")
            spans.keys(keys or [f"session:{session_id}"])
            fan = FanoutEvent(
                event_id=event.id,
                template=update_frame(event, key=frame_key, text=text, traceparent=traceparent),
                keys=tuple(keys) if not session_id else (),
                session_id=session_id or None,
            )
            occurred = (
                {event.id: event.occurred_at.ToNanoseconds() / 1e9}
                if event.HasField("occurred_at")
                else {}
            )
            result = await self._fanout([fan], occurred, received=1)
            spans.outcome(result.delivered, result.duplicates)
        return result

    async def _fanout(
        self,
        prepared: list[FanoutEvent],
        occurred: Mapping[str, float],
        *,
        received: int,
        delivery_id: str | None = None,
    ) -> FanoutResult:
        if not prepared and delivery_id is None:
            return FanoutResult()
        if self._invalidate is not None:
            keys = dict.fromkeys(k for fan in prepared for k in fan.keys)
            if keys:
                try:
                    self._invalidate(list(keys))
                except Exception:
                    log.exception("connector cache invalidation failed")
        result = await self.store.fanout(prepared, delivery_id=delivery_id)
        if result.frames:
            try:
                self.sink.deliver(result.frames)
            except Exception:
                log.exception("waking live attachments failed (frames are stored)")
        if self._metrics is not None:
            self._report(result, occurred, received)
        return result

    def _report(self, result: FanoutResult, occurred: Mapping[str, float], received: int) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        frames = sum(len(v) for v in result.frames.values())
        try:
            metrics.events_routed(received, frames, len(result.duplicates))
            now = self._clock()
            for event_id, count in result.delivered.items():
                at = occurred.get(event_id)
                if count and at:
                    metrics.push_latency(max(0.0, now - at))
        except Exception:
            log.exception("router metrics failed")

    @staticmethod
    def describe(event: events_pb2.ChangeEvent) -> dict[str, Any]:
        """A short, log-safe description of an event (no payload values)."""
        return {
            "id": event.id,
            "type": event.type,
            "source": event.source,
            "keys": list(event.keys),
            "after_fields": sorted(struct_to_dict(event.after)) if event.HasField("after") else [],
        }
