"""The outbound side of one replica: the sinks, their relays, status, re-drive, transcripts.

Built in two steps because the store must know the routes before anything writes:
:func:`recorder_for` (from the validated ``outbound:`` section) goes into the
:class:`~talkwire.server.store.SessionStore`; :class:`OutboundService` then builds the
sinks (a misconfigured one is a :class:`ConfigError` naming its key) and runs one
:class:`~talkwire.server.outbound.relay.Relay` per sink in a TaskGroup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from talkwire.server.errors import TalkwireError
from talkwire.server.outbound.claims import SessionLocks, open_locks
from talkwire.server.outbound.connector import CONNECTOR_KEYS, ConnectorSink, Invoker
from talkwire.server.outbound.events import to_message
from talkwire.server.outbound.kafka import KAFKA_KEYS, KafkaSink
from talkwire.server.outbound.outbox import OutboundOutbox
from talkwire.server.outbound.record import EventRecorder
from talkwire.server.outbound.relay import Relay
from talkwire.server.outbound.settings import OutboundSettings, SinkSettings
from talkwire.server.outbound.sink import Sink
from talkwire.server.outbound.webhook import WEBHOOK_KEYS, WebhookSink
from talkwire.server.store import SessionRecord, SessionStore
from talkwire.v1 import conversation_pb2

__all__ = ["OutboundService", "SinkStatus", "build_sink", "recorder_for"]

log = logging.getLogger(__name__)

_PRUNE_EVERY = 300.0
_EXTRA = {"kafka": KAFKA_KEYS, "webhook": WEBHOOK_KEYS, "connector": CONNECTOR_KEYS}


def recorder_for(settings: OutboundSettings) -> EventRecorder:
    """The store's event recorder for these sinks."""
    return EventRecorder((s.route for s in settings.sinks), enabled=settings.relay.record)


@dataclass(frozen=True, slots=True)
class SinkStatus:
    name: str
    type: str
    pending: int
    oldest_pending_seconds: float
    dead_lettered: int
    delivered: int
    retried: int
    failed: int
    breaker: str


class OutboundService:
    """Runs the relays; an async context manager with an idempotent :meth:`aclose`."""

    def __init__(
        self,
        settings: OutboundSettings,
        store: SessionStore,
        connectors: Invoker,
        *,
        locks: SessionLocks | None = None,
        on_outcome: Callable[[str, str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings.check_known(_EXTRA)
        self.settings = settings
        self.store = store
        self.outbox = OutboundOutbox(store.executor, clock=clock)
        self._clock = clock
        self.sinks: list[Sink] = [
            build_sink(s, connectors, self._session_context) for s in settings.sinks
        ]
        self._locks = locks
        self._on_outcome = on_outcome
        self.relays: list[Relay] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._running: list[asyncio.Task[None]] = []
        self._closed = False

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        tasks = asyncio.TaskGroup()
        await tasks.__aenter__()
        self._tasks = tasks
        self._running.append(tasks.create_task(self._prune(), name="talkwire-outbound-prune"))
        if not self.sinks:
            return
        locks = self._locks or open_locks(self.store.url)
        self._locks = locks
        for sink, cfg in zip(self.sinks, self.settings.sinks, strict=True):
            await sink.start()
            self.relays.append(
                Relay(
                    sink,
                    cfg,
                    self.settings.relay,
                    self.outbox,
                    locks,
                    self.store.events,
                    on_outcome=self._on_outcome,
                )
            )
        for relay in self.relays:
            self._running.append(
                tasks.create_task(relay.run(), name=f"talkwire-outbound-{relay.name}")
            )

    async def _prune(self) -> None:
        """Every ``_PRUNE_EVERY`` seconds, drop events past ``relay.keep_events``."""
        keep = self.settings.relay.keep_events
        while True:
            try:
                dropped = await self.outbox.prune(keep)
            except TalkwireError as exc:
                log.warning("outbound: could not prune old events: %s", exc)
            else:
                if dropped:
                    log.info("outbound: dropped %d events older than %gs", dropped, keep)
            await asyncio.sleep(_PRUNE_EVERY)

    async def _session_context(
        self, session_id: str, redact: bool
    ) -> tuple[SessionRecord | None, list[conversation_pb2.ConversationEvent]]:
        record = await self.store.get_session(session_id)
        events = await self.transcript(session_id, limit=10_000, redact=redact)
        return record, events

    async def transcript(
        self, session_id: str, *, after: int = 0, limit: int = 100, redact: bool = False
    ) -> list[conversation_pb2.ConversationEvent]:
        """The session's user turns and durable frames after position ``after``."""
        rows = await self.outbox.transcript(session_id, after=after, limit=limit)
        return [to_message(r, redact=redact) for r in rows]

    async def status(self) -> list[SinkStatus]:
        """Backlog (from the store, all replicas) and this replica's counters, per sink."""
        backlog = await self.outbox.backlog(s.name for s in self.settings.sinks)
        now = self._clock()
        out = []
        relays: list[Relay | None] = list(self.relays) or [None] * len(self.settings.sinks)
        for relay, cfg in zip(relays, self.settings.sinks, strict=True):
            b = backlog[cfg.name]
            counters = relay.counters if relay is not None else None
            out.append(
                SinkStatus(
                    name=cfg.name,
                    type=cfg.type,
                    pending=b.pending,
                    oldest_pending_seconds=0.0
                    if b.oldest_created_at is None
                    else max(0.0, now - b.oldest_created_at),
                    dead_lettered=b.dead,
                    delivered=counters.delivered if counters else 0,
                    retried=counters.retried if counters else 0,
                    failed=counters.failed if counters else 0,
                    breaker=relay.breaker_state if relay is not None else "closed",
                )
            )
        return out

    async def healthy(self) -> bool:
        """False while a sink's breaker is open or its oldest event waits past ``stale_after``."""
        stale = self.settings.relay.stale_after
        return all(
            s.breaker != "open" and s.oldest_pending_seconds <= stale for s in await self.status()
        )

    async def redrive(self, sink: str = "") -> int:
        """Queue dead-lettered deliveries again; ``sink`` limits it to one sink."""
        return await self.outbox.redrive(sink or None)

    def sink_names(self) -> Sequence[str]:
        return [s.name for s in self.settings.sinks]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            for task in self._running:
                task.cancel()
            await tasks.__aexit__(None, None, None)
        for sink in self.sinks:
            await sink.aclose()
        if self._locks is not None:
            await self._locks.aclose()


def build_sink(
    settings: SinkSettings,
    connectors: Invoker,
    context: Callable[..., object],
) -> Sink:
    """The sink of one validated section."""
    if settings.type == "kafka":
        return KafkaSink(settings)
    if settings.type == "webhook":
        return WebhookSink(settings)
    return ConnectorSink(settings, connectors, context)  # type: ignore[arg-type]
