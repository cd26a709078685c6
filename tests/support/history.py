"""A history checker for the fault suite (also usable by benchmarks).

Producers record every event they produce (:meth:`History.produced`, or
:meth:`History.maybe_produced` when the outcome is unknown, e.g. a publish that
failed with ``UNAVAILABLE`` and may or may not have been applied). Clients record
their subscriptions (:meth:`History.subscribed`) and every durable frame they
receive (:meth:`History.received`, or :meth:`History.record_frame` straight from
a ``ConverseResponse``). :meth:`History.check` then reports, per session:

* **lost** -- an event produced (acknowledged) for a key the session was
  subscribed to at that time, that never arrived;
* **duplicate** -- the same event id delivered twice (after client dedup by seq),
  or the same seq delivered twice;
* **reordered** -- seqs not strictly increasing in arrival order, or two events
  of one key arriving in the opposite order to the one they were produced in;
* **gap** -- a seq missing between the first expected seq and the highest one
  received;
* **unauthorised** -- an update for a key the session was not subscribed to /
  not allowed to see, or for an event nobody produced for that key.

:class:`OutboundHistory` checks the outbound stream the same way: every event the
store committed (``expected``) against what a sink's consumer received, per session:
**lost** (a committed event never received), **duplicate** (after dedup by event
id, the same event -- session, kind, frame seq, position -- received under a second id)
and **reordered** (positions not increasing in first-arrival order).

``Report.summary()`` is one line with the five counts; every fault test prints
it (so CI logs show the zeros) and calls ``Report.assert_clean()``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FrameRecord", "History", "OutboundHistory", "Report", "SessionReport"]

KINDS = ("lost", "duplicate", "reordered", "gap", "unauthorised")


# Every summary of this run, printed at the end of the pytest run (tests/conftest.py).
SUMMARIES: list[str] = []


@dataclass(frozen=True, slots=True)
class FrameRecord:
    session: str
    seq: int
    event_id: str
    key: str
    at: float


@dataclass(slots=True)
class _Event:
    event_id: str
    key: str
    at: float
    index: int  # production order (per key it is what "in order" means)
    certain: bool


@dataclass(slots=True)
class SessionReport:
    session: str
    frames: int = 0
    lost: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)
    gap: list[int] = field(default_factory=list)
    unauthorised: list[str] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return len(getattr(self, kind))

    @property
    def clean(self) -> bool:
        return not any(self.count(k) for k in KINDS)


@dataclass(slots=True)
class Report:
    sessions: dict[str, SessionReport]
    events: int
    frames: int

    def total(self, kind: str) -> int:
        return sum(r.count(kind) for r in self.sessions.values())

    @property
    def counts(self) -> dict[str, int]:
        return {k: self.total(k) for k in KINDS}

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def summary(self, label: str = "history") -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.counts.items())
        line = (
            f"{label}: sessions={len(self.sessions)} events={self.events} "
            f"frames={self.frames} {counts}"
        )
        SUMMARIES.append(line)
        return line

    def details(self, limit: int = 10) -> str:
        lines = []
        for rep in self.sessions.values():
            if rep.clean:
                continue
            parts = [f"{k}={getattr(rep, k)[:5]}" for k in KINDS if rep.count(k)]
            lines.append(f"  session {rep.session}: " + " ".join(parts))
            if len(lines) >= limit:
                lines.append("  ...")
                break
        return "\n".join(lines)

    def assert_clean(self) -> None:
        assert self.clean, f"{self.summary()}\n{self.details()}"


class History:
    """Records what was produced and what each session received; see the module docstring."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._events: dict[str, _Event] = {}
        self._order = 0
        # session -> key -> subscribed-since time (None: not subscribed)
        self._subs: dict[str, dict[str, float]] = defaultdict(dict)
        self._allowed: dict[str, set[str]] = defaultdict(set)
        self._frames: dict[str, list[FrameRecord]] = defaultdict(list)
        self._first_seq: dict[str, int] = {}

    # -- producers ---------------------------------------------------------

    def produced(self, event_id: str, key: str, at: float | None = None) -> None:
        """An event the system acknowledged (it must reach every subscriber of ``key``)."""
        self._add(event_id, key, at, certain=True)

    def maybe_produced(self, event_id: str, key: str, at: float | None = None) -> None:
        """An event whose fate is unknown: it may arrive (once) or not at all."""
        self._add(event_id, key, at, certain=False)

    def _add(self, event_id: str, key: str, at: float | None, *, certain: bool) -> None:
        known = self._events.get(event_id)
        if known is not None:
            known.certain = known.certain or certain
            return
        self._order += 1
        self._events[event_id] = _Event(
            event_id, key, self._clock() if at is None else at, self._order, certain
        )

    # -- sessions ----------------------------------------------------------

    def session(self, session: str, *, first_seq: int = 1) -> None:
        """Declare a session; ``first_seq`` is the first seq it should receive (gap check)."""
        self._frames.setdefault(session, [])
        self._first_seq.setdefault(session, first_seq)

    def subscribed(self, session: str, key: str, at: float | None = None) -> None:
        """``session`` is subscribed to ``key`` from ``at`` (confirmed by the server) on."""
        self.session(session)
        self._subs[session].setdefault(key, self._clock() if at is None else at)
        self._allowed[session].add(key)

    def allow(self, session: str, keys: Iterable[str]) -> None:
        """Keys ``session`` may see without a subscription being tracked for them."""
        self.session(session)
        self._allowed[session].update(keys)

    # -- consumers ---------------------------------------------------------

    def received(
        self, session: str, seq: int, event_id: str = "", key: str = "", at: float | None = None
    ) -> None:
        """A durable frame delivered to the application (after the client's dedup)."""
        self.session(session)
        self._frames[session].append(
            FrameRecord(session, seq, event_id, key, self._clock() if at is None else at)
        )

    def record_frame(self, session: str, frame: Any) -> None:
        """Record a ``ConverseResponse``; transient (seq 0) frames are ignored."""
        if not frame.seq:
            return
        if frame.WhichOneof("frame") == "update":
            self.received(session, frame.seq, frame.update.event_id, frame.update.key)
        else:
            self.received(session, frame.seq)

    def frames(self, session: str) -> list[FrameRecord]:
        return list(self._frames.get(session, ()))

    def event_count(self) -> int:
        return len(self._events)

    # -- the check ---------------------------------------------------------

    def check(self, sessions: Iterable[str] | None = None) -> Report:
        names = list(self._frames) if sessions is None else list(sessions)
        reports: dict[str, SessionReport] = {}
        total = 0
        by_key: dict[str, list[_Event]] = defaultdict(list)
        for ev in self._events.values():
            by_key[ev.key].append(ev)
        for name in names:
            rep = SessionReport(name)
            frames = self._frames.get(name, [])
            rep.frames = len(frames)
            total += len(frames)
            self._check_seqs(name, frames, rep)
            self._check_events(name, frames, by_key, rep)
            reports[name] = rep
        return Report(reports, len(self._events), total)

    def _check_seqs(self, name: str, frames: list[FrameRecord], rep: SessionReport) -> None:
        seen: set[int] = set()
        last = 0
        for f in frames:
            if f.seq in seen:
                rep.duplicate.append(f"seq {f.seq}")
                continue
            seen.add(f.seq)
            if f.seq < last:
                rep.reordered.append(f"seq {f.seq} after {last}")
            last = max(last, f.seq)
        if seen:
            start = self._first_seq.get(name, 1)
            rep.gap.extend(s for s in range(start, max(seen) + 1) if s not in seen)

    def _check_events(
        self,
        name: str,
        frames: list[FrameRecord],
        by_key: dict[str, list[_Event]],
        rep: SessionReport,
    ) -> None:
        got: dict[str, int] = defaultdict(int)
        last_index: dict[str, int] = {}
        allowed = self._allowed.get(name, set())
        for f in frames:
            if not f.event_id:
                continue
            got[f.event_id] += 1
            if got[f.event_id] == 2:
                rep.duplicate.append(f.event_id)
            ev = self._events.get(f.event_id)
            if f.key not in allowed or ev is None or ev.key != f.key:
                rep.unauthorised.append(f"{f.event_id} ({f.key})")
                continue
            if got[f.event_id] > 1:
                continue
            prev = last_index.get(f.key, 0)
            if ev.index < prev:
                rep.reordered.append(f"{f.event_id} ({f.key})")
            last_index[f.key] = max(prev, ev.index)
        for key, since in self._subs.get(name, {}).items():
            for ev in by_key.get(key, ()):
                if ev.certain and ev.at >= since and not got.get(ev.event_id):
                    rep.lost.append(ev.event_id)


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    session: str
    event_id: str
    position: int
    kind: str
    seq: int


class OutboundHistory:
    """Committed conversation events vs. what a sink delivered (see the module docstring)."""

    def __init__(self) -> None:
        self._expected: dict[str, list[OutboundRecord]] = defaultdict(list)
        self._received: dict[str, list[OutboundRecord]] = defaultdict(list)

    def expected(self, session: str, event_id: str, position: int, kind: str, seq: int) -> None:
        self._expected[session].append(OutboundRecord(session, event_id, position, kind, seq))

    def received(self, session: str, event_id: str, position: int, kind: str, seq: int) -> None:
        self._received[session].append(OutboundRecord(session, event_id, position, kind, seq))

    def record_event(self, event: Any) -> None:
        """Record a received ``ConversationEvent`` (message or its JSON dict)."""
        if isinstance(event, dict):
            self.received(
                event["session_id"],
                event["id"],
                int(event.get("position", 0)),
                event["kind"],
                int(event.get("seq", 0)),
            )
        else:
            self.received(event.session_id, event.id, event.position, event.kind, event.seq)

    def received_count(self) -> int:
        return sum(len(v) for v in self._received.values())

    def check(self) -> Report:
        sessions: dict[str, SessionReport] = {}
        for name in sorted(set(self._expected) | set(self._received)):
            rep = SessionReport(name)
            got = self._received.get(name, [])
            rep.frames = len(got)
            first: dict[str, OutboundRecord] = {}
            for r in got:
                first.setdefault(r.event_id, r)
            unique = list(first.values())
            seen_what: dict[tuple[str, int, int], str] = {}
            for r in unique:
                what = (r.kind, r.seq, r.position)
                other = seen_what.setdefault(what, r.event_id)
                if other != r.event_id:
                    rep.duplicate.append(r.event_id)
            last = -1
            for r in unique:
                if r.position <= last:
                    rep.reordered.append(r.event_id)
                last = max(last, r.position)
            rep.lost = [e.event_id for e in self._expected.get(name, []) if e.event_id not in first]
            sessions[name] = rep
        events = sum(len(v) for v in self._expected.values())
        return Report(sessions, events, self.received_count())
