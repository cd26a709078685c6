"""The relay: moves one sink's pending events out, each session in order.

One relay per sink per replica. A tick takes up to ``relay.sessions`` sessions with
events waiting for the sink (skipping those in backoff), claims them (advisory locks:
a session another replica works is skipped), reads up to ``relay.batch`` events of
each, hands them to the sink in one call, then deletes what was delivered and
dead-letters what was given up on, and releases the claims. On SQLite (one process,
in-process claims) the sessions and their events are read in one go before the claim.

At least once: a crash between the sink's acknowledgement and the delete sends the
same events (same ids) again. Per-session order: a session's events are handed over
in id order, a failure stops that session at the failed event, and the next attempt
starts again from it.

A failed session waits a full-jitter backoff (``uniform(0, min(max_delay,
base_delay * 2**n))``) or the receiver's ``Retry-After``; the sink's circuit breaker
pauses the whole sink while open. An event is dead-lettered when the receiver refused
it (not retriable), after ``dead_letter.max_attempts`` attempts (0: no limit) or when
older than ``dead_letter.max_age`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from talkwire.connectors.errors import CircuitOpenError
from talkwire.server.errors import TalkwireError
from talkwire.server.outbound.claims import SessionLocks
from talkwire.server.outbound.events import StoredEvent
from talkwire.server.outbound.outbox import OutboundOutbox
from talkwire.server.outbound.record import EventRecorder
from talkwire.server.outbound.settings import RelaySettings, SinkSettings
from talkwire.server.outbound.sink import DeliveryError, Outcome, Sink

__all__ = ["Relay", "RelayCounters"]

log = logging.getLogger(__name__)

_CHECK = 0.005  # seconds between looks at the in-process "new events" generation
_PART = 2000  # events per sink call within a round (a large backlog is pipelined)


def _parts(stored: dict[str, list[StoredEvent]], size: int) -> list[dict[str, list[StoredEvent]]]:
    """``stored`` cut into parts of whole sessions, about ``size`` events each."""
    parts: list[dict[str, list[StoredEvent]]] = []
    part: dict[str, list[StoredEvent]] = {}
    n = 0
    for sid, events in stored.items():
        if n and n + len(events) > size:
            parts.append(part)
            part, n = {}, 0
        part[sid] = events
        n += len(events)
    if part:
        parts.append(part)
    return parts


@dataclass(slots=True)
class RelayCounters:
    """Since this replica started."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    dead_lettered: int = 0


class Relay:
    """Publishes one sink's events (see the module docstring). Run :meth:`run` as a task."""

    def __init__(
        self,
        sink: Sink,
        settings: SinkSettings,
        relay: RelaySettings,
        outbox: OutboundOutbox,
        locks: SessionLocks,
        recorder: EventRecorder,
        *,
        on_outcome: Callable[[str, str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.relay = relay
        self.counters = RelayCounters()
        self._outbox = outbox
        self._locks = locks
        self._recorder = recorder
        self._on_outcome = on_outcome
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not secrets
        self._attempts: dict[str, int] = {}
        self._backoff: dict[str, float] = {}

    @property
    def name(self) -> str:
        return self.sink.name

    @property
    def breaker_state(self) -> str:
        return self.sink.breaker.state if self.sink.breaker is not None else "closed"

    async def run(self) -> None:
        """Tick forever: at once while there is work, else on new local events or every
        ``relay.poll_interval`` seconds (events other replicas wrote)."""
        seen = -1
        idle_since = self._clock()
        while True:
            seen = self._recorder.generation
            try:
                worked = await self.tick()
            except TalkwireError as exc:  # the store or the claims are down: try again later
                log.warning("outbound %s: %s", self.name, exc)
                worked = 0
                await asyncio.sleep(self.relay.poll_interval * 10)
            if worked:
                idle_since = self._clock()
                # Under steady load, gather a few ms of events per round: fewer, larger
                # rounds cost less CPU per event than one round per commit.
                await asyncio.sleep(self.relay.linger)
                continue
            # The generation is bumped on the store's writer thread: polled, not awaited.
            while (  # noqa: ASYNC110
                self._recorder.generation == seen
                and self._clock() - idle_since < self.relay.poll_interval
            ):
                await asyncio.sleep(_CHECK)
            idle_since = self._clock()

    def _skipped(self) -> set[str]:
        now = self._clock()
        for sid in [s for s, until in self._backoff.items() if until <= now]:
            del self._backoff[sid]
        return set(self._backoff)

    async def tick(self) -> int:
        """One round; returns how many sessions were handed to the sink."""
        if self.breaker_state == "open":
            return 0
        if self._outbox.single_process:
            # SQLite: the claims are this process's own, so read the round first (one
            # reader hop for its sessions and their events) and claim what it found.
            stored = await self._outbox.next_events(
                self.name, self.relay.sessions, self.relay.batch, skip=self._skipped()
            )
            if not stored:
                return 0
            names = {f"{self.name}/{sid}": sid for sid in stored}
            got = await self._locks.acquire(list(names))
            try:
                return await self._work({names[n]: stored[names[n]] for n in got})
            finally:
                await self._locks.release(got)
        ids = await self._outbox.pending_sessions(
            self.name, self.relay.sessions, skip=self._skipped()
        )
        if not ids:
            return 0
        names = {f"{self.name}/{sid}": sid for sid in ids}
        got = await self._locks.acquire(list(names))
        try:
            claimed = [names[n] for n in got]
            if not claimed:
                return 0
            stored = await self._outbox.pending_events(self.name, claimed, self.relay.batch)
            return await self._work(stored)
        finally:
            await self._locks.release(got)

    async def _work(self, stored: dict[str, list[StoredEvent]]) -> int:
        """Hand the round to the sink in parts of about ``_PART`` events (whole sessions,
        so each session's order is one part's), ``sink.parts_in_flight`` parts at a time
        (Kafka: two, a part is settled while the next one is delivered). A part with a
        failed session ends the round once the parts handed over are settled (the rest
        waits for the next round)."""
        stored = {sid: evs for sid, evs in stored.items() if evs}
        worked = 0
        sending: deque[tuple[dict[str, list[StoredEvent]], asyncio.Task[dict[str, Outcome]]]]
        sending = deque()
        failed = False
        try:
            for part in _parts(stored, _PART):
                if failed or not self._may_call():
                    break
                sending.append((part, asyncio.ensure_future(self._deliver(part))))
                worked += len(part)
                if len(sending) >= max(1, self.sink.parts_in_flight):
                    failed = await self._settle_first(sending)
            while sending:
                await self._settle_first(sending)
        finally:
            for _, task in sending:  # cancelled: the sink calls end with the relay
                task.cancel()
            if sending:
                await asyncio.gather(*(task for _, task in sending), return_exceptions=True)
        return worked

    async def _settle_first(
        self,
        sending: deque[tuple[dict[str, list[StoredEvent]], asyncio.Task[dict[str, Outcome]]]],
    ) -> bool:
        """Wait for the oldest part in the sink and settle it; True when a session failed."""
        part, task = sending[0]
        outcomes = await task
        sending.popleft()
        await self._settle(part, outcomes)
        return any(o.error is not None for o in outcomes.values())

    def _may_call(self) -> bool:
        breaker = self.sink.breaker
        try:
            if breaker is not None:
                breaker.before_call()
        except CircuitOpenError:
            return False
        return True

    async def _deliver(self, part: dict[str, list[StoredEvent]]) -> dict[str, Outcome]:
        try:
            return await self.sink.deliver(part)
        except DeliveryError as exc:
            return {sid: Outcome(0, exc) for sid in part}
        except Exception as exc:  # a sink bug must not stop the relay
            log.exception("outbound %s: delivery failed", self.name)
            err = DeliveryError(f"sink failed: {type(exc).__name__}", retriable=True)
            return {sid: Outcome(0, err) for sid in part}

    async def _settle(
        self, stored: dict[str, list[StoredEvent]], outcomes: dict[str, Outcome]
    ) -> None:
        delivered: list[int] = []
        dead: list[tuple[StoredEvent, int, str]] = []
        transient = False
        for sid, events in stored.items():
            outcome = outcomes.get(sid, Outcome(0, DeliveryError("no outcome", retriable=True)))
            delivered += [e.id for e in events[: outcome.delivered]]
            if outcome.error is None:
                self._attempts.pop(sid, None)
                continue
            head = events[outcome.delivered] if outcome.delivered < len(events) else None
            if head is None:
                continue
            transient |= outcome.error.retriable
            reason = self._fail(sid, head, outcome.error)
            if reason:
                dead.append((head, self._attempts.pop(sid, 1), reason))
                self._backoff.pop(sid, None)
        self._verdict(transient)
        self._count("delivered", len(delivered))
        self._count("dead_lettered", len(dead))
        await self._outbox.settle(self.name, delivered, dead)

    def _fail(self, sid: str, head: StoredEvent, error: DeliveryError) -> str:
        """Count a failure; return the dead-letter reason, or "" to retry after a backoff."""
        attempts = self._attempts.get(sid, 0) + 1
        self._attempts[sid] = attempts
        self._count("failed", 1)
        policy = self.settings.dead_letter
        if not error.retriable:
            return f"refused: {error}"
        if policy.max_attempts and attempts >= policy.max_attempts:
            return f"gave up after {attempts} attempts: {error}"
        if self._wall() - head.created_at > policy.max_age:
            return f"older than {policy.max_age:g} s: {error}"
        self._count("retried", 1)
        cap = min(self.settings.max_delay, self.settings.base_delay * 2 ** min(attempts - 1, 30))
        delay = error.retry_after if error.retry_after is not None else self._rng.uniform(0, cap)
        self._backoff[sid] = self._clock() + delay
        return ""

    def _verdict(self, transient: bool) -> None:
        breaker = self.sink.breaker
        if breaker is None:
            return
        if transient:
            breaker.record_failure()
        else:
            breaker.record_success()

    def _count(self, outcome: str, n: int) -> None:
        if not n:
            return
        setattr(self.counters, outcome, getattr(self.counters, outcome) + n)
        if self._on_outcome is not None:
            self._on_outcome(self.name, outcome, n)
