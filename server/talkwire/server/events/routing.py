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

from talkwire.connectors.templates import TemplateError, compile_template
from talkwire.server.errors import ConfigError
from talkwire.server.events.decode import FORMATS, DecodeError, op_from_name, op_name
from talkwire.server.events.decode import struct_to_dict as _struct_to_dict
from talkwire.v1 import events_pb2

__all__ = ["TopicRoute", "event_context", "parse_topics"]

log = logging.getLogger(__name__)

_ROUTE_KEYS = frozenset({"format", "keys", "ops", "fields", "update_text", "type", "source"})


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


def _str_list(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected a list of strings")


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
        cls, name: str, section: Mapping[str, Any] | None, *, where: str = ""
    ) -> TopicRoute:
        """Validate one topic's section; errors name the bad key."""
        where = where or f"events.topics.{name}"
        section = section or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        for key in section:
            if key not in _ROUTE_KEYS:
                raise ConfigError(
                    f"{where}.{key}: unknown key (known: {', '.join(sorted(_ROUTE_KEYS))})"
                )
        fmt = str(section.get("format", "json"))
        if fmt not in FORMATS:
            raise ConfigError(f"{where}.format: {fmt!r} is not one of {', '.join(FORMATS)}")
        keys = _str_list(f"{where}.keys", section.get("keys"))
        ops: frozenset[int] | None = None
        if section.get("ops") is not None:
            try:
                ops = frozenset(op_from_name(o) for o in _str_list(f"{where}.ops", section["ops"]))
            except DecodeError as exc:
                raise ConfigError(f"{where}.ops: {exc.reason}") from None
        fields = _str_list(f"{where}.fields", section.get("fields"))
        text = section.get("update_text", "")
        if not isinstance(text, str):
            raise ConfigError(f"{where}.update_text: expected a string")
        for what, template in [*((f"keys[{i}]", k) for i, k in enumerate(keys)), ("text", text)]:
            try:
                compile_template(template)
            except TemplateError as exc:
                raise ConfigError(f"{where}.{what}: {exc}") from None
        return cls(
            name=name,
            format=fmt,
            keys=keys,
            ops=ops,
            fields=fields,
            update_text=text,
            type=str(section.get("type", "")),
            source=str(section.get("source", "")),
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
    """``{name: TopicRoute}`` from the ``topics`` mapping."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: expected a mapping of topic name -> settings")
    return {
        str(name): TopicRoute.from_config(str(name), body, where=f"{where}.{name}")
        for name, body in section.items()
    }
