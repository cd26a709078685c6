"""Decoding (four formats) and routing with the real SQLite store and a recording sink."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from talkwire.clients.events import build_event, encode_event
from talkwire.server.errors import UnavailableError
from talkwire.server.events.decode import DecodeError, decode, struct_to_dict
from talkwire.server.events.router import EventRouter
from talkwire.server.events.routing import TopicRoute, parse_topics
from talkwire.server.identity import Identity
from talkwire.server.store import SessionStore
from talkwire.server.tracing import ROUTE_SPAN, default_tracer
from talkwire.v1 import chat_pb2, events_pb2
from tests.events.conftest import RecordingSink

ORDER_ROUTE = TopicRoute.from_config(
    "orders",
    {
        "format": "json",
        "keys": ["order:{after.id}"],
        "update_text": "Order {after.id} is now {after.status}",
    },
)


def _dbz(op: str = "u", *, wrap: bool = False, lsn: int = 42) -> bytes:
    payload = {
        "before": {"id": 1001, "status": "packed"} if op != "c" else None,
        "after": {"id": 1001, "status": "shipped"} if op != "d" else None,
        "op": op,
        "ts_ms": 1714560000123,
        "source": {
            "connector": "postgresql",
            "name": "erp",
            "db": "shop",
            "schema": "public",
            "table": "orders",
            "lsn": lsn,
            "ts_ms": 1714560000000,
        },
    }
    doc = {"schema": {"type": "struct"}, "payload": payload} if wrap else payload
    return json.dumps(doc).encode()


def test_protobuf_decodes() -> None:
    ev = build_event("order.status_changed", ["order:1"], after={"id": 1, "status": "x"})
    value, headers = encode_event(ev, "protobuf", traceparent="00-abc-def-01")
    got = decode("protobuf", value, b"order:1", headers)
    assert got is not None
    assert got.id == ev.id
    assert struct_to_dict(got.after) == {"id": 1, "status": "x"}
    assert got.attributes["traceparent"] == "00-abc-def-01"


def test_json_decodes_with_short_op_and_rfc3339() -> None:
    body = {
        "id": "e1",
        "source": "erp",
        "type": "order.status_changed",
        "keys": ["order:1"],
        "op": "update",
        "after": {"id": 1, "status": "shipped"},
        "occurred_at": "2024-05-01T12:00:00Z",
    }
    got = decode("json", json.dumps(body).encode())
    assert got is not None
    assert got.op == events_pb2.CHANGE_OP_UPDATE
    assert got.occurred_at.seconds == 1714564800
    body["op"] = "CHANGE_OP_DELETE"
    got = decode("json", json.dumps(body).encode())
    assert got is not None
    assert got.op == events_pb2.CHANGE_OP_DELETE


def test_cloudevents_binary_and_structured() -> None:
    ev = build_event("order.status_changed", ["order:7"], after={"id": 7, "status": "late"})
    value, headers = encode_event(ev, "cloudevents")
    got = decode("cloudevents", value, None, headers)
    assert got is not None
    assert (got.id, got.type, list(got.keys)) == (ev.id, ev.type, ["order:7"])
    assert struct_to_dict(got.after)["status"] == "late"
    value, headers = encode_event(ev, "cloudevents", cloudevents_mode="structured")
    got = decode("cloudevents", value, None, headers)
    assert got is not None
    assert got.id == ev.id
    assert got.occurred_at == ev.occurred_at
    # a plain CloudEvent whose data is the record itself becomes `after`
    plain = {
        "specversion": "1.0",
        "id": "x1",
        "source": "crm",
        "type": "ticket.updated",
        "subject": "ticket:9",
        "time": "2024-05-01T12:00:00Z",
        "data": {"id": 9, "state": "open"},
    }
    got = decode("cloudevents", json.dumps(plain).encode())
    assert got is not None
    assert list(got.keys) == ["ticket:9"]
    assert struct_to_dict(got.after) == {"id": 9, "state": "open"}


@pytest.mark.parametrize("wrap", [False, True])
def test_debezium_envelope(wrap: bool) -> None:
    got = decode("debezium", _dbz(wrap=wrap), b'{"id":1001}', topic="erp.public.orders")
    assert got is not None
    assert got.op == events_pb2.CHANGE_OP_UPDATE
    assert got.source == "erp.shop.public.orders"
    assert struct_to_dict(got.after) == {"id": 1001, "status": "shipped"}
    again = decode("debezium", _dbz(wrap=not wrap), b'{"id":1001}')
    assert again is not None
    assert again.id == got.id  # re-delivery dedups, wrapper or not
    other = decode("debezium", _dbz(lsn=43), b'{"id":1001}')
    assert other is not None
    assert other.id != got.id
    assert decode("debezium", None, b'{"id":1001}') is None  # tombstone: skipped


@pytest.mark.parametrize(
    ("fmt", "value", "headers"),
    [
        ("protobuf", b"\xff\xff\xff", []),
        ("json", b"{not json", []),
        ("json", b'{"id": "x", "nope": 1}', []),
        ("json", b'{"id": "x", "op": "explode"}', []),
        ("cloudevents", b"{}", []),
        ("cloudevents", b"{}", [("ce_id", b"1")]),
        ("debezium", b'{"op": "t", "source": {}}', []),
        ("debezium", b"[1, 2]", []),
        ("avro", b"x", []),
    ],
)
def test_decode_errors_are_typed(fmt: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    with pytest.raises(DecodeError) as info:
        decode(fmt, value, None, headers)
    assert info.value.reason


async def _sessions(store: SessionStore, *keys: str) -> list[str]:
    out = []
    for i, key in enumerate(keys):
        record, _ = await store.create_session(Identity(f"user{i}", {}))
        if key:
            await store.subscribe(record.id, key)
        out.append(record.id)
    return out


def _update(payload: bytes) -> chat_pb2.Update:
    frame = chat_pb2.ConverseResponse.FromString(payload)
    assert frame.WhichOneof("frame") == "update"
    return frame.update


async def test_route_reaches_only_subscribers_once(
    store: SessionStore, sink: RecordingSink
) -> None:
    a, b = await _sessions(store, "order:1001", "order:2002")
    invalidated: list[list[str]] = []
    router = EventRouter(store, sink, invalidate=lambda keys: invalidated.append(list(keys)))
    ev = build_event("order.status_changed", [], after={"id": 1001, "status": "shipped"})
    result = await router.route([(ev, ORDER_ROUTE)])
    assert result.delivered == {ev.id: 1}
    assert set(result.frames) == {a}
    assert sink.sessions == {a}
    upd = _update(sink.frames(a)[0].payload)
    assert (upd.event_id, upd.key, upd.text) == (ev.id, "order:1001", "Order 1001 is now shipped")
    assert invalidated == [["order:1001"]]
    # the same event again: no second frame anywhere
    result = await router.route([(ev, ORDER_ROUTE)])
    assert result.duplicates == [ev.id]
    assert not result.frames
    assert [f.seq for f in await store.frames_after(a, 0)] == [1]
    assert await store.frames_after(b, 0) == []


async def test_keys_nobody_subscribes_make_nothing(
    store: SessionStore, sink: RecordingSink
) -> None:
    (a,) = await _sessions(store, "order:1")
    router = EventRouter(store, sink)
    ev = build_event("x", ["order:999"], after={"id": 999})
    result = await router.route([(ev, None)])
    assert result.delivered == {ev.id: 0}
    assert not sink.deliveries
    assert await store.frames_after(a, 0) == []


async def test_filters_ops_and_changed_fields(store: SessionStore, sink: RecordingSink) -> None:
    (a,) = await _sessions(store, "order:5")
    route = parse_topics(
        {"orders": {"keys": ["order:{row.id}"], "ops": ["update", "delete"], "fields": ["status"]}}
    )["orders"]
    router = EventRouter(store, sink)
    same = build_event(
        "t", [], before={"id": 5, "status": "a", "n": 1}, after={"id": 5, "status": "a", "n": 2}
    )
    created = build_event("t", [], op="create", after={"id": 5, "status": "a"})
    changed = build_event("t", [], before={"id": 5, "status": "a"}, after={"id": 5, "status": "b"})
    deleted = build_event("t", [], op="delete", before={"id": 5, "status": "b"})
    result = await router.route(
        [(same, route), (created, route), (changed, route), (deleted, route)]
    )
    assert [_update(f.payload).event_id for f in result.frames[a]] == [changed.id, deleted.id]


async def test_explicit_keys_plus_template_keys(store: SessionStore, sink: RecordingSink) -> None:
    a, b = await _sessions(store, "customer:c1", "order:8")
    route = TopicRoute.from_config("o", {"keys": ["order:{after.id}"]})
    ev = build_event("t", ["customer:c1"], after={"id": 8}, text="hello")
    result = await EventRouter(store, sink).route([(ev, route)])
    assert set(result.frames) == {a, b}
    assert _update(result.frames[b][0].payload).text == "hello"


async def test_publish_to_session_and_key(store: SessionStore, sink: RecordingSink) -> None:
    a, b = await _sessions(store, "order:1", "")
    router = EventRouter(store, sink)
    ev = events_pb2.ChangeEvent(type="note", text="hi")
    result = await router.publish(ev, session_id=b)
    assert ev.id  # assigned
    assert set(result.frames) == {b}
    result = await router.publish(events_pb2.ChangeEvent(id="p2", text="k"), key="order:1")
    assert set(result.frames) == {a}
    again = await router.publish(events_pb2.ChangeEvent(id="p2", text="k"), key="order:1")
    assert again.duplicates == ["p2"]


async def test_publish_records_a_route_span_and_a_failed_one(
    store: SessionStore, sink: RecordingSink
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    (a,) = await _sessions(store, "order:3")
    router = EventRouter(store, sink, tracer=default_tracer(provider))
    await router.publish(events_pb2.ChangeEvent(id="t1", text="one"), key="order:3")
    await router.publish(events_pb2.ChangeEvent(id="t1", text="one"), key="order:3")
    await store.aclose()  # the next publish cannot reach the store
    with pytest.raises(UnavailableError):
        await router.publish(events_pb2.ChangeEvent(id="t2", text="two"), key="order:3")
    spans = [s for s in exporter.get_finished_spans() if s.name == ROUTE_SPAN]
    outcome = [
        (
            s.attributes.get("talkwire.event.sessions"),
            s.attributes.get("talkwire.event.duplicate"),
            s.status.status_code,
        )
        for s in spans
        if s.attributes is not None
    ]
    assert outcome == [
        (1, False, StatusCode.UNSET),
        (0, True, StatusCode.UNSET),
        (None, None, StatusCode.ERROR),
    ]
    assert {s.attributes["talkwire.ingress"] for s in spans if s.attributes} == {"admin"}
    (frame,) = sink.frames(a)
    traceparent = chat_pb2.ConverseResponse.FromString(frame.payload).update.traceparent
    assert spans[0].context is not None
    assert traceparent.split("-")[2] == f"{spans[0].context.span_id:016x}"


async def test_route_spans_keep_their_own_keys_beside_unsampled_events(
    store: SessionStore, sink: RecordingSink
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # parent-based: an unsampled producer trace records nothing
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    await _sessions(store, "order:a", "order:b")
    unsampled = events_pb2.ChangeEvent(id="b", keys=["order:b"], text="b")
    unsampled.attributes["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    router = EventRouter(store, sink, tracer=default_tracer(provider))
    result = await router.route(
        [(events_pb2.ChangeEvent(id="a", keys=["order:a"], text="a"), None), (unsampled, None)]
    )
    assert result.delivered == {"a": 1, "b": 1}
    (span,) = [s for s in exporter.get_finished_spans() if s.name == ROUTE_SPAN]
    assert span.attributes is not None
    assert span.attributes["talkwire.event.id"] == "a"
    assert list(span.attributes["talkwire.event.keys"]) == ["order:a"]  # type: ignore[arg-type]


# -- Debezium MongoDB connector records (issue 18, "Also") --------------------------------

_OID = "665f1c2e9b1e8a3d4c2b1a00"
_MONGO_KEY = json.dumps({"id": json.dumps({"$oid": _OID})}).encode()


def _mongo(op: str, *, ord_: int = 1, wrap: bool = False, **fields: object) -> bytes:
    """A record as the Debezium 2.x MongoDB connector writes it (JSON converter)."""
    payload: dict[str, object] = {
        "before": None,
        "after": None,
        "updateDescription": None,
        "op": op,
        "ts_ms": 1714560000456,
        "transaction": None,
        "source": {
            "version": "2.6.1.Final",
            "connector": "mongodb",
            "name": "shop",
            "ts_ms": 1714560000000,
            "snapshot": "false",
            "db": "sales",
            "sequence": None,
            "rs": "rs0",
            "collection": "orders",
            "ord": ord_,
            "lsid": None,
            "txnNumber": None,
            "wallTime": 1714560000123,
        },
    }
    payload.update(fields)
    schema = {"type": "struct", "name": "shop.sales.orders.Envelope"}
    doc = {"schema": schema, "payload": payload} if wrap else payload
    return json.dumps(doc).encode()


def _ejson(doc: dict[str, object]) -> str:
    return json.dumps(doc)


_INSERTED = _ejson(
    {
        "_id": {"$oid": _OID},
        "number": {"$numberLong": "1001"},
        "status": "packed",
        "total": {"$numberDecimal": "99.90"},
        "placed_at": {"$date": 1714560000000},
        "lines": [{"sku": "A-1", "qty": {"$numberInt": "2"}}],
    }
)


@pytest.mark.parametrize("wrap", [False, True])
def test_mongo_insert_decodes_extended_json(wrap: bool) -> None:
    got = decode("debezium", _mongo("c", after=_INSERTED, wrap=wrap), _MONGO_KEY)
    assert got is not None
    assert got.op == events_pb2.CHANGE_OP_CREATE
    assert got.source == "shop.sales.orders"
    assert got.type == "orders.create"
    assert struct_to_dict(got.after) == {
        "_id": _OID,
        "number": 1001,
        "status": "packed",
        "total": "99.90",
        "placed_at": "2024-05-01T10:40:00.000Z",
        "lines": [{"sku": "A-1", "qty": 2}],
    }
    assert got.attributes["debezium.collection"] == "orders"
    again = decode("debezium", _mongo("c", after=_INSERTED, wrap=not wrap), _MONGO_KEY)
    assert again is not None and again.id == got.id  # a re-delivery dedups
    later = decode("debezium", _mongo("c", after=_INSERTED, ord_=2), _MONGO_KEY)
    assert later is not None and later.id != got.id


def test_mongo_update_with_update_description_only() -> None:
    description = {
        "removedFields": ["eta"],
        "updatedFields": _ejson({"status": "shipped", "shipped_at": {"$date": 1714563600000}}),
        "truncatedArrays": [],
    }
    got = decode("debezium", _mongo("u", updateDescription=description), _MONGO_KEY)
    assert got is not None
    assert got.op == events_pb2.CHANGE_OP_UPDATE
    assert not got.HasField("before")
    assert struct_to_dict(got.after) == {
        "_id": _OID,
        "status": "shipped",
        "shipped_at": "2024-05-01T11:40:00.000Z",
    }
    assert got.attributes["debezium.updated_fields"] == "status,shipped_at"
    assert got.attributes["debezium.removed_fields"] == "eta"


def test_mongo_1x_oplog_update_with_a_patch() -> None:
    patch = _ejson({"$v": 1, "$set": {"status": "shipped"}, "$unset": {"eta": True}})
    filter_ = _ejson({"_id": {"$oid": _OID}})
    got = decode("debezium", _mongo("u", patch=patch, filter=filter_), None)
    assert got is not None
    assert struct_to_dict(got.after) == {"_id": _OID, "status": "shipped"}
    assert got.attributes["debezium.removed_fields"] == "eta"


def test_mongo_update_with_the_full_document_and_a_pre_image() -> None:
    before = _ejson({"_id": {"$oid": _OID}, "status": "packed"})
    after = _ejson({"_id": {"$oid": _OID}, "status": "shipped"})
    description = {"removedFields": None, "updatedFields": _ejson({"status": "shipped"})}
    got = decode(
        "debezium",
        _mongo("u", before=before, after=after, updateDescription=description),
        _MONGO_KEY,
    )
    assert got is not None
    assert struct_to_dict(got.before) == {"_id": _OID, "status": "packed"}
    assert struct_to_dict(got.after) == {"_id": _OID, "status": "shipped"}


def test_mongo_delete_and_its_tombstone() -> None:
    got = decode("debezium", _mongo("d"), _MONGO_KEY)
    assert got is not None
    assert got.op == events_pb2.CHANGE_OP_DELETE
    assert struct_to_dict(got.before) == {"_id": _OID}
    assert not got.HasField("after")
    assert decode("debezium", None, _MONGO_KEY) is None


@pytest.mark.parametrize(
    ("record", "key"),
    [
        (_mongo("u"), _MONGO_KEY),  # an update with neither document nor description
        (_mongo("c", after="{not json"), _MONGO_KEY),
        (_mongo("c", after='"a string"'), _MONGO_KEY),
        (_mongo("u", updateDescription={"updatedFields": "[1]"}), _MONGO_KEY),
        (_mongo("d"), None),  # a delete that names no document
    ],
    ids=["update-without-change", "bad-json", "not-a-document", "fields-not-a-document", "delete"],
)
def test_mongo_shape_errors_are_decode_errors(record: bytes, key: bytes | None) -> None:
    with pytest.raises(DecodeError, match="mongodb"):
        decode("debezium", record, key)


async def test_mongo_records_route_through_key_templates(
    store: SessionStore, sink: RecordingSink
) -> None:
    a, b = await _sessions(store, f"order:{_OID}", "order:other")
    topics = parse_topics(
        {
            "all": {
                "format": "debezium",
                "keys": ["order:{row._id}"],
                "update_text": "{op} {row._id}",
            },
            "status": {
                "format": "debezium",
                "keys": ["order:{after._id}"],
                "fields": ["status"],
                "update_text": "Order {after.number} is now {after.status}",
            },
        }
    )
    shipped = {"updatedFields": _ejson({"status": "shipped", "number": {"$numberLong": "1001"}})}
    noted = {"updatedFields": _ejson({"note": "hi"}), "removedFields": []}
    items = [
        (_mongo("c", after=_INSERTED, ord_=1), "all"),
        (_mongo("u", ord_=2, updateDescription=noted), "all"),
        (_mongo("d", ord_=3), "all"),
        (_mongo("u", ord_=4, updateDescription=shipped), "status"),
        (_mongo("u", ord_=5, updateDescription=noted), "status"),  # status unchanged: dropped
    ]
    batch = []
    for record, topic in items:
        event = decode("debezium", record, _MONGO_KEY, topic="shop.sales.orders")
        assert event is not None
        batch.append((event, topics[topic]))
    result = await EventRouter(store, sink).route(batch)
    texts = [(_update(f.payload).key, _update(f.payload).text) for f in result.frames[a]]
    assert texts == [
        (f"order:{_OID}", f"create {_OID}"),
        (f"order:{_OID}", f"update {_OID}"),
        (f"order:{_OID}", f"delete {_OID}"),
        (f"order:{_OID}", "Order 1001 is now shipped"),
    ]
    assert b not in result.frames
