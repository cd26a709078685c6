"""The bus: wakes the replica that streams a session when another replica appended to it.

Frames never travel on the bus. Every durable frame is committed to the
SessionStore first; the bus only says "sessions X, Y have new frames". A woken
replica reads them from the store (``frames_after`` above what each local feed
already has) and offers them to its attachment and watchers, whose gap-fill
keeps them in order and exactly-once. A lost wake-up therefore only delays a
frame: :class:`~talkwire.server.cluster.RedisCluster` runs a periodic sweep
(``bus.sweep_interval``) that compares each local feed with the session's
``head_seq`` and fetches what is missing.

The implementation of :class:`Bus` is :class:`RedisBus` (``bus.kind: redis``;
one replica alone, ``bus.kind: inprocess``, needs no bus at all): Redis pub/sub
on two channels per replica: the shared ``<prefix>bus`` (wake-ups and close notices, received by
  every replica) and ``<prefix>replica:<id>`` (supersede notices aimed at one
  replica, found through the attachment registry, :mod:`talkwire.server.presence`).

Why a shared wake-up channel rather than per-replica targeting: a wake-up is a
few dozen bytes per session and one ``PUBLISH`` per routed batch; every replica
filters it against its local dict in O(1) per id. Targeting would need a
registry lookup (a Redis round trip) on the hot path before every publish,
would race with an attach that registers between lookup and publish, and would
need a second registry for ``Watch`` observers. Redis fans a message out in
O(subscribers), which is cheap for the tens of replicas this design aims at;
past that, switch the wake-up to per-replica channels (the registry has
``lookup`` for it) or Redis 7 sharded pub/sub.

The bus is used by :class:`~talkwire.server.cluster.RedisCluster`, which
holds it together with the registry, the pump, the sweep and the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from talkwire.connectors.sections import Section

__all__ = ["Bus", "BusHandler", "BusSettings", "RedisBus"]

log = logging.getLogger(__name__)

_WAKE_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class BusSettings:
    """The ``bus`` config section."""

    kind: str = "inprocess"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "talkwire:"
    sweep_interval: float = 1.0
    presence_ttl: float = 15.0

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> BusSettings:
        """Validate the ``bus`` section; errors name the key (and its YAML line)."""
        sec = Section(raw, "bus", known=("kind", "url", "prefix", "sweep_interval", "presence_ttl"))
        defaults = cls()
        kind = sec.text("kind", defaults.kind, choices=("inprocess", "redis"))
        url = sec.text("url", defaults.url)
        if kind == "redis" and not url.startswith(("redis://", "rediss://", "unix://")):
            raise sec.error("url", f"expected a redis://, rediss:// or unix:// URL, got {url!r}")
        return cls(
            kind=kind,
            url=url,
            prefix=sec.text("prefix", defaults.prefix),
            sweep_interval=sec.number("sweep_interval", defaults.sweep_interval, positive=True),
            presence_ttl=sec.number("presence_ttl", defaults.presence_ttl, positive=True),
        )


class BusHandler(Protocol):
    """What a bus calls on incoming notices (all sync and non-blocking except the state hook)."""

    def on_wake(self, session_ids: Sequence[str]) -> None: ...

    def on_supersede(self, session_id: str, token: str) -> None: ...

    def on_close(self, session_id: str, reason: str) -> None: ...

    async def on_bus_state(self, up: bool) -> None: ...


class Bus(Protocol):
    """Wake-ups and attachment notices between replicas."""

    @property
    def healthy(self) -> bool: ...

    async def start(self, handler: BusHandler) -> None:
        """Start receiving; returns once subscribed (or after the first failed attempt)."""
        ...

    async def aclose(self) -> None: ...

    async def publish(self, session_ids: Iterable[str]) -> None:
        """Announce "new frames for these sessions" (already committed to the store)."""
        ...

    async def notify_supersede(self, session_id: str, replica: str, token: str = "") -> None:
        """Tell ``replica`` that its attachment ``token`` of ``session_id`` is superseded."""
        ...

    async def notify_close(self, session_id: str, reason: str) -> None:
        """Tell every replica that ``session_id`` was closed."""
        ...


class RedisBus:
    """Redis pub/sub (see the module docstring). Reconnects by itself; ``healthy`` tells."""

    def __init__(self, client: Redis, *, replica: str, prefix: str) -> None:
        self._redis = client
        self.replica = replica
        self.shared_channel = f"{prefix}bus"
        self.replica_channel = f"{prefix}replica:{replica}"
        self._prefix = prefix
        self._handler: BusHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.healthy = False

    async def start(self, handler: BusHandler) -> None:
        self._handler = handler
        self._task = asyncio.create_task(self._listen(), name="talkwire-bus")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._subscribed.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _set_state(self, up: bool) -> None:
        if up == self.healthy:
            return
        self.healthy = up
        if up:
            log.info("bus: subscribed to %s and %s", self.shared_channel, self.replica_channel)
        else:
            log.warning("bus: Redis unreachable; relying on the store sweep until it is back")
        if self._handler is not None:
            await self._handler.on_bus_state(up)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.shared_channel, self.replica_channel)
                self._subscribed.set()
                await self._set_state(True)
                backoff = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._dispatch(message.get("data"))
            except (RedisError, OSError) as exc:
                log.debug("bus: connection lost: %r", exc)
            finally:
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # redis < 8.2
            self._subscribed.set()
            await self._set_state(False)
            await asyncio.sleep(backoff)  # reconnect backoff, not synchronisation
            backoff = min(backoff * 2, 5.0)

    def _dispatch(self, data: object) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            text = data.decode() if isinstance(data, bytes) else str(data)
            msg = json.loads(text)
            kind = msg.get("t")
            if msg.get("r") == self.replica and kind != "supersede":
                return  # our own broadcast: the local hub already acted on it
            if kind == "wake":
                handler.on_wake([str(s) for s in msg.get("s", ())])
            elif kind == "supersede":
                handler.on_supersede(str(msg["s"]), str(msg.get("a", "")))
            elif kind == "close":
                handler.on_close(str(msg["s"]), str(msg.get("why", "closed")))
        except Exception:  # a bad message must not stop the listener
            log.exception("bus: could not handle a message")

    async def _send(self, channel: str, msg: Mapping[str, Any]) -> None:
        try:
            await self._redis.publish(channel, json.dumps(msg, separators=(",", ":")))
        except (RedisError, OSError) as exc:
            # The frames are in the store: the sweep delivers them; readiness reports the outage.
            log.warning("bus: publish failed (%r); the sweep will deliver", exc)

    async def publish(self, session_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(session_ids))
        for i in range(0, len(ids), _WAKE_CHUNK):
            await self._send(
                self.shared_channel, {"t": "wake", "r": self.replica, "s": ids[i : i + _WAKE_CHUNK]}
            )

    async def notify_supersede(self, session_id: str, replica: str, token: str = "") -> None:
        await self._send(
            f"{self._prefix}replica:{replica}",
            {"t": "supersede", "r": self.replica, "s": session_id, "a": token},
        )

    async def notify_close(self, session_id: str, reason: str) -> None:
        await self._send(
            self.shared_channel, {"t": "close", "r": self.replica, "s": session_id, "why": reason}
        )
