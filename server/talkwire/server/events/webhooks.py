"""Webhook ingress: HMAC-signed HTTP POSTs of change events into the same router.

A Starlette app served by uvicorn inside this process, on its own port::

    webhooks:
      listen: 127.0.0.1:8081        # port 0 picks a free one (see WebhookIngress.port)
      path: /events
      secrets: [env:TALKWIRE_WEBHOOK_SECRET, env:TALKWIRE_WEBHOOK_SECRET_PREVIOUS]
      tolerance: 300                # seconds a timestamp may be off
      max_body_bytes: 262144
      keys: ["order:{after.id}"]    # optional, as a Kafka topic's settings
      update_text: "Order {after.id} is now {after.status}"
      produce_to: erp.orders        # optional: produce to this Kafka topic instead
                                    # (needs events.bootstrap); one durable order

``POST /events`` takes a JSON ChangeEvent (``application/json``), a structured
CloudEvent (``application/cloudevents+json``) or a binary-mode CloudEvent
(``ce-id``, ``ce-source``, ``ce-type``, ... HTTP headers with JSON data).

Signing (the sender)::

    X-Talkwire-Timestamp: <unix seconds>
    X-Talkwire-Delivery:  <unique delivery id>
    X-Talkwire-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

Checks, in order: body size (413), timestamp within ``tolerance`` (401),
signature against every active secret with ``hmac.compare_digest`` (401),
decoding (400), then the delivery id and the routing as ONE store transaction
(409 for a used delivery id, and then nothing is pushed; 503 when the store is
down: nothing was recorded, retry with the same delivery id). A sender's retry
under the same ``X-Talkwire-Delivery`` is therefore never pushed twice, even
re-signed with a new timestamp, and neither is a different body under a used
id. The event id of a body without one is derived from the signed timestamp and
body, so a replay of a captured request never makes a second frame even under a
fresh delivery id (the delivery header is not signed). Responses are JSON:
``202 {"event_id", "delivered", "duplicate"}``.

With ``produce_to`` the event goes to Kafka, which shares no transaction with
the store: a used delivery id is refused (409) before producing and the id is
recorded after the broker acknowledged, so a crash in between makes the
sender's retry produce once more (at least once, never lost).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from talkwire.connectors.sections import Section
from talkwire.server.errors import AlreadyExistsError, ConfigError, UnavailableError
from talkwire.server.events.decode import DecodeError, decode
from talkwire.server.events.router import EventRouter
from talkwire.server.events.routing import TopicRoute
from talkwire.server.httpserve import HttpServer
from talkwire.server.store import FanoutResult, SessionStore
from talkwire.v1 import events_pb2

__all__ = ["WebhookIngress", "WebhookSettings", "sign"]

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "x-talkwire-timestamp"
SIGNATURE_HEADER = "x-talkwire-signature"
DELIVERY_HEADER = "x-talkwire-delivery"

_KEYS = frozenset(
    {
        "listen",
        "path",
        "secrets",
        "tolerance",
        "max_body_bytes",
        "keys",
        "ops",
        "fields",
        "update_text",
        "type",
        "source",
        "produce_to",
        "enabled",
    }
)


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Talkwire-Signature`` value for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


class WebhookSettings:
    """The validated ``webhooks:`` section."""

    def __init__(self, section: Mapping[str, Any], where: str = "webhooks") -> None:
        sec = Section(section, where, known=_KEYS)
        listen = sec.text("listen", "127.0.0.1:8081")
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise sec.error("listen", f"expected host:port, got {listen!r}")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.path = sec.text("path", "/events")
        secrets = sec.secrets("secrets")
        if not secrets:
            raise sec.error("secrets", "one or two secrets are required")
        if len(secrets) > 2:
            raise sec.error("secrets", "at most two active secrets (current, previous)")
        self.secrets: tuple[bytes, ...] = tuple(v.encode() for v in secrets)
        self.tolerance = sec.number("tolerance", 300.0, positive=True)
        self.max_body_bytes = sec.integer("max_body_bytes", 256 * 1024, minimum=1)
        self.route = TopicRoute.from_config("webhook", sec)
        self.produce_to = sec.text("produce_to", "")
        self.enabled = sec.flag("enabled", True)

    def __repr__(self) -> str:  # never show the secrets
        return f"WebhookSettings(listen={self.host}:{self.port}, secrets=<{len(self.secrets)}>)"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WebhookIngress:
    """The webhook HTTP endpoint; an async context manager (``port`` is the bound port)."""

    def __init__(
        self,
        config: Mapping[str, Any] | WebhookSettings,
        router: EventRouter,
        store: SessionStore,
        *,
        producer: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = config if isinstance(config, WebhookSettings) else WebhookSettings(config)
        self.router = router
        self.store = store
        self._producer = producer  # an AIOKafkaProducer when produce_to is set
        if self.settings.produce_to and producer is None:
            raise ConfigError("webhooks.produce_to: needs Kafka (events.bootstrap) configured")
        self._clock = clock
        self._http: HttpServer | None = None
        self._closed = False
        self.port: int = self.settings.port
        self.app = Starlette(routes=[Route(self.settings.path, self._handle, methods=["POST"])])

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}{self.settings.path}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Listen; ``ConfigError`` naming ``webhooks.listen`` when the address is taken."""
        self._http = HttpServer(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            key="webhooks.listen",
            name="talkwire-webhooks",
        )
        await self._http.start()
        self.port = self._http.port
        log.info("webhook ingress listening on %s", self.url)

    async def aclose(self) -> None:
        """Stop serving (in-flight requests finish). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._http is not None:
            await self._http.aclose()

    # -- request handling -------------------------------------------------

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _Rejected(413, f"body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Rejected(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _verify(self, request: Request, body: bytes) -> str:
        ts = request.headers.get(TIMESTAMP_HEADER, "")
        if not ts.isdigit():
            raise _Rejected(401, f"missing or invalid {TIMESTAMP_HEADER}")
        if abs(self._clock() - int(ts)) > self.settings.tolerance:
            raise _Rejected(401, "timestamp outside the allowed window")
        given = [
            part.strip().removeprefix("sha256=")
            for part in request.headers.get(SIGNATURE_HEADER, "").split(",")
            if part.strip().startswith("sha256=")
        ]
        if not given:
            raise _Rejected(401, f"missing {SIGNATURE_HEADER}")
        ok = False
        for secret in self.settings.secrets:
            expected = sign(secret, ts, body).removeprefix("sha256=")
            for candidate in given:
                ok |= hmac.compare_digest(expected.encode(), candidate.encode())
        if not ok:
            raise _Rejected(401, "bad signature")
        return ts

    def _decode(self, request: Request, body: bytes, ts: str) -> events_pb2.ChangeEvent:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        headers: list[tuple[str, bytes | None]] = [
            (k, v.encode()) for k, v in request.headers.items()
        ]
        fallback = "webhook-" + hashlib.sha256(ts.encode() + b"." + body).hexdigest()[:40]
        is_ce = content_type == "application/cloudevents+json" or "ce-id" in request.headers
        if not is_ce and content_type and "json" not in content_type:
            raise _Rejected(415, f"unsupported content type {content_type!r}")
        try:
            event = decode(
                "cloudevents" if is_ce else "json", body, None, headers, fallback_id=fallback
            )
        except DecodeError as exc:
            raise _Rejected(400, exc.reason) from None
        if event is None:  # pragma: no cover - only Debezium yields None
            raise _Rejected(400, "empty event")
        return event

    async def _handle(self, request: Request) -> JSONResponse:
        try:
            body = await self._read_body(request)
            ts = self._verify(request, body)
            delivery = request.headers.get(DELIVERY_HEADER, "")
            if not delivery or len(delivery) > 200:
                raise _Rejected(400, f"missing or invalid {DELIVERY_HEADER}")
            event = self._decode(request, body, ts)
            duplicate = False
            delivered = 0
            if self.settings.produce_to:
                await self._produce_once(event, delivery)
            else:
                result = await self._route(event, delivery)
                duplicate = event.id in result.duplicates
                delivered = result.delivered.get(event.id, 0)
        except _Rejected as exc:
            if exc.status >= 401:
                log.warning("webhook rejected (%d): %s", exc.status, exc.message)
            return _error(exc.status, exc.message)
        except UnavailableError:
            return JSONResponse(
                {"error": "temporarily unavailable, retry"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        return JSONResponse(
            {"event_id": event.id, "delivered": delivered, "duplicate": duplicate},
            status_code=202,
        )

    async def _route(self, event: events_pb2.ChangeEvent, delivery: str) -> FanoutResult:
        # The delivery id is claimed in the routing transaction itself: a used id
        # pushes nothing, and a failed (or crashed) transaction claims nothing, so
        # the sender's retry under the same id is routed.
        try:
            return await self.router.route(
                [(event, self.settings.route)], ingress="webhook", delivery_id=delivery
            )
        except AlreadyExistsError:
            raise _Rejected(409, "delivery already processed (replay)") from None

    async def _produce_once(self, event: events_pb2.ChangeEvent, delivery: str) -> None:
        # Kafka and the store share no transaction. Check, produce, then record:
        # a crash after producing makes the sender's retry produce again (at least
        # once toward Kafka), never a loss.
        if await self.store.delivery_recorded(delivery):
            raise _Rejected(409, "delivery already processed (replay)")
        await self._produce(event)
        await self.store.seen_delivery(delivery)

    async def _produce(self, event: events_pb2.ChangeEvent) -> None:
        key = event.keys[0].encode() if event.keys else None
        value = event.SerializeToString()
        try:
            await self._producer.send_and_wait(
                self.settings.produce_to,
                value=value,
                key=key,
                headers=[("content-type", b"application/x-protobuf")],
            )
        except Exception as exc:
            log.warning("webhook: producing to %s failed: %s", self.settings.produce_to, exc)
            raise UnavailableError("kafka unavailable") from exc
