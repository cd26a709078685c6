"""The webhook sink: signed HTTPS POSTs of ``{"events": [...]}`` (one event or a small batch).

Signed with the scheme the inbound webhooks verify (:func:`talkwire.server.events.webhooks.sign`):
``X-Talkwire-Timestamp`` (unix seconds), ``X-Talkwire-Signature: sha256=HMAC(secret,
"<timestamp>." + body)`` and ``X-Talkwire-Delivery`` (the same on every re-send of the same
batch). 2xx (and 409: "already have it") is delivered; 408, 429, 5xx, timeouts and connection
errors are retried (``Retry-After`` honoured); other 4xx are dead-lettered at once.
The address goes through the connectors' SSRF guard (``allow_private``, ``allow_hosts``).

Keys: ``url``, ``secret``, ``batch`` (1-100), ``timeout``, ``concurrency``, ``headers``,
``allow_private``, ``allow_hosts``, ``verify``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Sequence

import httpx

from talkwire.connectors.breaker import CircuitBreaker
from talkwire.connectors.ssrf import BlockedAddressError, guarded_transport
from talkwire.server.events.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from talkwire.server.outbound.events import to_json
from talkwire.server.outbound.settings import SinkSettings
from talkwire.server.outbound.sink import DeliveryError, Outcome, StoredBatch, messages
from talkwire.v1 import conversation_pb2

__all__ = ["WEBHOOK_KEYS", "WebhookSink", "retry_after"]

WEBHOOK_KEYS = frozenset(
    {
        "url",
        "secret",
        "batch",
        "timeout",
        "concurrency",
        "headers",
        "allow_private",
        "allow_hosts",
        "verify",
    }
)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped at 1 h."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), 3600.0)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when - (time.time() if now is None else now)), 3600.0)


class WebhookSink:
    """POSTs each session's events in order, sessions in parallel (``concurrency``)."""

    type = "webhook"
    parts_in_flight = 1  # its `concurrency` bounds the requests to the endpoint

    def __init__(self, settings: SinkSettings) -> None:
        sec = settings.section
        self.name = settings.name
        self.redact = settings.redact
        self.url = sec.text("url")
        if not self.url.startswith(("https://", "http://")):
            raise sec.error("url", "required http(s) URL")
        self.secret = sec.secret("secret").encode()
        self.batch = sec.integer("batch", 1, minimum=1)
        if self.batch > 100:
            raise sec.error("batch", "at most 100 events per request")
        self.timeout = sec.number("timeout", 10.0, positive=True)
        self.concurrency = sec.integer("concurrency", 8, minimum=1)
        headers = sec.section("headers")
        self.headers = {str(k): str(v) for k, v in headers.raw.items()}
        verify = sec.get("verify", True)
        if not isinstance(verify, bool | str):
            raise sec.error("verify", "true, false or a CA bundle path")
        self.breaker = CircuitBreaker.from_config(
            settings.breaker, sec.child_key("breaker"), name=self.name
        )
        self.client = httpx.AsyncClient(
            transport=guarded_transport(
                allow_private=sec.flag("allow_private", False),
                allow_hosts=sec.strings("allow_hosts", ()),
                verify=verify,
            ),
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            trust_env=False,
        )
        self._closed = False

    async def start(self) -> None:
        """Nothing to connect ahead of the first delivery."""

    async def deliver(self, stored: StoredBatch) -> dict[str, Outcome]:
        batch = messages(stored, redact=self.redact)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(session_id: str) -> tuple[str, Outcome]:
            async with gate:
                return session_id, await self._session(batch[session_id])

        results = await asyncio.gather(*(one(sid) for sid in batch))
        return dict(results)

    async def _session(self, events: Sequence[conversation_pb2.ConversationEvent]) -> Outcome:
        done = 0
        for i in range(0, len(events), self.batch):
            chunk = events[i : i + self.batch]
            try:
                await self.post(chunk)
            except DeliveryError as exc:
                return Outcome(done, exc)
            done += len(chunk)
        return Outcome(done)

    async def post(self, events: Sequence[conversation_pb2.ConversationEvent]) -> None:
        """One signed POST; raises :class:`DeliveryError` unless the receiver took it."""
        body = json.dumps({"events": [to_json(e) for e in events]}, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        delivery = events[0].id if len(events) == 1 else f"{events[0].id}+{len(events)}"
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(self.secret, ts, body),
            DELIVERY_HEADER: delivery,
        }
        try:
            resp = await self.client.post(self.url, content=body, headers=headers)
        except BlockedAddressError as exc:
            raise DeliveryError(str(exc), retriable=False) from None
        except httpx.HTTPError as exc:
            raise DeliveryError(
                f"receiver unreachable ({type(exc).__name__})", retriable=True
            ) from None
        status = resp.status_code
        if 200 <= status < 300 or status == 409:
            return
        retriable = status in (408, 429) or status >= 500
        raise DeliveryError(
            f"receiver answered {status}",
            retriable=retriable,
            retry_after=retry_after(resp.headers.get("retry-after")),
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.client.aclose()
