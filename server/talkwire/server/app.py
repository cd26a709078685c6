"""The application: builds every component from the config and runs the gRPC server.

:class:`Application` is one async context manager that builds and wires the
components and owns their order of start and stop. It starts them in this
order: the store, the hub (with its cluster), the connectors, the handler and
the policy, the router, the chat service, the sweeper, the gRPC server (chat is
served from here on), the web gateway (``web:``, if configured), metrics, then
the event ingress (Kafka joins its consumer group on its own;
``talkwire.events`` reports it). It stops them in
the reverse order.

:meth:`Application.drain` is the graceful shutdown (SIGTERM), one sequence:

1. readiness (``talkwire.ready``) and every health service go ``NOT_SERVING``,
   so load balancers stop sending new streams; for ``server.drain_delay``
   seconds everything is still served;
2. new streams are refused (``UNAVAILABLE``); turns in flight finish within
   ``server.grace_period``;
3. every stream ends ``UNAVAILABLE`` (clients resume elsewhere);
4. the event ingress stops: the Kafka consumer commits its offsets and leaves
   the group (its partitions move to the other replicas at once);
5. the gRPC port closes; the chat service writes the last acks; connectors,
   hub and store close.

:meth:`Application.aclose` is steps 3-5 at once.
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
from opentelemetry.trace import TracerProvider
from prometheus_client import start_http_server

from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.admin import AdminService
from talkwire.server.agent import AgentService
from talkwire.server.auth import Authenticator, build_authenticator
from talkwire.server.chat import SERVICE_NAME as CHAT_SERVICE
from talkwire.server.chat import ChatService
from talkwire.server.cluster import open_hub
from talkwire.server.config import Config
from talkwire.server.errors import ConfigError, TalkwireError
from talkwire.server.events.kafka import KafkaIngress
from talkwire.server.events.router import EventRouter
from talkwire.server.events.settings import KafkaSettings
from talkwire.server.handoff import HandoffDesk, HandoffSettings, HandoffTurns
from talkwire.server.health import HealthServicer
from talkwire.server.hub import SessionHub
from talkwire.server.idempotency import SqlIdempotencyStore
from talkwire.server.metrics import Metrics
from talkwire.server.outbound.service import OutboundService, recorder_for
from talkwire.server.outbound.settings import OutboundSettings
from talkwire.server.policy import ConfigPolicy
from talkwire.server.reflection import enable_reflection
from talkwire.server.store import Retention, SessionStore
from talkwire.server.sweeper import Sweeper
from talkwire.server.tracing import default_tracer
from talkwire.server.turns import EchoHandler, SubscriptionPolicy, TurnHandler
from talkwire.server.web import WebGateway, WebSettings
from talkwire.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, chat_pb2

__all__ = ["READY_SERVICE", "Application", "server_options"]

READY_SERVICE = "talkwire.ready"

log = logging.getLogger(__name__)

EVENTS_HEALTH = "talkwire.events"
OUTBOUND_HEALTH = "talkwire.outbound"
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


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
    """Everything one talkwire replica runs (see the module docstring)."""

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
        self._stop_grace = 0.5
        self._health = HealthServicer()
        self._tasks: asyncio.TaskGroup | None = None
        self._outbound_watch: asyncio.Task[None] | None = None
        self.metrics_port = 0
        self._draining = False
        self._closed = False
        self.port = 0
        self.store: SessionStore
        self.hub: SessionHub
        self.connectors: ConnectorRegistry
        self.idempotency: SqlIdempotencyStore
        self.router: EventRouter
        self.authenticator: Authenticator
        self.handler: TurnHandler
        self.handoff: HandoffDesk
        self.turns: HandoffTurns
        self.policy: SubscriptionPolicy
        self.chat: ChatService
        self.sweeper: Sweeper
        self.outbound: OutboundService

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
        """Start the components in order; aclose stops them in the reverse order."""
        cfg = self.config
        self.authenticator = build_authenticator(cfg.auth)
        connector_sections, bot, policy_section, outbound_section = await self._sections()
        await self._open_state(connector_sections, outbound_section)
        self._build_turns(bot, policy_section)
        await self._open_services()
        await self._start_grpc(self.chat)
        self._stack.push_async_callback(self._stop_grpc)
        await self._start_web()
        self._start_metrics()
        await self._mark_serving()
        # Chat is served from here on; the consumer joins its group on its own.
        await self._start_ingress()
        if self.outbound.sinks:
            self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
            self._stack.callback(self._stop_watching)
            self._outbound_watch = self._tasks.create_task(self._watch_outbound())
        log.info("talkwire listening on %s (config: %s)", self.target, cfg.source)
        log.info("%s", self._describe(bot, policy_section))

    async def _open_state(
        self, connector_sections: Mapping[str, Any], outbound_section: Mapping[str, Any]
    ) -> None:
        """The store, the hub with its cluster, the connectors."""
        cfg = self.config
        _ensure_sqlite_dir(cfg.store.url)
        self.outbound_settings = OutboundSettings.from_config(outbound_section)
        self.store = await self._stack.enter_async_context(
            SessionStore(
                cfg.store.url,
                retention=Retention(cfg.store.retention_frames, cfg.store.retention_age),
                pool_size=cfg.store.pool_size,
                events=recorder_for(self.outbound_settings),
            )
        )
        self.hub = await self._stack.enter_async_context(
            open_hub(self.store, cfg, on_bus_state=self._set_ready)
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

    def _build_turns(self, bot: Any, policy_section: Mapping[str, Any]) -> None:
        """The turn handler, the subscription policy (no section: deny all), the router."""
        self.handler = self._build_handler(bot)
        self.handoff = HandoffDesk(
            store=self.store,
            hub=self.hub,
            settings=HandoffSettings.from_config(self.config.handoff),
        )
        # User turns reach the dialogue engine through the handoff router.
        self.turns = HandoffTurns(self.handler, desk=self.handoff, hub=self.hub)
        self.policy = self._policy_override or ConfigPolicy.from_config(
            policy_section, self.connectors
        )
        self.router = EventRouter(
            self.store,
            self.hub,
            invalidate=self.connectors.invalidate,
            metrics=self.metrics,
            tracer=self._tracer,
        )

    async def _open_services(self) -> None:
        """The chat service (with its write watchdog) and the expiry sweeper."""
        cfg = self.config
        await self._stack.enter_async_context(self.handoff)
        self.chat = await self._stack.enter_async_context(
            ChatService(
                store=self.store,
                hub=self.hub,
                authenticator=self.authenticator,
                handler=self.turns,
                policy=self.policy,
                config=cfg.server,
                metrics=self.metrics,
            )
        )
        self.sweeper = await self._stack.enter_async_context(
            Sweeper(
                self.store,
                self.hub,
                interval=cfg.server.sweep_interval,
                session_ttl=cfg.store.session_ttl,
                dedup_window=cfg.store.dedup_window,
                also=(self.idempotency.forget_expired,),
            )
        )
        self.outbound = await self._stack.enter_async_context(
            OutboundService(
                self.outbound_settings,
                self.store,
                self.connectors,
                on_outcome=self.metrics.outbound_outcome,
            )
        )

    async def _sections(
        self,
    ) -> tuple[Mapping[str, Any], Any, Mapping[str, Any], Mapping[str, Any]]:
        """The connector, bot, policy and outbound sections: the config's, or the demo's."""
        cfg = self.config
        if not cfg.demo:
            return cfg.connectors, cfg.bot, cfg.policy, cfg.outbound
        from talkwire.server.demo import open_demo

        demo = await self._stack.enter_async_context(open_demo(cfg))
        return demo.connectors, demo.bot, demo.policy, demo.outbound

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

    def _describe(self, bot: Any, policy_section: Mapping[str, Any]) -> str:
        """One start-up line: which handler, bot and policy this replica runs."""
        if isinstance(self.handler, EchoHandler):
            handler = "echo (replies with the user's text; no bot)"
        elif self._handler_override is not None:
            handler = type(self.handler).__name__
        elif isinstance(bot, str):
            handler = f"dialogue, bot {bot}"
        else:
            handler = f"dialogue, bot inline in {self.config.source}"
        if self.config.demo:
            handler += " [demo]"
        return f"handler: {handler}; policy: {_describe_policy(self.policy, policy_section)}"

    async def _mark_serving(self) -> None:
        status = health_pb2.HealthCheckResponse
        await self._health.set("", status.SERVING)
        admin = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
        for name in (CHAT_SERVICE, admin, AGENT_SERVICE):
            await self._health.set(name, status.SERVING)
        await self._set_ready(self.hub.ready)

    async def _set_ready(self, ready: bool) -> None:
        """Readiness (health service ``talkwire.ready``): NOT_SERVING while draining or bus down.

        Liveness is the overall service ``""``: SERVING while the process runs.
        """
        status = health_pb2.HealthCheckResponse
        serving = ready and not self._draining
        await self._health.set(READY_SERVICE, status.SERVING if serving else status.NOT_SERVING)

    async def _start_ingress(self) -> None:
        self.kafka: KafkaIngress | None = None
        # Any events section is validated whole (a typo such as ``bootstrp`` is an error,
        # not Kafka silently off); ``enabled: false`` keeps a valid one off.
        events = KafkaSettings.from_config(self.config.events) if self.config.events else None
        if events is not None and events.enabled:
            status = health_pb2.HealthCheckResponse

            async def on_health(healthy: bool) -> None:
                await self._health.set(
                    EVENTS_HEALTH, status.SERVING if healthy else status.NOT_SERVING
                )

            # Returns at once: the consumer connects and joins on its own (health
            # ``talkwire.events`` NOT_SERVING until it has), chat is served meanwhile.
            self.kafka = await self._stack.enter_async_context(
                KafkaIngress(
                    events,
                    self.router,
                    self.store,
                    on_health=on_health,
                    metrics=self.metrics,
                )
            )
        if self.config.webhooks:
            from talkwire.server.events.webhooks import WebhookIngress, WebhookSettings

            hooks = WebhookSettings(self.config.webhooks)
            if hooks.enabled:
                producer = None
                if hooks.produce_to and events is not None and events.enabled:
                    from talkwire.server.events.producer import LazyProducer

                    producer = await self._stack.enter_async_context(
                        LazyProducer(events.client_kwargs())
                    )
                self.webhooks = await self._stack.enter_async_context(
                    WebhookIngress(hooks, self.router, self.store, producer=producer)
                )

    async def _start_grpc(self, chat: ChatService) -> None:
        cfg = self.config
        server = grpc.aio.server(options=server_options(cfg))
        server.add_generic_rpc_handlers((chat.handler(),))
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(
                store=self.store,
                hub=self.hub,
                authenticator=self.authenticator,
                publisher=self.router,
                connectors=self.connectors,
                outbound=self.outbound,
            ),
            server,
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentService(
                store=self.store,
                hub=self.hub,
                authenticator=self.authenticator,
                desk=self.handoff,
                config=cfg.server,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection(
            (
                chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
                admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
                AGENT_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
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

    async def _start_web(self) -> None:
        """The WebSocket gateway and widget (``web:``; off without the section)."""
        self.web: WebGateway | None = None
        settings = WebSettings(self.config.web) if self.config.web else None
        if settings is not None and settings.enabled:
            self.web = await self._stack.enter_async_context(
                WebGateway(
                    settings, self.chat, max_message_bytes=self.config.server.max_message_bytes
                )
            )

    async def _stop_grpc(self) -> None:
        """Close the port (step 5 of the drain), after what the grace period left."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(self._stop_grace)

    async def _watch_outbound(self) -> None:
        """Outbox depth and age per sink (metrics), and health ``talkwire.outbound``:
        NOT_SERVING while a sink's breaker is open or its oldest event is stale."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        stale = self.outbound.settings.relay.stale_after
        while True:
            try:
                sinks = await self.outbound.status()
            except TalkwireError as exc:
                log.warning("outbound status unavailable: %s", exc)
                sinks = []
            for s in sinks:
                self.metrics.outbound_pending.labels(s.name).set(s.pending)
                self.metrics.outbound_oldest_seconds.labels(s.name).set(s.oldest_pending_seconds)
            healthy = bool(sinks) and all(
                s.breaker != "open" and s.oldest_pending_seconds <= stale for s in sinks
            )
            await self._health.set(OUTBOUND_HEALTH, serving if healthy else not_serving)
            await asyncio.sleep(2.0)

    def _stop_watching(self) -> None:
        if self._outbound_watch is not None:
            self._outbound_watch.cancel()

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
        self._stack.push_async_callback(_stop_http, httpd)
        self.metrics_port = int(httpd.server_port)
        log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", self.metrics_port)

    async def drain(self, grace: float | None = None) -> None:
        """Graceful shutdown, the sequence in the module docstring; ends closed."""
        cfg = self.config.server
        grace = cfg.grace_period if grace is None else grace
        loop = asyncio.get_running_loop()
        # 1. Out of load balancing; still serving for drain_delay.
        self._draining = True
        await self._health.enter_graceful_shutdown()
        log.info("draining: readiness NOT_SERVING; serving on for %ss", cfg.drain_delay)
        await asyncio.sleep(cfg.drain_delay)  # the documented pause, not synchronisation
        # 2. No new streams; turns in flight finish within the grace period.
        deadline = loop.time() + grace
        self.hub.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.chat.wait_idle()
        self._stop_grace = max(0.5, deadline - loop.time())
        log.info(
            "draining: ending %d streams UNAVAILABLE, then the ingress and the port", len(self.hub)
        )
        # 3.-5. Streams end UNAVAILABLE, the ingress commits and leaves, the port closes.
        await self.aclose()

    async def aclose(self) -> None:
        """End every stream ``UNAVAILABLE``, then stop everything in reverse start order.

        Idempotent. The reverse order puts the event ingress (Kafka commits and
        leaves its group) before the gRPC port closes, and the chat service's
        last ack writes after it, before the store closes.
        """
        if self._closed:
            return
        self._closed = True
        self._draining = True
        if hasattr(self, "hub"):  # aclose also unwinds a start that failed half-way
            self.hub.drain()
        await self._stack.aclose()


def _describe_policy(policy: SubscriptionPolicy, section: Mapping[str, Any]) -> str:
    if not isinstance(policy, ConfigPolicy):
        return type(policy).__name__
    if not section:
        return "none configured: every subscription is denied (add a policy section)"
    default = "allow" if policy.default_allow else "deny"
    return f"{len(policy.rules)} rule(s), default {default}"


async def _stop_http(httpd: WSGIServer) -> None:
    await asyncio.to_thread(httpd.shutdown)
    httpd.server_close()


def _ensure_sqlite_dir(url: str) -> None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix):
        path = url[len(prefix) :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
