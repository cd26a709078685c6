"""The sink contract: what the relay hands a sink and what it gets back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from talkwire.connectors.breaker import CircuitBreaker
from talkwire.server.outbound.events import StoredEvent, to_message
from talkwire.v1 import conversation_pb2

__all__ = ["DeliveryError", "Outcome", "SessionBatch", "Sink", "StoredBatch", "messages"]

StoredBatch = Mapping[str, Sequence[StoredEvent]]
"""Per session id, its next events in order, as stored: what the relay hands a sink."""

SessionBatch = Mapping[str, Sequence[conversation_pb2.ConversationEvent]]
"""Per session id, its next events in order, as messages."""


def messages(batch: StoredBatch, *, redact: bool) -> SessionBatch:
    """``batch`` as ``ConversationEvent`` messages (for sinks that work on messages)."""
    return {sid: [to_message(e, redact=redact) for e in events] for sid, events in batch.items()}


class DeliveryError(Exception):
    """A delivery that did not happen: ``retriable`` (5xx, timeout, broker down) or not (4xx)."""

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Outcome:
    """A session's result: its first ``delivered`` events are delivered; ``error`` stopped it."""

    delivered: int
    error: DeliveryError | None = None


class Sink(Protocol):
    """One ``outbound:`` destination. An async context manager with an idempotent ``aclose``.

    ``deliver`` gets several sessions' next events (stored rows: the sink builds its own
    wire form, redacted as its ``text:`` says) and must keep each session's order: it
    reports, per session, how many of its events (a prefix) were delivered.
    """

    name: str
    type: str
    breaker: CircuitBreaker | None
    parts_in_flight: int
    """How many parts of a large round the relay hands over at a time (disjoint sessions)."""

    async def start(self) -> None: ...

    async def deliver(self, batch: StoredBatch) -> dict[str, Outcome]: ...

    async def aclose(self) -> None: ...
