"""The connector sink: call a connector operation per event (a CRM note, a case, a lead).

::

    crm_notes:
      connector: crm
      operation: add_note
      on: [session.closed]
      params: {customer_id: "{session.subject}", body: "{transcript}"}

Parameter templates see ``session`` (id, subject, channel, locale, attributes,
created_at), ``event`` (the event's JSON form), ``kind`` and ``transcript`` (the
session's turns and frames as ``who: text`` lines, redacted when ``text: redact``).
The call carries the event id as its idempotency key, so a re-sent event creates one
record where the connector honours idempotency keys.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from talkwire.connectors.base import CallContext
from talkwire.connectors.breaker import CircuitBreaker
from talkwire.connectors.errors import ConnectorError
from talkwire.connectors.templates import Template, TemplateError
from talkwire.server.errors import ConfigError
from talkwire.server.outbound.events import to_json, transcript_text
from talkwire.server.outbound.settings import SinkSettings
from talkwire.server.outbound.sink import DeliveryError, Outcome, StoredBatch, messages
from talkwire.server.store import SessionRecord
from talkwire.v1 import conversation_pb2

__all__ = ["CONNECTOR_KEYS", "ConnectorSink", "Invoker"]

CONNECTOR_KEYS = frozenset({"connector", "operation", "params"})

SessionContext = Callable[
    [str, bool],
    Awaitable[tuple[SessionRecord | None, Sequence[conversation_pb2.ConversationEvent]]],
]
"""(session id, redact) -> the session row and its transcript events."""


class Invoker(Protocol):
    """The connector registry's call surface."""

    def list(self) -> list[str]: ...

    def operation(self, connector: str, operation: str) -> Any: ...

    async def invoke(
        self,
        connector: str,
        operation: str,
        params: Mapping[str, Any] | None = None,
        ctx: CallContext | None = None,
    ) -> Any: ...


class ConnectorSink:
    """One operation call per event, a session's events one after the other."""

    type = "connector"
    parts_in_flight = 1  # one call at a time, session after session

    def __init__(self, settings: SinkSettings, invoker: Invoker, context: SessionContext) -> None:
        sec = settings.section
        self.name = settings.name
        self.redact = settings.redact
        self.connector = sec.text("connector")
        self.operation = sec.text("operation")
        if not self.connector:
            raise sec.error("connector", "required: a connector name")
        if self.connector not in invoker.list():
            raise sec.error("connector", f"no connector {self.connector!r} is configured")
        if not self.operation:
            raise sec.error("operation", "required: an operation of the connector")
        try:
            invoker.operation(self.connector, self.operation)
        except (ConnectorError, ConfigError, KeyError):
            raise sec.error(
                "operation", f"connector {self.connector!r} has no operation {self.operation!r}"
            ) from None
        params = sec.section("params")
        self.params: dict[str, Template] = {}
        for key, value in params.raw.items():
            try:
                self.params[str(key)] = Template(str(value))
            except TemplateError as exc:
                raise params.error(str(key), str(exc)) from None
        self.needs_transcript = any("transcript" in t.fields for t in self.params.values())
        self.breaker = CircuitBreaker.from_config(
            settings.breaker, sec.child_key("breaker"), name=self.name
        )
        self._invoker = invoker
        self._context = context

    async def start(self) -> None:
        """The connectors are opened by the application."""

    async def deliver(self, stored: StoredBatch) -> dict[str, Outcome]:
        batch = messages(stored, redact=self.redact)
        out: dict[str, Outcome] = {}
        for session_id, events in batch.items():
            out[session_id] = await self._session(session_id, events)
        return out

    async def _session(
        self, session_id: str, events: Sequence[conversation_pb2.ConversationEvent]
    ) -> Outcome:
        record, transcript = await self._context(session_id, self.redact)
        session = _session_values(session_id, record)
        text = transcript_text(transcript) if self.needs_transcript else ""
        done = 0
        for event in events:
            values = {"session": session, "event": to_json(event), "kind": event.kind}
            values["transcript"] = text
            try:
                params = {k: t.render_value(values) for k, t in self.params.items()}
            except TemplateError as exc:
                return Outcome(done, DeliveryError(f"params: {exc}", retriable=False))
            ctx = CallContext(subject=session["subject"], idempotency_key=event.id)
            try:
                await self._invoker.invoke(self.connector, self.operation, params, ctx)
            except ConnectorError as exc:
                return Outcome(done, DeliveryError(str(exc), retriable=exc.retriable))
            done += 1
        return Outcome(done)

    async def aclose(self) -> None:
        """Nothing of its own to close."""


def _session_values(session_id: str, record: SessionRecord | None) -> dict[str, Any]:
    if record is None:
        return {"id": session_id, "subject": "", "channel": "", "locale": "", "attributes": {}}
    return {
        "id": record.id,
        "subject": record.subject,
        "channel": record.channel,
        "locale": record.locale,
        "attributes": dict(record.attributes),
        "created_at": record.created_at,
    }
