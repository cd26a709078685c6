"""The ``outbound:`` config section: the relay's settings and the sinks.

::

    outbound:
      relay: {poll_interval: 0.05, linger: 0.01, batch: 100, sessions: 200, record: true,
              stale_after: 60, keep_events: 2592000}

``relay.keep_events`` (seconds, default 30 days): older events that no sink waits for
are deleted (transcripts cover that window).
      analytics:                       # a sink name (1-64 of [A-Za-z0-9_-])
        type: kafka
        bootstrap: 127.0.0.1:9092
        topic: conversations
        format: protobuf               # protobuf | json
        on: [session.opened, frame.appended]   # kinds; "handoff.*" takes a family; default all
        text: include                  # include | redact (user and bot text, reply data)
      crm_hook:
        type: webhook
        url: https://crm.example.com/hooks/talkwire
        secret: env:CRM_HOOK_SECRET
        batch: 10
      crm_notes:
        connector: crm                 # type: connector is implied
        operation: add_note
        on: [session.closed]
        params: {customer_id: "{session.subject}", body: "{transcript}"}

Every sink also takes ``retries: {base_delay, max_delay}`` (full-jitter backoff),
``dead_letter: {max_attempts: 0, max_age: 86400}`` (0: never by count) and
``breaker: {failures: 5, reset_after: 30}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from talkwire.connectors.sections import Section
from talkwire.server.outbound.record import SinkRoute

__all__ = ["DeadLetterPolicy", "OutboundSettings", "RelaySettings", "SinkSettings"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_COMMON = {"type", "on", "text", "retries", "dead_letter", "breaker", "enabled"}
_TYPES = ("kafka", "webhook", "connector")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    poll_interval: float = 0.05
    linger: float = 0.01
    batch: int = 100
    sessions: int = 200
    record: bool = True
    stale_after: float = 60.0
    keep_events: float = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class DeadLetterPolicy:
    max_attempts: int = 0
    max_age: float = 86400.0


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """One sink's validated common part; ``section`` is the whole section for its type."""

    name: str
    type: str
    route: SinkRoute
    redact: bool
    base_delay: float
    max_delay: float
    dead_letter: DeadLetterPolicy
    breaker: Any
    section: Section


def _route(name: str, sec: Section) -> SinkRoute:
    kinds = sec.strings("on", ())
    if not kinds:
        return SinkRoute(name)
    for i, kind in enumerate(kinds):
        if not kind or len(kind) > 64:
            raise sec.error("on", f"item {i}: a kind has 1 to 64 characters")
    exact = frozenset(k for k in kinds if not k.endswith(".*"))
    prefixes = tuple(k[:-1] for k in kinds if k.endswith(".*"))
    return SinkRoute(name, exact, prefixes)


def _sink(name: str, sec: Section) -> SinkSettings:
    kind = sec.text("type", "connector" if "connector" in sec.raw else "", choices=_TYPES)
    if not kind:
        raise sec.error("type", f"required: one of {', '.join(_TYPES)}")
    retries = sec.section("retries", known={"base_delay", "max_delay"})
    dead = sec.section("dead_letter", known={"max_attempts", "max_age"})
    raw_breaker = sec.get("breaker")
    if raw_breaker is not None and raw_breaker is not False:
        sec.section("breaker", known={"failures", "reset_after"})
    return SinkSettings(
        name=name,
        type=kind,
        route=_route(name, sec),
        redact=sec.text("text", "include", choices=("include", "redact")) == "redact",
        base_delay=retries.number("base_delay", 0.2, positive=True),
        max_delay=retries.number("max_delay", 30.0, positive=True),
        dead_letter=DeadLetterPolicy(
            dead.integer("max_attempts", 0, minimum=0),
            dead.number("max_age", 86400.0, positive=True),
        ),
        breaker=raw_breaker,
        section=sec,
    )


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    relay: RelaySettings
    sinks: tuple[SinkSettings, ...]

    @classmethod
    def from_config(
        cls, raw: Mapping[str, Any] | None, where: str = "outbound"
    ) -> OutboundSettings:
        """Validate the section; an error names the key (``outbound.crm_hook.url``)."""
        top = Section(raw or {}, where)
        r = top.section(
            "relay",
            known={
                "poll_interval",
                "linger",
                "batch",
                "sessions",
                "record",
                "stale_after",
                "keep_events",
            },
        )
        relay = RelaySettings(
            poll_interval=r.number("poll_interval", 0.05, positive=True),
            linger=r.number("linger", 0.01, minimum=0.0),
            batch=r.integer("batch", 100, minimum=1),
            sessions=r.integer("sessions", 200, minimum=1),
            record=r.flag("record", True),
            stale_after=r.number("stale_after", 60.0, positive=True),
            keep_events=r.number("keep_events", 30 * 86400.0, positive=True),
        )
        sinks = []
        for name in top.raw:
            if name == "relay":
                continue
            if not isinstance(name, str) or not _NAME.match(name):
                raise top.error(str(name), "a sink name has 1-64 of A-Z a-z 0-9 _ -")
            sec = top.section(name)
            if not sec.flag("enabled", True):
                continue
            sinks.append(_sink(name, sec))
        if sinks and not relay.record:
            raise r.error("record", "cannot be false while sinks are configured")
        return cls(relay, tuple(sinks))

    def check_known(self, extra: Mapping[str, frozenset[str]]) -> None:
        """Refuse unknown keys of each sink (``extra``: the type's own keys)."""
        for s in self.sinks:
            s.section.check_known(_COMMON | extra[s.type])
