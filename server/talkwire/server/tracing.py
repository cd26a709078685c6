"""OpenTelemetry spans on the event path: producer ``traceparent`` -> route -> pushed frame.

talkwire depends on the OpenTelemetry API only. Spans are recorded when the
process has an SDK tracer provider: install ``opentelemetry-sdk`` plus an
exporter and run ``opentelemetry-instrument talkwire serve`` (configured by the
standard ``OTEL_*`` environment variables), or pass a provider to
:class:`~talkwire.server.app.Application`. Without one every span is a no-op
and costs a few microseconds.

One span per routed event, ``talkwire.route`` (kind ``CONSUMER``), whose parent
is the W3C ``traceparent`` the producer sent (a Kafka record header or the
event's ``attributes["traceparent"]``). It covers filtering, the store
transaction and waking the live attachments, and records the event id, type,
keys, how many sessions got a frame and whether it was a duplicate. The pushed
``Update`` frame carries ``traceparent`` so a channel gateway can continue the
trace to the user's device: the route span's context when it is recorded, else
the producer's, unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import TracebackType

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from talkwire.v1 import events_pb2

__all__ = ["ROUTE_SPAN", "RouteSpans", "default_tracer"]

ROUTE_SPAN = "talkwire.route"
log = logging.getLogger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator()


def default_tracer(provider: trace.TracerProvider | None = None) -> Tracer:
    """The tracer of ``provider``, else of the process-wide provider (a no-op without an SDK)."""
    return trace.get_tracer("talkwire", tracer_provider=provider)


def _parent(traceparent: str) -> Context | None:
    return _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None


def _traceparent(span: Span) -> str:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


class RouteSpans:
    """The ``talkwire.route`` spans of one batch, ended together when the ``with`` block ends.

    ``with RouteSpans(tracer) as spans:`` ... :meth:`start` per event, then
    :meth:`outcome` once the batch is stored; leaving the block by an exception
    ends every span with that error instead.
    """

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._spans: list[tuple[str, Span]] = []
        self._current: Span | None = None  # the span of the event started last, if recorded
        self._delivered: Mapping[str, int] = {}
        self._duplicates: Sequence[str] = ()

    def __enter__(self) -> RouteSpans:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end(exc)

    def start(self, event: events_pb2.ChangeEvent, *, ingress: str) -> str:
        """Start the span of ``event``; return the ``traceparent`` its frame should carry."""
        incoming = event.attributes.get("traceparent", "")
        span = self._tracer.start_span(
            ROUTE_SPAN,
            context=_parent(incoming),
            kind=SpanKind.CONSUMER,
            attributes={
                "talkwire.ingress": ingress,
                "talkwire.event.id": event.id,
                "talkwire.event.type": event.type,
                "talkwire.event.source": event.source,
            },
        )
        if not span.is_recording():
            self._current = None
            return incoming
        self._current = span
        self._spans.append((event.id, span))
        return _traceparent(span)

    def keys(self, keys: Sequence[str]) -> None:
        """The subscription keys of the event started last."""
        if self._current is not None:
            self._current.set_attribute("talkwire.event.keys", list(keys))

    def outcome(self, delivered: Mapping[str, int], duplicates: Sequence[str]) -> None:
        """What the batch did: sessions reached per event id, and the duplicate ids."""
        self._delivered, self._duplicates = delivered, duplicates

    def _end(self, error: BaseException | None) -> None:
        """End every span: with the outcome per event, or with ``error`` for the whole batch.

        Never raises: a broken span processor must not fail a batch that is stored.
        """
        dup = set(self._duplicates)
        spans, self._spans, self._current = self._spans, [], None
        for event_id, span in spans:
            try:
                if error is not None:
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                else:
                    span.set_attribute("talkwire.event.sessions", self._delivered.get(event_id, 0))
                    span.set_attribute("talkwire.event.duplicate", event_id in dup)
                span.end()
            except Exception:
                log.exception("ending a trace span failed")
