"""The SessionHub: live attachments and watchers on this process.

Each attachment (one ``Converse`` stream) and each watcher (one admin
``Watch`` stream) owns a :class:`Feed`: a bounded queue that committed frames
are offered to, read by exactly one writer task. A feed delivers a session's
durable frames in seq order, once: frames at or below what it already sent are
skipped, and a gap (a frame offered before an earlier one arrived) is filled
from the SessionStore, which is the source of truth. A feed whose queue
overflows ends with ``RESOURCE_EXHAUSTED``; the frames stay in the store for
the resume.

The hub works with a :class:`~talkwire.server.cluster.Cluster`: on one replica
a ``LocalCluster`` (nothing to tell anyone), with several a ``RedisCluster``
that claims attachments in the registry, wakes other replicas and catches local
feeds up from the store. The hub calls it at four points (claim, detach,
deliver, close); the cluster calls back through
:class:`~talkwire.server.cluster.LocalSessions`, which the hub provides.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self

import grpc

from talkwire.server.errors import Status
from talkwire.server.frames import StoredFrame
from talkwire.server.identity import Identity
from talkwire.server.store import SessionStore

if TYPE_CHECKING:
    from talkwire.server.cluster import Cluster

__all__ = ["Attachment", "Feed", "SessionHub", "superseded_status"]

log = logging.getLogger(__name__)


class _Close:
    """Queue marker: end the feed normally after what is queued."""


_CLOSE = _Close()

_DRAINING = "server is shutting down; resume on another server"


def _draining_status(message: str = _DRAINING) -> Status:
    return Status(grpc.StatusCode.UNAVAILABLE, message, True)


def superseded_status() -> Status:
    """How an attachment ends when a newer one of its session exists (here or elsewhere)."""
    return Status(grpc.StatusCode.ABORTED, "superseded by a newer attachment", False)


@dataclass(frozen=True, slots=True)
class _Transient:
    payload: bytes


class Feed:
    """An ordered, gap-filling, bounded stream of one session's frames."""

    def __init__(self, store: SessionStore, session_id: str, *, after_seq: int, size: int) -> None:
        self.session_id = session_id
        self.sent_seq = after_seq
        self.queued_seq = after_seq  # highest seq queued (or replayed); re-offers skip below it
        self._store = store
        self._queue: asyncio.Queue[StoredFrame | _Transient | _Close] = asyncio.Queue(size)
        self.ended = asyncio.Event()
        self.status: Status | None = None

    @property
    def known_seq(self) -> int:
        """The highest seq this feed has sent or queued (a catch-up fetches above it)."""
        return max(self.sent_seq, self.queued_seq)

    def offer(self, frames: Sequence[StoredFrame]) -> None:
        """Queue committed frames; never blocks. Overflow ends the feed (nothing is lost)."""
        for frame in frames:
            if frame.seq <= max(self.sent_seq, self.queued_seq):
                continue
            self.queued_seq = frame.seq
            self._put(frame)

    @property
    def room(self) -> int:
        """Free slots in the queue (a catch-up never offers more than this)."""
        return self._queue.maxsize - self._queue.qsize()

    def send_transient(self, payload: bytes) -> None:
        """Queue a transient (seq 0) frame such as ``opened`` or ``pong``."""
        self._put(_Transient(payload))

    def close(self) -> None:
        """End normally once everything queued so far is written."""
        self._put(_CLOSE)

    def _put(self, item: StoredFrame | _Transient | _Close) -> None:
        if self.ended.is_set():
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.terminate(
                Status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "the client is not reading fast enough; resume to continue",
                    True,
                )
            )

    def terminate(self, status: Status | None) -> None:
        """End the feed with ``status`` (``None`` or OK: a normal end). First call wins."""
        if self.ended.is_set():
            return
        self.status = status
        self.ended.set()

    async def payloads(self, replay: Sequence[StoredFrame] = ()) -> AsyncIterator[bytes]:
        """Yield wire payloads in order: ``replay`` first, then live frames, filling gaps."""
        if replay:
            self.queued_seq = max(self.queued_seq, replay[-1].seq)
        for frame in replay:
            if frame.seq == self.sent_seq + 1:
                self.sent_seq = frame.seq
                yield frame.payload
        while not self.ended.is_set():
            item = await self._queue.get()
            if isinstance(item, _Close):
                self.terminate(None)
                return
            if isinstance(item, _Transient):
                yield item.payload
                continue
            if item.seq <= self.sent_seq:
                continue
            if item.seq > self.sent_seq + 1:
                missing = await self._store.frames_after(
                    self.session_id, self.sent_seq, limit=item.seq - self.sent_seq - 1
                )
                for frame in missing:
                    if frame.seq != self.sent_seq + 1:
                        break
                    self.sent_seq = frame.seq
                    yield frame.payload
                if item.seq != self.sent_seq + 1:
                    log.error(
                        "session %s: frames %d..%d missing from the store",
                        self.session_id,
                        self.sent_seq + 1,
                        item.seq - 1,
                    )
                    self.terminate(
                        Status(grpc.StatusCode.DATA_LOSS, "frames missing; resume", True)
                    )
                    return
            self.sent_seq = item.seq
            yield item.payload


class Attachment(Feed):
    """The live ``Converse`` stream of one session on this process."""

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        identity: Identity,
        *,
        after_seq: int,
        size: int,
    ) -> None:
        super().__init__(store, session_id, after_seq=after_seq, size=size)
        self.identity = identity
        # loop.time() when the current write to the wire began; None when not writing.
        self.writing_since: float | None = None
        self.ack_seq = 0  # the newest seq the client acked
        self.acked_flushed = 0  # the newest ack written to the store


class SessionHub:
    """Owns the live attachments and watchers of this process.

    An async context manager: entering it starts the cluster with this hub as
    its :class:`~talkwire.server.cluster.LocalSessions`; :meth:`aclose` stops it.
    """

    def __init__(self, store: SessionStore, cluster: Cluster, *, queue_size: int = 256) -> None:
        self._store = store
        self._cluster = cluster
        self._queue_size = queue_size
        self._attachments: dict[str, Attachment] = {}
        self._watchers: dict[str, set[Feed]] = {}
        self._started = False
        self.draining = False

    async def __aenter__(self) -> Self:
        await self._cluster.start(self)
        self._started = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the cluster (registry entries released, bus closed). Idempotent."""
        if self._started:
            self._started = False
            await self._cluster.aclose()

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @property
    def ready(self) -> bool:
        """Readiness: the cluster can reach the other replicas and this one is not draining."""
        return self._cluster.healthy and not self.draining

    def __len__(self) -> int:
        return len(self._attachments)

    def attached_ids(self) -> list[str]:
        return list(self._attachments)

    def is_attached(self, session_id: str) -> bool:
        return session_id in self._attachments

    # -- LocalSessions (what the cluster reads and does here) --------------

    def current(self, session_id: str) -> Attachment | None:
        """This process's attachment of ``session_id``, if any."""
        return self._attachments.get(session_id)

    def local_ids(self) -> list[str]:
        """Sessions with an attachment or a watcher here."""
        return list(dict.fromkeys([*self._attachments, *self._watchers]))

    def feeds(self, session_id: str) -> list[Feed]:
        """The feeds of ``session_id`` here that are still running."""
        feeds: list[Feed] = list(self._watchers.get(session_id, ()))
        att = self._attachments.get(session_id)
        if att is not None:
            feeds.append(att)
        return [f for f in feeds if not f.ended.is_set()]

    def close_local(self, session_id: str, reason: str) -> None:
        """End the session's attachment (``NOT_FOUND``) and watchers here."""
        att = self._attachments.get(session_id)
        if att is not None:
            att.terminate(Status(grpc.StatusCode.NOT_FOUND, f"session closed: {reason}", False))
        for feed in self._watchers.get(session_id, ()):
            feed.close()

    # -- sessions ----------------------------------------------------------

    async def live_ids(self) -> set[str]:
        """Sessions with a live attachment anywhere (here, plus the cluster's registry).

        Raises when the registry cannot be read: better to skip one expiry pass
        than to expire sessions that are attached elsewhere.
        """
        return {*self._attachments, *await self._cluster.live_elsewhere()}

    async def attached_where(self, session_ids: Iterable[str]) -> dict[str, str] | None:
        """``session -> replica`` holding its live attachment; ``None``: no registry."""
        ids = list(session_ids)
        where = await self._cluster.attached_where(ids)
        if where is None:
            return None
        for sid in ids:
            if sid in self._attachments:
                where.setdefault(sid, self._cluster.replica)  # e.g. attached while Redis was away
        return where

    def attach(self, session_id: str, identity: Identity, *, after_seq: int) -> Attachment:
        """Register a new attachment; an older one of the same session is superseded."""
        att = Attachment(
            self._store, session_id, identity, after_seq=after_seq, size=self._queue_size
        )
        old = self._attachments.get(session_id)
        if old is not None:
            old.terminate(superseded_status())
        self._attachments[session_id] = att
        if self.draining:
            # The stream passed the draining check before drain() ended every stream.
            att.terminate(_draining_status())
        return att

    async def claim(self, att: Attachment) -> None:
        """Announce ``att`` to the cluster (an older attachment elsewhere is superseded)."""
        await self._cluster.claim(att)

    def detach(self, att: Attachment) -> None:
        if self._attachments.get(att.session_id) is att:
            del self._attachments[att.session_id]
        self._cluster.release(att)

    def close_session(self, session_id: str, reason: str) -> None:
        """End the session's streams here and on every other replica."""
        self.close_local(session_id, reason)
        self._cluster.announce_close(session_id, reason)

    def watch(self, session_id: str, *, after_seq: int) -> Feed:
        feed = Feed(self._store, session_id, after_seq=after_seq, size=self._queue_size)
        self._watchers.setdefault(session_id, set()).add(feed)
        return feed

    def unwatch(self, feed: Feed) -> None:
        feeds = self._watchers.get(feed.session_id)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del self._watchers[feed.session_id]

    def deliver(self, frames: Mapping[str, Sequence[StoredFrame]]) -> None:
        """Offer committed frames to the local feeds of their sessions; wake the others."""
        for session_id, items in frames.items():
            att = self._attachments.get(session_id)
            if att is not None:
                att.offer(items)
            for feed in self._watchers.get(session_id, ()):
                feed.offer(items)
        if frames:
            # Every session, not only those not attached here: watchers elsewhere need it too.
            self._cluster.announce(list(frames))

    def take_acks(self) -> list[tuple[str, int]]:
        """Acks received since the last call, newest per session, marked as flushed."""
        out = []
        for att in self._attachments.values():
            if att.ack_seq > att.acked_flushed:
                att.acked_flushed = att.ack_seq
                out.append((att.session_id, att.ack_seq))
        return out

    def cut_stuck_writers(self, now: float, timeout: float) -> int:
        """End attachments whose current write began more than ``timeout`` seconds ago."""
        cut = 0
        for att in list(self._attachments.values()):
            since = att.writing_since
            if since is not None and now - since > timeout:
                att.terminate(
                    Status(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the client did not read for {timeout:g}s; resume to continue",
                        True,
                    )
                )
                cut += 1
        return cut

    def drain(self, message: str = _DRAINING) -> None:
        """End every live stream with ``UNAVAILABLE`` (the client resumes elsewhere)."""
        self.draining = True
        status = _draining_status(message)
        for att in list(self._attachments.values()):
            att.terminate(status)
        for feeds in list(self._watchers.values()):
            for feed in list(feeds):
                feed.terminate(status)
