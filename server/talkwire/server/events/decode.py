"""Decoding change-event records into ``talkwire.v1.ChangeEvent``.

One function, :func:`decode`, per record: ``value`` bytes (``None`` for a
tombstone), ``key`` bytes and Kafka-style ``headers`` (``[(name, bytes)]``).
Formats:

``protobuf``
    the value is a serialised ``ChangeEvent``.
``json``
    the same shape as JSON (protobuf JSON mapping): ``{"id", "source", "type",
    "keys": [..], "op": "update" | "CHANGE_OP_UPDATE", "before": {..},
    "after": {..}, "occurred_at": "2024-05-01T12:00:00Z", "attributes": {..},
    "text"}``. Unknown fields are an error.
``cloudevents``
    binary mode: ``ce_id``, ``ce_source``, ``ce_type``, ``ce_time``,
    ``ce_subject`` headers (``ce-`` also accepted, as over HTTP) and JSON data;
    structured mode: ``content-type: application/cloudevents+json`` (or a JSON
    value carrying ``specversion``) with the whole envelope in the value.
    ``data`` shaped like a ChangeEvent (``after`` / ``before`` / ``op`` /
    ``keys`` / ``text``) is read as such; any other JSON object becomes
    ``after``. ``subject`` becomes an explicit key. Extension attributes
    ``op``, ``keys`` (comma separated) and ``text`` are honoured; other
    extensions land in ``attributes``.
``debezium``
    the Debezium envelope (``before`` / ``after`` / ``op`` c|u|d|r /
    ``source`` / ``ts_ms``), with or without the ``{"schema", "payload"}``
    wrapper. A tombstone (null value) decodes to ``None`` and is skipped. The
    id is derived from the source position (connector name, db, table, lsn or
    binlog file/pos/row), ``ts_ms`` and the record key, so a re-delivered
    record has the same id and deduplicates. Records of the MongoDB connector
    (``after`` / ``before`` as Extended JSON strings, ``updateDescription``,
    deletes without a document) are accepted too: see
    :mod:`talkwire.server.events.mongo` for what ``before`` / ``after`` then hold.

A ``traceparent`` header is copied into ``attributes`` for every format.
Anything that cannot be decoded raises :class:`DecodeError` with a reason.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from talkwire.server.events import mongo
from talkwire.v1 import events_pb2

__all__ = [
    "FORMATS",
    "MAX_EVENT_ID",
    "DecodeError",
    "Headers",
    "decode",
    "event_from_json",
    "header",
    "op_from_name",
    "op_name",
    "struct_to_dict",
]

FORMATS: Final = ("protobuf", "json", "cloudevents", "debezium")

Headers = Sequence[tuple[str, bytes | None]]

_OPS: Final[dict[str, int]] = {
    "create": events_pb2.CHANGE_OP_CREATE,
    "c": events_pb2.CHANGE_OP_CREATE,
    "insert": events_pb2.CHANGE_OP_CREATE,
    "update": events_pb2.CHANGE_OP_UPDATE,
    "u": events_pb2.CHANGE_OP_UPDATE,
    "delete": events_pb2.CHANGE_OP_DELETE,
    "d": events_pb2.CHANGE_OP_DELETE,
    "snapshot": events_pb2.CHANGE_OP_SNAPSHOT,
    "r": events_pb2.CHANGE_OP_SNAPSHOT,
    "read": events_pb2.CHANGE_OP_SNAPSHOT,
    "unspecified": events_pb2.CHANGE_OP_UNSPECIFIED,
}
_OP_NAMES: Final[dict[int, str]] = {
    events_pb2.CHANGE_OP_UNSPECIFIED: "unspecified",
    events_pb2.CHANGE_OP_CREATE: "create",
    events_pb2.CHANGE_OP_UPDATE: "update",
    events_pb2.CHANGE_OP_DELETE: "delete",
    events_pb2.CHANGE_OP_SNAPSHOT: "snapshot",
}
_CE_CORE: Final = frozenset(
    {"id", "source", "type", "time", "subject", "specversion", "datacontenttype", "dataschema"}
)
_CE_STRUCTURED: Final = "application/cloudevents+json"
_DBZ_POSITION: Final = (
    "connector",
    "name",
    "db",
    "schema",
    "table",
    "lsn",
    "txId",
    "file",
    "pos",
    "row",
    "gtid",
    "change_lsn",
    "commit_lsn",
    "event_serial_no",
    "ord",
    "sequence",
)


class DecodeError(ValueError):
    """A record could not be decoded; ``reason`` says why (it goes to the dead letter)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def op_from_name(name: str | int) -> events_pb2.ChangeOp.ValueType:
    """``"update"`` / ``"u"`` / ``"CHANGE_OP_UPDATE"`` / ``2`` -> ``CHANGE_OP_UPDATE``."""
    if isinstance(name, int) and not isinstance(name, bool):
        if name in _OP_NAMES:
            return events_pb2.ChangeOp.ValueType(name)
        raise DecodeError(f"unknown op {name!r}")
    if not isinstance(name, str):
        raise DecodeError(f"unknown op {name!r}")
    key = name.strip().lower()
    key = key.removeprefix("change_op_")
    if key in _OPS:
        return events_pb2.ChangeOp.ValueType(_OPS[key])
    raise DecodeError(f"unknown op {name!r}")


def op_name(op: int) -> str:
    """``CHANGE_OP_UPDATE`` -> ``"update"``."""
    return _OP_NAMES.get(op, "unspecified")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        if abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def struct_to_dict(struct: Struct) -> dict[str, Any]:
    """A Struct as plain Python values; integral numbers become ``int`` (1001, not 1001.0).

    What ``json_format.MessageToDict`` gives, walked directly (it is on every
    routed event's path); a non-finite number raises ``ValueError`` as it does.
    """
    return {k: _value(v) for k, v in struct.fields.items()}


def _value(value: Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise ValueError(f"Fail to serialize {number} for Value.number_value")
        return _plain(number)
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    return None


def header(headers: Headers, name: str) -> str | None:
    """The last value of header ``name`` (case-insensitive), decoded as UTF-8."""
    wanted = name.lower()
    found: bytes | None = None
    present = False
    for key, value in headers:
        if key.lower() == wanted:
            found, present = value, True
    if not present:
        return None
    return "" if found is None else found.decode("utf-8", errors="replace")


def _no_constant(name: str) -> Any:
    # NaN / Infinity are not JSON; a Struct holding one cannot be routed (its
    # templates' context cannot be built), so the record would be retried forever.
    raise ValueError(f"{name} is not a JSON number")


# json.loads(value, parse_constant=...) would build a decoder per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant)


def _json(value: bytes, what: str) -> Any:
    try:
        # what json.loads does with bytes: detect UTF-8/16/32, then decode the text
        return _DECODER.decode(value.decode(json.detect_encoding(value), "surrogatepass"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise DecodeError(f"{what} is not valid JSON: {exc}") from None


def _set_struct(target: Struct, value: Any, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise DecodeError(f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        target.update(dict(value))
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"{what}: {exc}") from None


def _set_time(target: Timestamp, value: Any, what: str) -> None:
    if value in (None, ""):
        return
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            target.FromMilliseconds(int(value))
        elif isinstance(value, str):
            target.FromJsonString(value)
        else:
            raise ValueError(f"unsupported value {value!r}")
    except ValueError as exc:
        raise DecodeError(f"{what}: not an RFC 3339 time: {exc}") from None


def _keys(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    if isinstance(value, list) and all(isinstance(k, str | int) for k in value):
        return [str(k) for k in value]
    raise DecodeError(f"{what} must be a list of strings")


def _with_trace(event: events_pb2.ChangeEvent, headers: Headers) -> events_pb2.ChangeEvent:
    traceparent = header(headers, "traceparent")
    if traceparent and "traceparent" not in event.attributes:
        event.attributes["traceparent"] = traceparent
    return event


# -- formats ---------------------------------------------------------------


def _decode_protobuf(value: bytes) -> events_pb2.ChangeEvent:
    event = events_pb2.ChangeEvent()
    try:
        event.ParseFromString(value)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"not a serialised talkwire.v1.ChangeEvent: {exc}") from None
    return event


def event_from_json(data: Any) -> events_pb2.ChangeEvent:
    """A ChangeEvent from its JSON shape (a parsed object); ``op`` may be ``"update"``."""
    if not isinstance(data, Mapping):
        raise DecodeError(f"a change event must be a JSON object, got {type(data).__name__}")
    event = _plain_event(data)
    if event is not None:
        return event
    body = dict(data)
    if "op" in body and body["op"] is not None:
        body["op"] = events_pb2.ChangeOp.Name(op_from_name(body["op"]))
    for name in ("occurred_at", "occurredAt"):
        if isinstance(body.get(name), int | float) and not isinstance(body.get(name), bool):
            ts = Timestamp()
            ts.FromMilliseconds(int(body[name]))
            body[name] = ts.ToJsonString()
    if isinstance(body.get("keys"), str):
        body["keys"] = _keys(body["keys"], "keys")
    if isinstance(body.get("attributes"), Mapping):
        body["attributes"] = {str(k): str(v) for k, v in body["attributes"].items()}
    # before/after are the bulk of a record: Struct.update is much cheaper than
    # json_format's generic walk, so they skip ParseDict.
    rows = {name: body.pop(name, None) for name in ("before", "after")}
    event = events_pb2.ChangeEvent()
    try:
        json_format.ParseDict(body, event)
        for name, row in rows.items():
            if row is None:
                continue
            if not isinstance(row, Mapping):
                raise DecodeError(f"{name} must be a JSON object, got {type(row).__name__}")
            getattr(event, name).update(row)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise DecodeError(f"not a talkwire.v1.ChangeEvent: {exc}") from None
    return event


# The fields the plain shape may carry (snake_case names only; ``occurredAt`` and
# the other protobuf JSON spellings take the general path).
_PLAIN_FIELDS: Final = frozenset(
    {"id", "source", "type", "text", "keys", "op", "occurred_at", "attributes", "before", "after"}
)
_PLAIN_TEXT: Final = frozenset({"id", "source", "type", "text"})
_RFC3339: Final = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)
_EPOCH: Final = datetime.date(1970, 1, 1)
_SECONDS_MIN: Final = -62135596800  # 0001-01-01T00:00:00Z, as Timestamp.FromJsonString checks
_SECONDS_MAX: Final = 253402300799  # 9999-12-31T23:59:59Z


@functools.lru_cache(maxsize=1024)
def _epoch_days(date: str) -> int | None:
    """Days from 1970-01-01 to ``YYYY-MM-DD`` (the events of a batch share a few dates)."""
    try:
        return (datetime.date.fromisoformat(date) - _EPOCH).days
    except ValueError:
        return None


def _plain_time(target: Timestamp, value: str) -> bool:
    """``Timestamp.FromJsonString`` for the usual RFC 3339 spelling, without ``strptime``.

    False (nothing set) for anything else; the general path then parses it, or
    reports the error, exactly as before.
    """
    m = _RFC3339.fullmatch(value)
    if m is None:
        return False
    date, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    days = _epoch_days(date)
    h, mi, sec = int(hour), int(minute), int(second)
    if days is None or h > 23 or mi > 59 or sec > 59:
        return False
    seconds = days * 86400 + h * 3600 + mi * 60 + sec
    if sign is not None:
        offset = (int(off_h) * 60 + int(off_m)) * 60
        seconds += -offset if sign == "+" else offset
    nanos = round(float("0." + frac) * 1e9) if frac else 0
    if not _SECONDS_MIN <= seconds <= _SECONDS_MAX or nanos >= 1_000_000_000:
        return False
    target.seconds = seconds
    target.nanos = nanos
    return True


def _plain_event(data: Mapping[str, Any]) -> events_pb2.ChangeEvent | None:
    """The usual JSON shape (``str`` fields, a ``keys`` list of strings, an RFC 3339
    ``occurred_at``, object rows) set field by field, without ``json_format``.

    None: some field is spelled or typed otherwise (camelCase, ``null``, a number
    for a time, keys as one string, an unknown field); the general path, which
    this matches field for field, then decodes the record or reports why not.
    """
    if not _PLAIN_FIELDS.issuperset(data):
        return None
    event = events_pb2.ChangeEvent()
    for name, value in data.items():
        kind = type(value)
        if name in _PLAIN_TEXT:
            if kind is not str:
                return None
            setattr(event, name, value)
        elif name == "op":
            if kind is not str and kind is not int:
                return None
            event.op = op_from_name(value)
        elif name == "keys":
            if kind is not list or not all(type(k) is str for k in value):
                return None
            event.keys.extend(value)
        elif name == "occurred_at":
            if kind is not str or not _plain_time(event.occurred_at, value):
                return None
        elif name == "attributes":
            if kind is not dict:
                return None
            for k, v in value.items():
                event.attributes[str(k)] = str(v)
        elif value is not None:  # before / after
            if kind is not dict:
                return None
            try:
                getattr(event, name).update(value)
            except (ValueError, TypeError):
                return None
    return event


def _decode_json(value: bytes) -> events_pb2.ChangeEvent:
    return event_from_json(_json(value, "the record value"))


_EVENT_SHAPE: Final = frozenset({"after", "before", "op", "keys", "text"})


def _apply_ce_data(event: events_pb2.ChangeEvent, data: Any) -> None:
    if data is None:
        return
    if isinstance(data, Mapping) and _EVENT_SHAPE & data.keys():
        for k in data:
            if k not in _EVENT_SHAPE:
                raise DecodeError(
                    f"cloudevents data: unexpected field {k!r} in a change-event shaped object"
                )
        if data.get("op") is not None:
            event.op = op_from_name(data["op"])
        event.keys.extend(_keys(data.get("keys"), "cloudevents data.keys"))
        _set_struct(event.before, data.get("before"), "cloudevents data.before")
        _set_struct(event.after, data.get("after"), "cloudevents data.after")
        if data.get("text"):
            event.text = str(data["text"])
        return
    _set_struct(event.after, data, "cloudevents data")


def _ce_event(attrs: Mapping[str, Any], data: Any) -> events_pb2.ChangeEvent:
    missing = [a for a in ("id", "source", "type") if not attrs.get(a)]
    if missing:
        raise DecodeError(f"cloudevents: missing required attribute(s) {', '.join(missing)}")
    event = events_pb2.ChangeEvent(
        id=str(attrs["id"]), source=str(attrs["source"]), type=str(attrs["type"])
    )
    _set_time(event.occurred_at, attrs.get("time"), "cloudevents time")
    if attrs.get("subject"):
        event.keys.append(str(attrs["subject"]))
    _apply_ce_data(event, data)
    for name, value in attrs.items():
        if name in _CE_CORE or value is None:
            continue
        if name == "op":
            event.op = op_from_name(str(value))
        elif name == "keys":
            event.keys.extend(k for k in _keys(str(value), "cloudevents keys") if k)
        elif name == "text":
            event.text = event.text or str(value)
        else:
            event.attributes[name] = str(value)
    if event.op == events_pb2.CHANGE_OP_UNSPECIFIED:
        event.op = events_pb2.CHANGE_OP_UPDATE
    deduped = list(dict.fromkeys(event.keys))
    del event.keys[:]
    event.keys.extend(deduped)
    return event


def _decode_cloudevents(value: bytes, headers: Headers) -> events_pb2.ChangeEvent:
    content_type = (header(headers, "content-type") or "").split(";")[0].strip().lower()
    ce_headers: dict[str, str] = {}
    for key, raw in headers:
        low = key.lower()
        if low.startswith(("ce_", "ce-")) and raw is not None:
            ce_headers[low[3:]] = raw.decode("utf-8", errors="replace")
    if content_type != _CE_STRUCTURED and "id" in ce_headers:
        data: Any = None
        if value:
            if content_type and "json" not in content_type:
                raise DecodeError(f"cloudevents: unsupported data content type {content_type!r}")
            data = _json(value, "cloudevents data")
        return _ce_event(ce_headers, data)
    envelope = _json(value, "the cloudevents envelope")
    if not isinstance(envelope, Mapping) or "specversion" not in envelope:
        raise DecodeError(
            "cloudevents: neither binary mode (ce_id header) nor a structured envelope"
        )
    attrs = {k: v for k, v in envelope.items() if k not in ("data", "data_base64")}
    body = envelope.get("data")
    if body is None and envelope.get("data_base64"):
        raise DecodeError("cloudevents: data_base64 is not supported; send JSON data")
    if isinstance(body, str):
        body = _json(body.encode(), "cloudevents data")
    return _ce_event(attrs, body)


def _decode_debezium(
    value: bytes | None, key: bytes | None, topic: str
) -> events_pb2.ChangeEvent | None:
    if value is None:
        return None
    doc = _json(value, "the debezium record")
    if doc is None:
        return None
    if isinstance(doc, Mapping) and "payload" in doc and set(doc) <= {"schema", "payload"}:
        doc = doc["payload"]
        if doc is None:
            return None
    if not isinstance(doc, Mapping):
        raise DecodeError("debezium: the envelope must be a JSON object")
    op = doc.get("op")
    if op not in ("c", "u", "d", "r"):
        raise DecodeError(f"debezium: unsupported op {op!r} (expected c, u, d or r)")
    source = doc.get("source") or {}
    if not isinstance(source, Mapping):
        raise DecodeError("debezium: source must be an object")
    extra: dict[str, str] = {}
    positions: Sequence[str] = _DBZ_POSITION
    if mongo.is_mongo_envelope(doc, source):
        try:
            doc, extra = mongo.normalise(doc, key)
        except ValueError as exc:
            raise DecodeError(f"debezium (mongodb): {exc}") from None
        positions = mongo.POSITION
    event = events_pb2.ChangeEvent(op=op_from_name(op))
    _set_struct(event.before, doc.get("before"), "debezium before")
    _set_struct(event.after, doc.get("after"), "debezium after")
    if op == "d" and doc.get("before") is None:
        raise DecodeError("debezium: a delete without 'before'")
    if op != "d" and doc.get("after") is None:
        raise DecodeError(f"debezium: op {op!r} without 'after'")
    table = ".".join(
        str(source[k])
        for k in ("name", "db", "schema", "table", "collection")
        if source.get(k) not in (None, "")
    )
    event.source = table or topic or "debezium"
    name = source.get("table") or source.get("collection") or topic or "row"
    event.type = f"{name}.{op_name(event.op)}"
    ts = source.get("ts_ms") if source.get("ts_ms") is not None else doc.get("ts_ms")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        event.occurred_at.FromMilliseconds(int(ts))
    position = {k: source[k] for k in positions if source.get(k) is not None}
    fingerprint = json.dumps(
        [position, doc.get("ts_ms"), op, key.hex() if key else None],
        sort_keys=True,
        default=str,
    )
    event.id = "dbz-" + hashlib.sha256(fingerprint.encode()).hexdigest()[:40]
    if key:
        parsed = _maybe_json(key)
        if isinstance(parsed, Mapping) and set(parsed) <= {"schema", "payload"}:
            parsed = parsed.get("payload")
        if isinstance(parsed, Mapping):
            event.attributes["debezium.key"] = json.dumps(parsed, sort_keys=True, default=str)
    for k in ("connector", "db", "table", "collection", "lsn", "file", "pos"):
        if source.get(k) is not None:
            event.attributes[f"debezium.{k}"] = str(source[k])
    event.attributes.update(extra)
    return event


def _maybe_json(value: bytes) -> Any:
    try:
        return json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def decode(
    fmt: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers = (),
    *,
    topic: str = "",
    fallback_id: str | None = None,
) -> events_pb2.ChangeEvent | None:
    """Decode one record; ``None`` for a Debezium tombstone (skip it, it is not an error).

    ``fallback_id`` (e.g. ``kafka:<topic>:<partition>:<offset>``) names an event
    that carries no id, so a re-delivered record still deduplicates; without
    one, an event with no id is a :class:`DecodeError`.
    """
    if fmt == "debezium":
        event = _decode_debezium(value, key, topic)
        return None if event is None else _with_trace(_checked_id(event), headers)
    if value is None:
        raise DecodeError("empty record (null value)")
    if fmt == "protobuf":
        event = _decode_protobuf(value)
    elif fmt == "json":
        event = _decode_json(value)
    elif fmt == "cloudevents":
        event = _decode_cloudevents(value, headers)
    else:
        raise DecodeError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if not event.id:
        if not fallback_id:
            raise DecodeError("the event has no id")
        event.id = fallback_id
    return _with_trace(_checked_id(event), headers)


MAX_EVENT_ID = 255
"""The longest event id the store keeps for deduplication (``processed_events.event_id``)."""


def _checked_id(event: events_pb2.ChangeEvent) -> events_pb2.ChangeEvent:
    # A longer id could never be stored: the record would be retried forever, stalling
    # its partition. It is dead-lettered instead.
    if len(event.id) > MAX_EVENT_ID:
        raise DecodeError(f"event id longer than {MAX_EVENT_ID} characters")
    return event
