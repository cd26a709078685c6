"""Webhook ingress: a real uvicorn server on a loopback port, driven with httpx."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from talkwire.server.errors import ConfigError
from talkwire.server.events.router import EventRouter
from talkwire.server.events.webhooks import WebhookIngress, sign
from talkwire.server.identity import Identity
from talkwire.server.store import SessionStore
from talkwire.v1 import chat_pb2
from tests.events.conftest import RecordingSink

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
