"""The application: builds every component from the config and runs the gRPC server.

:class:`Application` is one async context manager. Entering it opens the
store, the connectors, the dialogue engine, the event ingress (Kafka and
webhooks when configured), the gRPC server (chat, admin, health, reflection)
and the background sweeper; :meth:`Application.drain` is the graceful
shutdown: health NOT_SERVING, new streams refused, a grace period for turns in
flight, then every stream ends with ``UNAVAILABLE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import TracerProvider
from prometheus_client import start_http_server

from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.admin import AdminService
from talkwire.server.auth import Authenticator, build_authenticator
from talkwire.server.bus import open_hub
from talkwire.server.chat import SERVICE_NAME as CHAT_SERVICE
from talkwire.server.chat import ChatService
from talkwire.server.config import Config
from talkwire.server.errors import ConfigError
from talkwire.server.events.kafka import KafkaIngress
from talkwire.server.events.router import EventRouter
from talkwire.server.events.routing import parse_topics
from talkwire.server.hub import SessionHub
from talkwire.server.idempotency import SqlIdempotencyStore
from talkwire.server.metrics import Metrics
from talkwire.server.store import Retention, SessionStore
from talkwire.server.tracing import default_tracer
from talkwire.server.turns import AllowAllPolicy, EchoHandler, SubscriptionPolicy, TurnHandler
from talkwire.v1 import admin_pb2, admin_pb2_grpc, chat_pb2

__all__ = ["READY_SERVICE", "Application", "server_options"]

READY_SERVICE = "talkwire.ready"

log = logging.getLogger(__name__)

EVENTS_HEALTH = "talkwire.events"

DEMO_POLICY: Mapping[str, Any] = {
    "rules": [
        {"key": "customer:{user.customer_id}"},
        {
            "key": "order:{order_id}",
            "check": {
                "connector": "crm",
                "operation": "order_owner",
                "params": {"order_id": "{order_id}"},
                "expect": {"customer_id": "{user.customer_id}"},
            },
        },
        {
            "key": "ticket:{ticket_id}",
            "check": {
                "connector": "crm",
                "operation": "ticket_status",
                "params": {"ticket_id": "{ticket_id}", "customer_id": "{user.customer_id}"},
                "expect": {"ticket_id": "{ticket_id}"},
            },
        },
    ]
}


def server_options(config: Config) -> list[tuple[str, Any]]:
    """gRPC server options sized for many long-lived streams."""
    s = config.server
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.server.max_pending_requests", s.max_pending_requests),
        ("grpc.server.max_pending_requests_hard_limit", s.max_pending_requests * 2),
        ("grpc.keepalive_time_ms", int(s.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]
    if s.max_connection_age > 0:
        options += [
            ("grpc.max_connection_age_ms", int(s.max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(s.grace_period * 1000)),
        ]
    return options


class Application:
    """Everything one talkwire replica runs."""

    def __init__(
        self,
        config: Config,
        *,
        handler: TurnHandler | None = None,
        policy: SubscriptionPolicy | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        # None: the process-wide OpenTelemetry provider (a no-op without an SDK).
        self._tracer = default_tracer(tracer_provider)
        self._handler_override = handler
        self._policy_override = policy
        self._stack = contextlib.AsyncExitStack()
        self._server: grpc.aio.Server | None = None
        self._chat: ChatService | None = None
        self._health = HealthServicer()
        self._tasks: asyncio.TaskGroup | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._ingress_watch: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._metrics_httpd: WSGIServer | None = None
        self.metrics_port = 0
        self._closed = False
        self.port = 0
        self.store: SessionStore
        self.hub: SessionHub
        self.connectors: ConnectorRegistry
        self.idempotency: SqlIdempotencyStore
        self.router: EventRouter
        self.authenticator: Authenticator
        self.handler: TurnHandler

    @property
    def target(self) -> str:
        host = self.config.server.listen.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
        if host in ("0.0.0.0", "::"):  # noqa: S104 - only used to build a client target
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start(self) -> None:
        cfg = self.config
        self.authenticator = build_authenticator(cfg.auth)
        connector_sections, bot, policy_section = await self._demo_or_config()
        _ensure_sqlite_dir(cfg.store.url)
        self.store = await self._stack.enter_async_context(
            SessionStore(
                cfg.store.url,
                retention=Retention(cfg.store.retention_frames, cfg.store.retention_age),
                pool_size=cfg.store.pool_size,
            )
        )
        self.hub = await self._stack.enter_async_context(
            open_hub(self.store, cfg, on_ready=self._set_ready)
        )
        self.idempotency = SqlIdempotencyStore(self.store.executor)
        self.connectors = await self._stack.enter_async_context(
            ConnectorRegistry(
                connector_sections,
                observer=self.metrics.connector_call,
                on_breaker=self.metrics.breaker_state,
                idempotency=self.idempotency,
                idempotency_window=cfg.store.idempotency_window,
            )
        )
        self.handler = self._build_handler(bot)
        policy = self._policy_override or self._build_policy(policy_section)
        self.router = EventRouter(
            self.store,
            self.hub,
            topics=parse_topics(cfg.events.get("topics") or {}),
            invalidate=self.connectors.invalidate,
            metrics=self.metrics,
            tracer=self._tracer,
        )
        await self._start_ingress()
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._sweeper = self._tasks.create_task(self._sweep())
        self._watchdog = self._tasks.create_task(self._watch_writes())
        if self.kafka is not None:
            self._ingress_watch = self._tasks.create_task(self._watch_ingress())
        await self._start_grpc(policy)
        self._start_metrics()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._set_ready(getattr(self.hub, "ready", True))
        for name in (CHAT_SERVICE, admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("talkwire listening on %s (config: %s)", self.target, cfg.source)

    async def _set_ready(self, ready: bool) -> None:
        """Readiness (health service ``talkwire.ready``): NOT_SERVING while draining or bus down.

        Liveness is the overall service ``""``: SERVING while the process runs.
        """
        status = health_pb2.HealthCheckResponse
        serving = ready and not (hasattr(self, "hub") and self.hub.draining)
        await self._health.set(READY_SERVICE, status.SERVING if serving else status.NOT_SERVING)

    async def _demo_or_config(self) -> tuple[Mapping[str, Any], Any, Mapping[str, Any]]:
        cfg = self.config
        if not cfg.demo:
            return cfg.connectors, cfg.bot, cfg.policy
        from talkwire.connectors.demo.config import demo_connector_sections
        from talkwire.connectors.demo.crm import create_demo_crm
        from talkwire.connectors.demo.erp import serve_demo_erp
        from talkwire.server.dialogue import demo_bot_path

        data = Path(cfg.server.data_dir)
        await asyncio.to_thread(data.mkdir, parents=True, exist_ok=True)
        crm_url = f"sqlite+aiosqlite:///{data / 'demo-crm.db'}"
        await create_demo_crm(crm_url)
        erp_url = await self._stack.enter_async_context(serve_demo_erp())
        sections = {**demo_connector_sections(crm_url, erp_url), **cfg.connectors}
        return sections, cfg.bot or str(demo_bot_path()), cfg.policy or DEMO_POLICY

    def _build_handler(self, bot: Any) -> TurnHandler:
        if self._handler_override is not None:
            return self._handler_override
        kind = self.config.server.handler
        if kind == "echo" or (kind == "auto" and bot is None):
            return EchoHandler()
        if bot is None:
            raise ConfigError("server.handler: dialogue needs a bot section")
        from talkwire.server.dialogue import DialogueEngine, load_bot

        return DialogueEngine(load_bot(bot), self.connectors)

    def _build_policy(self, section: Mapping[str, Any]) -> SubscriptionPolicy:
        if not section and isinstance(self.handler, EchoHandler):
            return AllowAllPolicy()
        from talkwire.server.policy import ConfigPolicy

        return ConfigPolicy.from_config(section, self.connectors)

    async def _start_ingress(self) -> None:
        self.kafka: KafkaIngress | None = None
        if self.config.events.get("bootstrap"):
            self.kafka = await self._stack.enter_async_context(
                KafkaIngress(self.config.events, self.router, self.store)
            )
        if self.config.webhooks:
            from talkwire.server.events.webhooks import WebhookIngress

            self.webhooks = await self._stack.enter_async_context(
                WebhookIngress(self.config.webhooks, self.router, self.store)
            )

    async def _start_grpc(self, policy: SubscriptionPolicy) -> None:
        cfg = self.config
        server = grpc.aio.server(options=server_options(cfg))
        chat = ChatService(
            store=self.store,
            hub=self.hub,
            authenticator=self.authenticator,
            handler=self.handler,
            policy=policy,
            config=cfg.server,
            metrics=self.metrics,
        )
        server.add_generic_rpc_handlers((chat.handler(),))
        self._chat = chat
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(
                store=self.store,
                hub=self.hub,
                authenticator=self.authenticator,
                publisher=self.router,
                connectors=self.connectors,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
                admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            self.port = server.add_insecure_port(cfg.server.listen)
        except RuntimeError as exc:
            raise ConfigError(
                f"server.listen: cannot listen on {cfg.server.listen}: {exc}"
            ) from exc
        await server.start()
        self._server = server

    async def _watch_ingress(self) -> None:
        """Report the Kafka consumer's health and lag (health service ``talkwire.events``)."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while self.kafka is not None:
            healthy = self.kafka.healthy
            self.metrics.consumer_stalled.set(0 if healthy else 1)
            self.metrics.consumer_lag_total.set(self.kafka.lag)
            await self._health.set(EVENTS_HEALTH, serving if healthy else not_serving)
            await asyncio.sleep(2.0)

    def _start_metrics(self) -> None:
        """Serve Prometheus metrics on ``server.metrics_listen`` (HOST:PORT), if set."""
        listen = self.config.server.metrics_listen
        if not listen:
            return
        host, _, port = listen.rpartition(":")
        try:
            httpd, _thread = start_http_server(
                int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.metrics.registry
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"server.metrics_listen: cannot listen on {listen}: {exc}") from exc
        self._metrics_httpd = httpd
        self.metrics_port = int(httpd.server_port)
        log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", self.metrics_port)

    async def _watch_writes(self) -> None:
        """End streams whose client stopped reading (``server.write_timeout``); write acks."""
        timeout = self.config.server.write_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            self.hub.cut_stuck_writers(loop.time(), timeout)
            acks = self.hub.take_acks()
            if acks:
                try:
                    await self.store.ack_many(acks)
                except Exception:  # noqa: BLE001 - acks only shorten retention; never stop serving
                    log.warning("could not record %d acks; later acks cover them", len(acks))

    async def _sweep(self) -> None:
        interval = self.config.server.sweep_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_now()
                await self.store.forget_processed(self.config.store.dedup_window)
                await self.idempotency.forget_expired()
            except Exception:
                log.exception("sweep failed; retrying in %ss", interval)

    async def sweep_now(self) -> list[str]:
        """Run one expiry + retention pass now; return the sessions that expired."""
        expired = await self.store.expire_idle(
            self.config.store.session_ttl, keep=await self.hub.live_ids()
        )
        for session_id in expired:
            self.hub.close_session(session_id, "expired")
        await self.store.prune()
        return expired

    async def drain(self, grace: float | None = None) -> None:
        """Graceful shutdown of the serving part (see the module docstring)."""
        grace = self.config.server.grace_period if grace is None else grace
        await self._health.enter_graceful_shutdown()
        self.hub.draining = True
        deadline = asyncio.get_running_loop().time() + grace
        # Give turns in flight the grace period, then end every stream.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.hub.wait_idle()
        self.hub.drain()
        if self._server is not None:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            await self._server.stop(remaining or 0.5)

    async def aclose(self) -> None:
        """Stop everything. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            if hasattr(self, "hub"):
                self.hub.drain()
            await self._server.stop(0.5)
        if self._chat is not None:
            await self._chat.aclose()  # the last acks of ended streams, before the store closes
        if self._metrics_httpd is not None:
            await asyncio.to_thread(self._metrics_httpd.shutdown)
            self._metrics_httpd.server_close()
        for task in (self._sweeper, self._ingress_watch, self._watchdog):
            if task is not None:
                task.cancel()
        await self._stack.aclose()


def _ensure_sqlite_dir(url: str) -> None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix):
        path = url[len(prefix) :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
