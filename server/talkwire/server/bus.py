"""The bus: wakes the replica that streams a session when another replica appended to it.

Frames never travel on the bus. Every durable frame is committed to the
SessionStore first; the bus only says "sessions X, Y have new frames". A woken
replica reads them from the store (``frames_after`` above what each local feed
already has) and offers them to its attachment and watchers, whose gap-fill
keeps them in order and exactly-once. A lost wake-up therefore only delays a
frame: :class:`ClusterHub` runs a periodic sweep (``bus.sweep_interval``) that
compares each local feed with the session's ``head_seq`` and fetches what is
missing.

Implementations of :class:`Bus`:

- :class:`InProcessBus` (``bus.kind: inprocess``, the default): one replica;
  publishing is a no-op because the local ``deliver`` already reached everyone.
- :class:`RedisBus` (``bus.kind: redis``): Redis pub/sub on two channels per
  replica: the shared ``<prefix>bus`` (wake-ups and close notices, received by
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

:class:`ClusterHub` is the :class:`~talkwire.server.hub.SessionHub` of a
replica that shares its store with others: local delivery plus wake-ups out,
wake-ups in, supersede across replicas, close across replicas, heartbeats, the
sweep, and readiness (``on_ready(False)`` while the bus is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from talkwire.connectors.sections import Section
from talkwire.server.config import Config
from talkwire.server.errors import Status
from talkwire.server.frames import StoredFrame
from talkwire.server.hub import Attachment, Feed, SessionHub
from talkwire.server.presence import Presence, RedisPresence, owner_of
from talkwire.server.store import SessionStore

__all__ = [
    "Bus",
    "BusHandler",
    "BusSettings",
    "ClusterHub",
    "InProcessBus",
    "RedisBus",
    "open_hub",
]

log = logging.getLogger(__name__)

ReadyCallback = Callable[[bool], Awaitable[None]]

_WAKE_CHUNK = 1000
_FETCH_CONCURRENCY = 16


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


class InProcessBus:
    """One replica: the local ``deliver`` already woke every feed."""

    healthy = True

    async def start(self, handler: BusHandler) -> None:
        await handler.on_bus_state(True)

    async def aclose(self) -> None:
        return None

    async def publish(self, session_ids: Iterable[str]) -> None:
        return None

    async def notify_supersede(self, session_id: str, replica: str, token: str = "") -> None:
        return None

    async def notify_close(self, session_id: str, reason: str) -> None:
        return None


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
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
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


def _known(feed: Feed) -> int:
    return max(feed.sent_seq, feed.queued_seq)


class ClusterHub(SessionHub):
    """A SessionHub that shares its store with other replicas (see the module docstring)."""

    def __init__(
        self,
        store: SessionStore,
        *,
        bus: Bus,
        presence: Presence,
        replica: str,
        queue_size: int = 256,
        sweep_interval: float = 1.0,
        presence_ttl: float = 15.0,
        on_ready: ReadyCallback | None = None,
    ) -> None:
        super().__init__(store, queue_size=queue_size)
        self.bus = bus
        self.presence = presence
        self.replica = replica
        self._store_ref = store
        self._sweep_interval = sweep_interval
        self._heartbeat_interval = max(0.5, presence_ttl / 3)
        self._on_ready = on_ready
        self._claims: dict[str, tuple[Attachment, str]] = {}
        self._dirty: set[str] = set()
        self._dirty_event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._fetch_limit = asyncio.Semaphore(_FETCH_CONCURRENCY)

    @property
    def ready(self) -> bool:
        return self.bus.healthy and not self.draining

    # -- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> ClusterHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        await self.bus.start(self)
        self._loops = [
            asyncio.create_task(self._pump(), name="talkwire-hub-pump"),
            asyncio.create_task(self._sweep_loop(), name="talkwire-hub-sweep"),
            asyncio.create_task(self._heartbeat_loop(), name="talkwire-hub-heartbeat"),
        ]

    async def aclose(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for session_id, (_, token) in list(self._claims.items()):
            with contextlib.suppress(RedisError, OSError):
                await self.presence.release(session_id, self._value(token))
        self._claims.clear()
        await self.bus.aclose()
        await self.presence.aclose()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:  # background notices are best effort
                log.exception("bus: background task failed")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _value(self, token: str) -> str:
        return f"{self.replica}|{token}"

    # -- attachments ------------------------------------------------------

    async def claim(self, att: Attachment) -> None:
        """Register ``att`` in the registry; supersede an older attachment on another replica."""
        sid, token = att.session_id, uuid.uuid4().hex
        value = self._value(token)
        try:
            previous = await self.presence.claim(sid, value)
        except (RedisError, OSError) as exc:
            log.warning("session %s: could not register the attachment: %r", sid, exc)
            previous = None  # the heartbeat registers it once Redis answers
        except BaseException:
            self._spawn(self.presence.release(sid, value))  # the SET may have landed
            raise
        if self._attachments.get(sid) is not att or att.ended.is_set():
            # Superseded meanwhile (e.g. a newer attach here whose claim returned first).
            self._spawn(self.presence.release(sid, value))
            return
        # Only now: a heartbeat that refreshed this entry before the claim reached Redis
        # would find the previous owner's value there and end the new attachment.
        self._claims[sid] = (att, token)
        if previous is None:
            return
        replica, old_token = owner_of(previous)
        if replica != self.replica:
            await self.bus.notify_supersede(sid, replica, old_token)

    async def live_ids(self) -> set[str]:
        """Sessions with a live attachment on ANY replica: the registry plus our own.

        The idle-session sweeper keeps these (``store.expire_idle(keep=...)``).
        Raises when Redis is down: better to skip one expiry pass than to expire
        sessions that are attached elsewhere.
        """
        return {*self.attached_ids(), *await self.presence.live()}

    async def attached_where(self, session_ids: Iterable[str]) -> dict[str, str]:
        """``session -> replica`` holding its live attachment (absent: not attached anywhere)."""
        ids = list(session_ids)
        where = {
            sid: owner_of(value)[0] for sid, value in (await self.presence.lookup(ids)).items()
        }
        for sid in ids:
            if self.is_attached(sid):
                where.setdefault(sid, self.replica)  # e.g. attached while Redis was away
        return where

    def detach(self, att: Attachment) -> None:
        super().detach(att)
        entry = self._claims.get(att.session_id)
        if entry is not None and entry[0] is att:
            del self._claims[att.session_id]
            self._spawn(self.presence.release(att.session_id, self._value(entry[1])))

    def deliver(self, frames: Mapping[str, Sequence[StoredFrame]]) -> None:
        super().deliver(frames)
        if frames:
            # Every session, not only those not attached here: watchers elsewhere need it too.
            self._spawn(self.bus.publish(list(frames)))

    def close_session(self, session_id: str, reason: str) -> None:
        super().close_session(session_id, reason)
        self._spawn(self.bus.notify_close(session_id, reason))

    # -- BusHandler -------------------------------------------------------

    def on_wake(self, session_ids: Sequence[str]) -> None:
        for session_id in session_ids:
            if session_id in self._attachments or session_id in self._watchers:
                self._dirty.add(session_id)
        if self._dirty:
            self._dirty_event.set()

    def on_supersede(self, session_id: str, token: str) -> None:
        entry = self._claims.get(session_id)
        if entry is not None and (not token or entry[1] == token):
            entry[0].terminate(_superseded())

    def on_close(self, session_id: str, reason: str) -> None:
        SessionHub.close_session(self, session_id, reason)

    async def on_bus_state(self, up: bool) -> None:
        if up:
            # Wake-ups may have been lost while we were away: catch every feed up.
            self.on_wake(self._local_ids())
        if self._on_ready is not None:
            await self._on_ready(up and not self.draining)

    # -- catching up from the store --------------------------------------

    def _local_ids(self) -> list[str]:
        return list(dict.fromkeys([*self._attachments, *self._watchers]))

    def _feeds(self, session_id: str) -> list[Feed]:
        feeds: list[Feed] = list(self._watchers.get(session_id, ()))
        att = self._attachments.get(session_id)
        if att is not None:
            feeds.append(att)
        return [f for f in feeds if not f.ended.is_set()]

    async def _pump(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            batch, self._dirty = self._dirty, set()
            await asyncio.gather(*(self._catch_up(sid) for sid in batch))

    async def _catch_up(self, session_id: str) -> None:
        feeds = self._feeds(session_id)
        if not feeds:
            return
        after = min(_known(f) for f in feeds)
        room = max(f.room for f in feeds)
        if room <= 0:
            return
        async with self._fetch_limit:
            try:
                frames = await self._store_ref.frames_after(session_id, after, limit=room)
            except Exception as exc:  # noqa: BLE001 - the sweep retries
                log.warning("session %s: catch-up read failed: %r", session_id, exc)
                return
        for feed in feeds:
            feed.offer(frames)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)  # periodic work, not synchronisation
            try:
                await self.sweep()
            except Exception:  # the sweeper outlives a store hiccup
                log.exception("hub sweep failed")

    async def sweep(self) -> list[str]:
        """Offer stored frames that a lost wake-up did not bring; return the sessions behind."""
        ids = self._local_ids()
        if not ids:
            return []
        heads = await self._store_ref.heads(ids)
        behind = [
            sid for sid in ids if any(heads.get(sid, 0) > _known(f) for f in self._feeds(sid))
        ]
        if behind:
            self.on_wake(behind)
        return behind

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)  # periodic work
            try:
                await self.heartbeat()
            except (RedisError, OSError) as exc:
                log.warning("presence heartbeat failed: %r", exc)

    async def heartbeat(self) -> None:
        """Refresh our registry entries; end attachments that another replica took over."""
        tokens = {sid: token for sid, (_, token) in self._claims.items()}
        if not tokens:
            return
        lost = await self.presence.refresh([(s, self._value(t)) for s, t in tokens.items()])
        for session_id in lost:
            entry = self._claims.get(session_id)
            # The entry refreshed, not a newer attachment made here meanwhile.
            if entry is not None and entry[1] == tokens[session_id]:
                log.info("session %s: attached on another replica; superseding here", session_id)
                entry[0].terminate(_superseded())


def _superseded() -> Status:
    return Status(grpc.StatusCode.ABORTED, "superseded by a newer attachment", False)


@contextlib.asynccontextmanager
async def open_hub(
    store: SessionStore, config: Config, *, on_ready: ReadyCallback | None = None
) -> AsyncIterator[SessionHub]:
    """The hub this replica runs: a plain SessionHub for ``inprocess``, else a ClusterHub."""
    settings = BusSettings.from_config(config.bus)
    if settings.kind == "inprocess":
        if on_ready is not None:
            await on_ready(True)
        yield SessionHub(store, queue_size=config.server.queue_size)
        return
    client: Redis = Redis.from_url(settings.url, health_check_interval=10)
    hub = ClusterHub(
        store,
        bus=RedisBus(client, replica=config.server.replica, prefix=settings.prefix),
        presence=RedisPresence(client, prefix=settings.prefix, ttl=settings.presence_ttl),
        replica=config.server.replica,
        queue_size=config.server.queue_size,
        sweep_interval=settings.sweep_interval,
        presence_ttl=settings.presence_ttl,
        on_ready=on_ready,
    )
    try:
        async with hub:
            yield hub
    finally:
        await client.aclose()
