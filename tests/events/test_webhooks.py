"""Webhook ingress: a real uvicorn server on a loopback port, driven with httpx."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from talkwire.server.app import Application
from talkwire.server.errors import ConfigError
from talkwire.server.events.router import EventRouter
from talkwire.server.events.webhooks import WebhookIngress, sign
from talkwire.server.identity import Identity
from talkwire.server.store import SessionStore
from talkwire.v1 import chat_pb2
from tests.conftest import make_config
from tests.events.conftest import RecordingSink, create_topics
from tests.support.databases import temp_database
from tests.support.grpcx import Stream

CURRENT = "s3cr3t-current"
PREVIOUS = "s3cr3t-previous"


@pytest.fixture
async def hook(
    store: SessionStore, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[WebhookIngress]:
    monkeypatch.setenv("TW_HOOK_SECRET", CURRENT)
    cfg = {
        "listen": "127.0.0.1:0",
        "secrets": ["env:TW_HOOK_SECRET", PREVIOUS],
        "keys": ["order:{after.id}"],
        "update_text": "Order {after.id} is now {after.status}",
        "max_body_bytes": 4096,
    }
    async with WebhookIngress(cfg, EventRouter(store, sink), store) as ingress:
        assert ingress.port
        yield ingress


@pytest.fixture
async def session(store: SessionStore) -> str:
    record, _ = await store.create_session(Identity("u1", {}))
    await store.subscribe(record.id, "order:1001")
    return record.id


def _body(**over: Any) -> bytes:
    event = {
        "type": "order.status_changed",
        "op": "update",
        "after": {"id": 1001, "status": "shipped"},
    }
    event.update(over)
    return json.dumps(event).encode()


async def _post(
    hook: WebhookIngress,
    body: bytes,
    *,
    secret: str = CURRENT,
    ts: int | None = None,
    delivery: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    ts = int(time.time()) if ts is None else ts
    h = {
        "content-type": "application/json",
        "x-talkwire-timestamp": str(ts),
        "x-talkwire-signature": sign(secret, ts, body),
        "x-talkwire-delivery": delivery or str(uuid.uuid4()),
        **(headers or {}),
    }
    async with httpx.AsyncClient() as client:
        return await client.post(hook.url, content=body, headers=h)


async def test_good_signature_is_delivered(
    hook: WebhookIngress, session: str, sink: RecordingSink
) -> None:
    resp = await _post(hook, _body())
    assert resp.status_code == 202, resp.text
    assert resp.json()["delivered"] == 1
    update = chat_pb2.ConverseResponse.FromString(sink.frames(session)[0].payload).update
    assert update.text == "Order 1001 is now shipped"


@pytest.mark.parametrize(
    "kind", ["bad-signature", "old-timestamp", "future-timestamp", "unknown-secret", "tampered"]
)
async def test_rejected_with_nothing_pushed(
    hook: WebhookIngress, session: str, sink: RecordingSink, store: SessionStore, kind: str
) -> None:
    body = _body()
    now = int(time.time())
    if kind == "bad-signature":
        resp = await _post(hook, body, headers={"x-talkwire-signature": "sha256=" + "0" * 64})
    elif kind == "old-timestamp":
        resp = await _post(hook, body, ts=now - 400)
    elif kind == "future-timestamp":
        resp = await _post(hook, body, ts=now + 400)
    elif kind == "unknown-secret":
        resp = await _post(hook, body, secret="someone-else")
    else:
        ts = now
        headers = {"x-talkwire-signature": sign(CURRENT, ts, body)}
        resp = await _post(hook, _body(text="pwned"), ts=ts, headers=headers)
    assert resp.status_code == 401
    assert not sink.deliveries
    assert await store.frames_after(session, 0) == []


async def test_replayed_delivery_id_is_rejected(
    hook: WebhookIngress, session: str, sink: RecordingSink, store: SessionStore
) -> None:
    body = _body(id="evt-1")
    assert (await _post(hook, body, delivery="d-1")).status_code == 202
    replay = await _post(hook, body, delivery="d-1")
    assert replay.status_code == 409
    # a replay under a fresh delivery id (the header is not signed) still makes no frame
    body2 = _body()
    ts = int(time.time())
    assert (await _post(hook, body2, ts=ts, delivery="d-2")).status_code == 202
    again = await _post(hook, body2, ts=ts, delivery="d-3")
    assert again.status_code == 202
    assert again.json()["duplicate"] is True
    assert len(await store.frames_after(session, 0)) == 2


async def test_secret_rotation_accepts_both_active_secrets(
    hook: WebhookIngress, session: str, store: SessionStore
) -> None:
    assert (await _post(hook, _body(id="a"), secret=CURRENT)).status_code == 202
    assert (await _post(hook, _body(id="b"), secret=PREVIOUS)).status_code == 202
    assert len(await store.frames_after(session, 0)) == 2


async def test_cloudevents_binary_over_http_and_limits(
    hook: WebhookIngress, session: str, store: SessionStore
) -> None:
    data = json.dumps({"id": 1001, "status": "delayed"}).encode()
    ce = {
        "ce-id": "ce-1",
        "ce-source": "erp",
        "ce-type": "order.status_changed",
        "ce-specversion": "1.0",
        "ce-subject": "order:1001",
    }
    assert (await _post(hook, data, headers=ce)).status_code == 202
    frames = await store.frames_after(session, 0)
    assert chat_pb2.ConverseResponse.FromString(frames[0].payload).update.text == (
        "Order 1001 is now delayed"
    )
    assert (await _post(hook, b"x" * 5000)).status_code == 413
    assert (await _post(hook, b"{nope")).status_code == 400
    assert (await _post(hook, _body(), headers={"x-talkwire-delivery": ""})).status_code == 400


def test_config_errors_name_the_key(store: SessionStore) -> None:
    router = EventRouter(store)
    with pytest.raises(ConfigError, match=r"webhooks\.secrets"):
        WebhookIngress({"listen": "127.0.0.1:0"}, router, store)
    with pytest.raises(ConfigError, match=r"webhooks\.secrets\[0\]"):
        WebhookIngress({"secrets": ["env:TW_DEFINITELY_UNSET"]}, router, store)
    with pytest.raises(ConfigError, match=r"webhooks\.produce_to"):
        WebhookIngress({"secrets": ["x"], "produce_to": "t"}, router, store)


# -- the delivery id and the routing are one step (issue 18.3), on every store dialect --

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(params=BACKENDS)
async def hook_app(
    request: pytest.FixtureRequest, make_app: Any, tmp_path: Path
) -> AsyncIterator[Application]:
    async with temp_database(request.param, tmp_path) as url:
        webhooks = {
            "listen": "127.0.0.1:0",
            "secrets": [CURRENT],
            "keys": ["order:{after.id}"],
            "update_text": "Order {after.id} is now {after.status}",
        }
        policy = {"default": "deny", "rules": [{"key": "order:{order_id}"}]}
        config = make_config(tmp_path, store={"url": url}, webhooks=webhooks, policy=policy)
        app: Application = await make_app(config)
        yield app
        await app.aclose()


async def _subscribed(app: Application, channel: grpc.aio.Channel) -> tuple[Stream, str]:
    s = Stream(channel, "alice-token")
    opened = await s.open()
    await s.send(chat_pb2.ConverseRequest(id="sub", subscribe=chat_pb2.Subscribe(key="order:1001")))
    frame = await s.recv()
    assert frame.subscription.key == "order:1001" and frame.subscription.active, frame
    return s, opened.session_id


async def _updates_until(s: Stream, marker: str) -> list[str]:
    """Update texts read from the stream up to and including the ``marker`` update."""
    texts: list[str] = []
    while not texts or texts[-1] != marker:
        frame = await s.recv()
        if frame.WhichOneof("frame") == "update":
            texts.append(frame.update.text)
    return texts


async def _post_to(app: Application, body: bytes, *, ts: int, delivery: str) -> httpx.Response:
    assert app.webhooks is not None
    headers = {
        "content-type": "application/json",
        "x-talkwire-timestamp": str(ts),
        "x-talkwire-signature": sign(CURRENT, ts, body),
        "x-talkwire-delivery": delivery,
    }
    async with httpx.AsyncClient() as client:
        return await client.post(app.webhooks.url, content=body, headers=headers)


async def test_a_senders_retry_under_the_same_delivery_id_is_pushed_once(
    hook_app: Application,
) -> None:
    async with grpc.aio.insecure_channel(hook_app.target) as channel:
        s, session_id = await _subscribed(hook_app, channel)
        now = int(time.time())
        body = _body()  # no "id": the event id comes from the signed timestamp and body
        assert (await _post_to(hook_app, body, ts=now - 5, delivery="d-retry")).status_code == 202
        retry = await _post_to(hook_app, body, ts=now, delivery="d-retry")  # re-signed
        assert retry.status_code == 409, retry.text
        marker = _body(after={"id": 1001, "status": "marker"})
        assert (await _post_to(hook_app, marker, ts=now, delivery="d-marker")).status_code == 202
        assert await _updates_until(s, "Order 1001 is now marker") == [
            "Order 1001 is now shipped",
            "Order 1001 is now marker",
        ]
        assert len(await hook_app.store.frames_after(session_id, 1)) == 2  # after "subscription"
        s.cancel()


async def test_a_new_body_under_a_used_delivery_id_pushes_nothing(
    hook_app: Application,
) -> None:
    async with grpc.aio.insecure_channel(hook_app.target) as channel:
        s, session_id = await _subscribed(hook_app, channel)
        now = int(time.time())
        first = _body(id="evt-a")
        assert (await _post_to(hook_app, first, ts=now, delivery="d-used")).status_code == 202
        other = _body(id="evt-b", after={"id": 1001, "status": "cancelled"})
        refused = await _post_to(hook_app, other, ts=now, delivery="d-used")
        assert refused.status_code == 409, refused.text
        marker = _body(id="evt-c", after={"id": 1001, "status": "marker"})
        assert (await _post_to(hook_app, marker, ts=now, delivery="d-next")).status_code == 202
        assert await _updates_until(s, "Order 1001 is now marker") == [
            "Order 1001 is now shipped",
            "Order 1001 is now marker",
        ]
        assert len(await hook_app.store.frames_after(session_id, 1)) == 2
        s.cancel()


async def test_produce_to_refuses_a_used_delivery_id_before_producing(
    store: SessionStore, kafka_bootstrap: str, topic_name: str
) -> None:
    await create_topics(kafka_bootstrap, topic_name)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    cfg = {"listen": "127.0.0.1:0", "secrets": [CURRENT], "produce_to": topic_name}
    try:
        async with WebhookIngress(cfg, EventRouter(store), store, producer=producer) as hook:
            now = int(time.time())
            first = await _post(hook, _body(), ts=now - 5, delivery="p-1")
            assert first.status_code == 202, first.text
            retry = await _post(hook, _body(), ts=now, delivery="p-1")  # re-signed retry
            assert retry.status_code == 409, retry.text
            other = await _post(hook, _body(id="evt-other"), ts=now, delivery="p-1")
            assert other.status_code == 409, other.text
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic_name, 0)
        assert (await consumer.end_offsets([tp]))[tp] == 1  # produced once
    finally:
        await consumer.stop()


async def test_produce_to_in_a_running_server_reaches_the_session_through_kafka(
    make_app: Any, tmp_path: Path, kafka_bootstrap: str, topic_name: str
) -> None:
    # The webhook forwards to Kafka; the same server consumes that topic and pushes.
    await create_topics(kafka_bootstrap, topic_name)
    events = {
        "bootstrap": kafka_bootstrap,
        "group_id": f"tw-{uuid.uuid4().hex[:8]}",
        "session_timeout": 2.0,
        "heartbeat_interval": 0.3,
        "topics": {
            topic_name: {
                "format": "protobuf",
                "keys": ["order:{after.id}"],
                "update_text": "Order {after.id} is now {after.status}",
            }
        },
    }
    webhooks = {
        "listen": "127.0.0.1:0",
        "secrets": [CURRENT],
        "keys": ["order:{after.id}"],
        "produce_to": topic_name,
    }
    policy = {"default": "deny", "rules": [{"key": "order:{order_id}"}]}
    app: Application = await make_app(
        make_config(tmp_path, events=events, webhooks=webhooks, policy=policy)
    )
    async with grpc.aio.insecure_channel(app.target) as channel:
        s, _ = await _subscribed(app, channel)
        reply = await _post_to(app, _body(), ts=int(time.time()), delivery="via-kafka")
        assert reply.status_code == 202, reply.text
        assert await _updates_until(s, "Order 1001 is now shipped") == ["Order 1001 is now shipped"]
        s.cancel()
