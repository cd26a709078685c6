"""Per-topic routing: key templates, filters and the update text the user sees.

Config (the ``events.topics`` section; the webhook ingress takes the same keys)::

    topics:
      erp.orders:
        format: json                # protobuf | json | cloudevents | debezium
        keys: ["order:{after.id}", "customer:{after.customer_id}"]
        ops: [create, update]       # only these ops (default: all)
        fields: [status]            # only when one of these changed before -> after
        update_text: "Order {after.id} is now {after.status}"
        type: order.status_changed  # when the event has no type (Debezium rows)

Templates are the safe ``{name}`` / ``{dotted.name}`` language of
:mod:`talkwire.connectors.templates`; they see ``id``, ``source``, ``type``,
``op`` (``"update"``), ``keys``, ``before``, ``after``, ``row`` (``after``, or
``before`` for a delete), ``attributes`` and ``text``. A key template whose
value is missing (``after.id`` of a delete) derives no key; an event's own
``keys`` are always used as they are, then the template keys, deduplicated in
order. The update text is the event's ``text`` when set, else the rendered
``update_text``, else the event type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from talkwire.connectors.sections import Section
from talkwire.connectors.templates import TemplateError, compile_template
from talkwire.server.events.decode import FORMATS, DecodeError, op_from_name, op_name
from talkwire.server.events.decode import struct_to_dict as _struct_to_dict
from talkwire.v1 import events_pb2

__all__ = ["ROUTE_KEYS", "TopicRoute", "event_context", "parse_topics"]

log = logging.getLogger(__name__)

ROUTE_KEYS = frozenset({"format", "keys", "ops", "fields", "update_text", "type", "source"})


def event_context(event: events_pb2.ChangeEvent) -> dict[str, Any]:
    """What key and text templates see for ``event``."""
    before = _struct_to_dict(event.before) if event.HasField("before") else None
    after = _struct_to_dict(event.after) if event.HasField("after") else None
    return {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "op": op_name(event.op),
        "keys": list(event.keys),
        "before": before or {},
        "after": after or {},
        "row": after if after is not None else (before or {}),
        "attributes": dict(event.attributes),
        "text": event.text,
    }


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """How events of one topic (or the webhook ingress) are filtered, keyed and shown."""

    name: str
    format: str = "json"
    keys: tuple[str, ...] = ()
    ops: frozenset[int] | None = None
    fields: tuple[str, ...] = ()
    update_text: str = ""
    type: str = ""
    source: str = ""

    @classmethod
    def from_config(
        cls, name: str, section: Mapping[str, Any] | Section | None, *, where: str = ""
    ) -> TopicRoute:
        """Validate one topic's section; errors name the bad key (and its YAML line).

        A :class:`Section` is read as it is (its owner checked its keys: the
        webhook section carries these keys among its own).
        """
        if isinstance(section, Section):
            sec = section
        else:
            sec = Section(section, where or f"events.topics.{name}", known=ROUTE_KEYS)
        fmt = sec.text("format", "json", choices=FORMATS)
        keys = sec.strings("keys")
        ops: frozenset[int] | None = None
        if sec.get("ops") is not None:
            try:
                ops = frozenset(op_from_name(o) for o in sec.strings("ops"))
            except DecodeError as exc:
                raise sec.error("ops", exc.reason) from None
        text = sec.get("update_text", "")
        if not isinstance(text, str):
            raise sec.error("update_text", "expected a string")
        for key, template in [*(("keys", k) for k in keys), ("update_text", text)]:
            try:
                compile_template(template)
            except TemplateError as exc:
                raise sec.error(key, f"{template!r}: {exc}") from None
        return cls(
            name=name,
            format=fmt,
            keys=keys,
            ops=ops,
            fields=sec.strings("fields"),
            update_text=text,
            type=sec.text("type", ""),
            source=sec.text("source", ""),
        )

    def accepts(self, event: events_pb2.ChangeEvent, ctx: Mapping[str, Any] | None = None) -> bool:
        """Whether the op and changed-field filters let ``event`` through."""
        if self.ops is not None and event.op not in self.ops:
            return False
        if self.fields:
            ctx = ctx if ctx is not None else event_context(event)
            before, after = ctx["before"], ctx["after"]
            if not any(
                f in before or f in after
                if event.op in (events_pb2.CHANGE_OP_CREATE, events_pb2.CHANGE_OP_DELETE)
                else before.get(f) != after.get(f)
                for f in self.fields
            ):
                return False
        return True

    def derive_keys(
        self, event: events_pb2.ChangeEvent, ctx: Mapping[str, Any] | None = None
    ) -> list[str]:
        """The event's own keys, then the rendered key templates, deduplicated in order."""
        out = dict.fromkeys(k for k in event.keys if k)
        if self.keys:
            ctx = ctx if ctx is not None else event_context(event)
            for template in self.keys:
                try:
                    key = compile_template(template).render(ctx)
                except TemplateError as exc:
                    log.debug(
                        "route %s: key %r not derived for %s: %s",
                        self.name,
                        template,
                        event.id,
                        exc,
                    )
                    continue
                if key:
                    out[key] = None
        return list(out)

    def render_text(
        self, event: events_pb2.ChangeEvent, ctx: Mapping[str, Any] | None = None
    ) -> str:
        """The text shown to the user."""
        if event.text:
            return event.text
        if self.update_text:
            try:
                return compile_template(self.update_text).render(
                    ctx if ctx is not None else event_context(event)
                )
            except TemplateError as exc:
                log.debug("route %s: update_text not rendered for %s: %s", self.name, event.id, exc)
        return event.type or self.type


def parse_topics(section: Any, *, where: str = "events.topics") -> dict[str, TopicRoute]:
    """``{name: TopicRoute}`` from the ``topics`` mapping (or its :class:`Section`)."""
    sec = section if isinstance(section, Section) else Section(section, where)
    return {
        name: TopicRoute.from_config(name, body.raw, where=body.key)
        for name, body in sec.children()
    }
