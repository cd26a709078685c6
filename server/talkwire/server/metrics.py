"""Prometheus metrics, on a registry owned by the application (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from talkwire.connectors.registry import CallRecord

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """Every metric talkwire exports; pass one instance to the components that report."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sessions_attached = Gauge(
            "talkwire_sessions_attached", "Live Converse streams on this replica", registry=r
        )
        self.sessions_opened = Counter("talkwire_sessions_opened", "Sessions created", registry=r)
        self.sessions_resumed = Counter("talkwire_sessions_resumed", "Sessions resumed", registry=r)
        self.frames_out = Counter(
            "talkwire_frames_out", "Frames written to Converse streams", registry=r
        )
        self.turn_seconds = Histogram(
            "talkwire_turn_seconds", "Turn handling time", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.events = Counter("talkwire_events", "Change events routed", ["outcome"], registry=r)
        self.event_to_push_seconds = Histogram(
            "talkwire_event_to_push_seconds",
            "Event occurred_at to frame committed",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag_total = Gauge(
            "talkwire_consumer_lag",
            "Kafka records not yet consumed (assigned partitions)",
            registry=r,
        )
        self.outbound_events = Counter(
            "talkwire_outbound_events",
            "Outbound deliveries by sink and outcome (delivered, retried, failed, dead_lettered)",
            ["sink", "outcome"],
            registry=r,
        )
        self.outbound_pending = Gauge(
            "talkwire_outbound_pending", "Events waiting for a sink", ["sink"], registry=r
        )
        self.outbound_oldest_seconds = Gauge(
            "talkwire_outbound_oldest_pending_seconds",
            "Age of the oldest event waiting for a sink",
            ["sink"],
            registry=r,
        )
        self.consumer_stalled = Gauge(
            "talkwire_consumer_stalled", "1 when the Kafka consumer made no progress", registry=r
        )
        self.connector_seconds = Histogram(
            "talkwire_connector_seconds",
            "Connector call latency",
            ["connector", "operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.connector_errors = Counter(
            "talkwire_connector_errors", "Connector call errors", ["connector", "code"], registry=r
        )
        self.connector_breaker = Gauge(
            "talkwire_connector_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["connector"],
            registry=r,
        )

    def events_routed(self, received: int, frames: int, duplicates: int) -> None:
        """Count a routed batch (the EventRouter reports through this)."""
        self.events.labels("received").inc(received)
        self.events.labels("frames").inc(frames)
        self.events.labels("duplicate").inc(duplicates)

    def outbound_outcome(self, sink: str, outcome: str, n: int) -> None:
        self.outbound_events.labels(sink, outcome).inc(n)

    def connector_call(self, record: CallRecord) -> None:
        """Observe one connector call (the ConnectorRegistry's observer hook)."""
        self.connector_seconds.labels(record.connector, record.operation).observe(record.seconds)
        if record.error is not None:
            self.connector_errors.labels(record.connector, record.error.code.name).inc()

    def breaker_state(self, connector: str, state: str) -> None:
        """Record a connector's breaker state (the ConnectorRegistry's on_breaker hook)."""
        self.connector_breaker.labels(connector).set(_BREAKER_LEVEL.get(state, 0))

    def push_latency(self, seconds: float) -> None:
        self.event_to_push_seconds.observe(seconds)
