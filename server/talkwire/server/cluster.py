"""The cluster a SessionHub belongs to: one replica alone, or many sharing one store.

The :class:`~talkwire.server.hub.SessionHub` is the same on every deployment;
what differs is its :class:`Cluster` (the way aiokafka pairs a consumer with a
``GroupCoordinator`` or a ``NoGroupCoordinator``):

- :class:`LocalCluster` (``bus.kind: inprocess``, the default): one replica.
  The local ``deliver`` already reached every feed; there is no registry and
  nobody to tell.
- :class:`RedisCluster` (``bus.kind: redis``): replicas sharing one store. It
  holds the bus (:mod:`talkwire.server.bus`, wake-ups and notices over Redis
  pub/sub), the attachment registry (:mod:`talkwire.server.presence`), the pump
  that catches woken feeds up from the store, the sweep that repairs lost
  wake-ups (``bus.sweep_interval``) and the heartbeat that keeps this replica's
  registry entries alive and ends attachments another replica took over.

Frames never travel on the bus: they are committed to the store first, and a
woken replica reads them from there (see :mod:`talkwire.server.bus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from talkwire.server.bus import Bus, BusSettings, RedisBus
from talkwire.server.config import Config
from talkwire.server.hub import Attachment, Feed, SessionHub, superseded_status
from talkwire.server.presence import Presence, RedisPresence, owner_of
from talkwire.server.store import SessionStore

__all__ = ["Cluster", "LocalCluster", "LocalSessions", "RedisCluster", "open_hub"]

log = logging.getLogger(__name__)

StateCallback = Callable[[bool], Awaitable[None]]

_FETCH_CONCURRENCY = 16


class LocalSessions(Protocol):
    """What a cluster reads and does on this process (the SessionHub provides it)."""

    def current(self, session_id: str) -> Attachment | None: ...

    def local_ids(self) -> list[str]: ...

    def feeds(self, session_id: str) -> list[Feed]: ...

    def close_local(self, session_id: str, reason: str) -> None: ...


class Cluster(Protocol):
    """The other replicas, as far as the SessionHub is concerned."""

    @property
    def replica(self) -> str:
        """This replica's name."""
        ...

    @property
    def healthy(self) -> bool:
        """Whether the other replicas can be reached (readiness)."""
        ...

    async def start(self, sessions: LocalSessions) -> None: ...

    async def aclose(self) -> None: ...

    async def claim(self, att: Attachment) -> None:
        """Register ``att``; supersede an older attachment of its session elsewhere."""
        ...

    def release(self, att: Attachment) -> None:
        """``att`` was detached here: drop its registry entry (in the background)."""
        ...

    def announce(self, session_ids: Sequence[str]) -> None:
        """Frames of these sessions were committed: wake the replicas that stream them."""
        ...

    def announce_close(self, session_id: str, reason: str) -> None:
        """``session_id`` was closed: end its streams on every replica."""
        ...

    async def live_elsewhere(self) -> set[str]:
        """Sessions the registry says are attached (on any replica)."""
        ...

    async def attached_where(self, session_ids: Sequence[str]) -> dict[str, str] | None:
        """``session -> replica`` from the registry; ``None``: there is no registry."""
        ...


class LocalCluster:
    """One replica alone: nothing to register, nobody to wake."""

    healthy = True

    def __init__(self, replica: str = "") -> None:
        self.replica = replica

    async def start(self, sessions: LocalSessions) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def claim(self, att: Attachment) -> None:
        return None

    def release(self, att: Attachment) -> None:
        return None

    def announce(self, session_ids: Sequence[str]) -> None:
        return None

    def announce_close(self, session_id: str, reason: str) -> None:
        return None

    async def live_elsewhere(self) -> set[str]:
        return set()

    async def attached_where(self, session_ids: Sequence[str]) -> dict[str, str] | None:
        return None


class RedisCluster:
    """Replicas sharing one store, coordinated over Redis (see the module docstring).

    Also the :class:`~talkwire.server.bus.BusHandler` of its bus. ``on_state``
    hears ``False`` while the bus is down and ``True`` once it is back (the
    application's readiness).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        bus: Bus,
        presence: Presence,
        replica: str,
        sweep_interval: float = 1.0,
        presence_ttl: float = 15.0,
        on_state: StateCallback | None = None,
    ) -> None:
        self.bus = bus
        self.presence = presence
        self.replica = replica
        self._store = store
        self._sweep_interval = sweep_interval
        self._heartbeat_interval = max(0.5, presence_ttl / 3)
        self._on_state = on_state
        self._sessions: LocalSessions | None = None
        self._claims: dict[str, tuple[Attachment, str]] = {}
        self._dirty: set[str] = set()
        self._dirty_event = asyncio.Event()
        self._notices: set[asyncio.Task[None]] = set()
        self._loops: asyncio.TaskGroup | None = None
        self._loop_tasks: list[asyncio.Task[None]] = []
        self._fetch_limit = asyncio.Semaphore(_FETCH_CONCURRENCY)

    @property
    def healthy(self) -> bool:
        return self.bus.healthy

    @property
    def _local(self) -> LocalSessions:
        if self._sessions is None:
            raise RuntimeError("RedisCluster used before start()")
        return self._sessions

    # -- lifecycle --------------------------------------------------------

    async def start(self, sessions: LocalSessions) -> None:
        """Subscribe to the bus, then run the pump, the sweep and the heartbeat."""
        self._sessions = sessions
        await self.bus.start(self)
        loops = asyncio.TaskGroup()
        await loops.__aenter__()
        self._loops = loops
        self._loop_tasks = [
            loops.create_task(self._pump(), name="talkwire-cluster-pump"),
            loops.create_task(self._every(self._sweep_interval, self.sweep), name="talkwire-sweep"),
            loops.create_task(
                self._every(self._heartbeat_interval, self.heartbeat), name="talkwire-heartbeat"
            ),
        ]

    async def aclose(self) -> None:
        """Stop the loops, finish the notices, release our registry entries. Idempotent."""
        loops, self._loops = self._loops, None
        if loops is None:
            return
        for task in self._loop_tasks:
            task.cancel()
        await loops.__aexit__(None, None, None)
        while self._notices:  # a notice may spawn while we wait
            await asyncio.gather(*self._notices, return_exceptions=True)
        for session_id, (_, token) in list(self._claims.items()):
            with contextlib.suppress(RedisError, OSError):
                await self.presence.release(session_id, self._value(token))
        self._claims.clear()
        await self.bus.aclose()
        await self.presence.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a best-effort notice in the background (its failure is logged)."""

        async def run() -> None:
            try:
                await coro
            except Exception:  # background notices are best effort
                log.exception("cluster: background notice failed")

        task = asyncio.get_running_loop().create_task(run())
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def _value(self, token: str) -> str:
        return f"{self.replica}|{token}"

    # -- the hub's calls --------------------------------------------------

    async def claim(self, att: Attachment) -> None:
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
        if self._local.current(sid) is not att or att.ended.is_set():
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

    def release(self, att: Attachment) -> None:
        entry = self._claims.get(att.session_id)
        if entry is not None and entry[0] is att:
            del self._claims[att.session_id]
            self._spawn(self.presence.release(att.session_id, self._value(entry[1])))

    def announce(self, session_ids: Sequence[str]) -> None:
        self._spawn(self.bus.publish(session_ids))

    def announce_close(self, session_id: str, reason: str) -> None:
        self._spawn(self.bus.notify_close(session_id, reason))

    async def live_elsewhere(self) -> set[str]:
        return await self.presence.live()

    async def attached_where(self, session_ids: Sequence[str]) -> dict[str, str]:
        found = await self.presence.lookup(session_ids)
        return {sid: owner_of(value)[0] for sid, value in found.items()}

    # -- BusHandler -------------------------------------------------------

    def on_wake(self, session_ids: Sequence[str]) -> None:
        local = self._local
        for session_id in session_ids:
            if local.feeds(session_id):
                self._dirty.add(session_id)
        if self._dirty:
            self._dirty_event.set()

    def on_supersede(self, session_id: str, token: str) -> None:
        entry = self._claims.get(session_id)
        if entry is not None and (not token or entry[1] == token):
            entry[0].terminate(superseded_status())

    def on_close(self, session_id: str, reason: str) -> None:
        self._local.close_local(session_id, reason)

    async def on_bus_state(self, up: bool) -> None:
        if up and self._sessions is not None:
            # Wake-ups may have been lost while we were away: catch every feed up.
            self.on_wake(self._sessions.local_ids())
        if self._on_state is not None:
            await self._on_state(up)

    # -- the loops --------------------------------------------------------

    @staticmethod
    async def _every(interval: float, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval)  # periodic work, not synchronisation
            try:
                await work()
            except Exception:  # the loop outlives a store or Redis hiccup
                log.exception("cluster: periodic %s failed", getattr(work, "__name__", "work"))

    async def _pump(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            batch, self._dirty = self._dirty, set()
            await asyncio.gather(*(self._catch_up(sid) for sid in batch))

    async def _catch_up(self, session_id: str) -> None:
        feeds = self._local.feeds(session_id)
        if not feeds:
            return
        after = min(f.known_seq for f in feeds)
        room = max(f.room for f in feeds)
        if room <= 0:
            return
        async with self._fetch_limit:
            try:
                frames = await self._store.frames_after(session_id, after, limit=room)
            except Exception as exc:  # noqa: BLE001 - the sweep retries
                log.warning("session %s: catch-up read failed: %r", session_id, exc)
                return
        for feed in feeds:
            feed.offer(frames)

    async def sweep(self) -> list[str]:
        """Offer stored frames that a lost wake-up did not bring; return the sessions behind."""
        local = self._local
        ids = local.local_ids()
        if not ids:
            return []
        heads = await self._store.heads(ids)
        behind = [
            sid for sid in ids if any(heads.get(sid, 0) > f.known_seq for f in local.feeds(sid))
        ]
        if behind:
            self.on_wake(behind)
        return behind

    async def heartbeat(self) -> None:
        """Refresh our registry entries; end attachments that another replica took over."""
        tokens = {sid: token for sid, (_, token) in self._claims.items()}
        if not tokens:
            return
        try:
            lost = await self.presence.refresh([(s, self._value(t)) for s, t in tokens.items()])
        except (RedisError, OSError) as exc:
            log.warning("presence heartbeat failed: %r", exc)
            return
        for session_id in lost:
            entry = self._claims.get(session_id)
            # The entry refreshed, not a newer attachment made here meanwhile.
            if entry is not None and entry[1] == tokens[session_id]:
                log.info("session %s: attached on another replica; superseding here", session_id)
                entry[0].terminate(superseded_status())


@contextlib.asynccontextmanager
async def open_hub(
    store: SessionStore, config: Config, *, on_bus_state: StateCallback | None = None
) -> AsyncIterator[SessionHub]:
    """The hub this replica runs, with the cluster its ``bus`` section names."""
    settings = BusSettings.from_config(config.bus)
    if settings.kind == "inprocess":
        async with SessionHub(
            store, LocalCluster(config.server.replica), queue_size=config.server.queue_size
        ) as hub:
            yield hub
        return
    client: Redis = Redis.from_url(settings.url, health_check_interval=10)
    cluster = RedisCluster(
        store,
        bus=RedisBus(client, replica=config.server.replica, prefix=settings.prefix),
        presence=RedisPresence(client, prefix=settings.prefix, ttl=settings.presence_ttl),
        replica=config.server.replica,
        sweep_interval=settings.sweep_interval,
        presence_ttl=settings.presence_ttl,
        on_state=on_bus_state,
    )
    try:
        async with SessionHub(store, cluster, queue_size=config.server.queue_size) as hub:
            yield hub
    finally:
        await client.aclose()
