"""When a dropped ``Converse`` stream is resumed, how fast, and what the hook is told.

:class:`ReconnectPolicy` is the user's knob: which stream-ending statuses are
retried, the full-jitter exponential backoff, and when to give up.
:class:`Backoff` applies it to one outage (from the drop to the resume or the
end). :class:`ConnectionEvent` is what ``on_connection_event`` receives.

An authentication failure is never retried: ``UNAUTHENTICATED`` and
``PERMISSION_DENIED`` cannot be made retriable (a policy naming them is refused),
so a session whose credentials stop working ends at once with a typed error
instead of resuming in a loop.

The server's trailing metadata ``talkwire-retriable`` (:data:`RETRIABLE_TRAILER`)
refines the status: ``"0"`` ends the session even on a status the policy would
retry (a genuine server ``INTERNAL``, say); ``"1"`` or no trailer leaves the
decision to the status. grpc-python's ``INTERNAL "Internal error from Core"``
(a client write racing the end of a stream) carries no trailer, so it resumes.
Both clients (``talkwire.clients.chat`` and ``talkwire.clients.sync``) decide
with :meth:`ReconnectPolicy.resumes` and wait with :class:`Backoff`.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Awaitable, Callable, Iterable

import grpc

__all__ = [
    "NEVER_RETRIED",
    "RETRIABLE_CODES",
    "RETRIABLE_TRAILER",
    "Backoff",
    "ConnectionEvent",
    "ConnectionEventKind",
    "ConnectionHook",
    "ReconnectPolicy",
    "retriable_hint",
]

#: Stream-ending statuses after which the session resumes automatically by default.
#: ``INTERNAL`` is among them: grpc-python reports ``INTERNAL "Internal error from
#: Core"`` when a client write (an ack) races the end of a stream, hiding the
#: server's status (a genuine server ``INTERNAL`` carries ``talkwire-retriable: 0``
#: and ends the session). ``DATA_LOSS`` is the server's "frames missing; resume":
#: the resume either fills the gap or fails loudly (a gap is a ProtocolError).
RETRIABLE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        # The server found a frame missing mid-stream; the resume replays it from the store.
        grpc.StatusCode.DATA_LOSS,
    }
)

#: Authentication failures: they end the session at once, whatever the policy says.
NEVER_RETRIED: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
)

#: The trailing-metadata key with the server's own verdict: "1" retriable, "0" not.
RETRIABLE_TRAILER = "talkwire-retriable"

_RNG = random.Random()  # noqa: S311 - jitter only, not security relevant


@dataclasses.dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """When and how fast a dropped session stream is resumed.

    The n-th consecutive attempt (n = 0, 1, ...) waits a random time in
    ``[0, min(max_backoff, initial_backoff * multiplier**n)]`` ("full jitter").
    The counters restart after each successful resume. The session gives up
    with :class:`~talkwire.clients.errors.ReconnectExhausted` after
    ``max_attempts`` attempts or ``max_elapsed`` seconds since the drop
    (``None`` = no limit). ``retriable_codes`` may not contain
    :data:`NEVER_RETRIED` (``ValueError``).
    """

    enabled: bool = True
    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    multiplier: float = 2.0
    max_attempts: int | None = 20
    max_elapsed: float | None = 300.0
    retriable_codes: frozenset[grpc.StatusCode] = RETRIABLE_CODES

    def __post_init__(self) -> None:
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")
        refused = sorted(code.name for code in self.retriable_codes & NEVER_RETRIED)
        if refused:
            raise ValueError(
                f"retriable_codes: {', '.join(refused)} is an authentication failure "
                "and is never retried"
            )

    def retries(self, code: grpc.StatusCode) -> bool:
        """Whether a stream that ended with ``code`` is resumed."""
        return self.enabled and code in self.retriable_codes

    def resumes(self, code: grpc.StatusCode, retriable: bool | None = None) -> bool:
        """Whether a stream that ended with ``code`` (and the server's hint) is resumed.

        ``retriable`` is :func:`retriable_hint` of the trailing metadata: ``False``
        vetoes a resume, ``True`` or ``None`` leave it to :meth:`retries`.
        """
        return retriable is not False and self.retries(code)

    def backoff_cap(self, attempt: int) -> float:
        """The upper bound of the delay before attempt number ``attempt`` (from 0)."""
        try:
            grown = self.initial_backoff * self.multiplier**attempt
        except OverflowError:
            grown = self.max_backoff
        return min(self.max_backoff, grown)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A full-jitter delay before attempt number ``attempt`` (from 0)."""
        return (rng or _RNG).uniform(0.0, self.backoff_cap(attempt))


class Backoff:
    """The policy applied to one outage: the delay before each attempt, until it gives up.

    ``clock`` is a monotonic clock in seconds (the event loop's ``time``); the
    outage starts when the object is made.
    """

    def __init__(
        self,
        policy: ReconnectPolicy,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._started = clock()
        self.attempts = 0

    def next_delay(self) -> float | None:
        """The wait before the next attempt (counted in ``attempts``); ``None``: give up."""
        policy = self._policy
        delay = policy.delay(self.attempts, self._rng)
        if policy.max_attempts is not None and self.attempts >= policy.max_attempts:
            return None
        elapsed = self._clock() + delay - self._started
        if policy.max_elapsed is not None and elapsed > policy.max_elapsed:
            return None
        self.attempts += 1
        return delay


class ConnectionEventKind(enum.StrEnum):
    DISCONNECTED = "disconnected"  # the stream ended with a retriable status
    RETRYING = "retrying"  # about to wait ``delay`` and attempt a resume
    RESUMED = "resumed"  # re-attached; ``replayed`` frames follow
    GAVE_UP = "gave_up"  # the reconnect policy is exhausted


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """Passed to the ``on_connection_event`` hook."""

    kind: ConnectionEventKind
    session_id: str
    code: grpc.StatusCode | None = None
    details: str = ""
    attempt: int = 0
    delay: float = 0.0
    replayed: int = 0
    last_seq: int = 0
    reconnects: int = 0


ConnectionHook = Callable[[ConnectionEvent], Awaitable[None] | None]


def retriable_hint(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> bool | None:
    """The ``talkwire-retriable`` trailer as a bool; ``None`` when the server sent none."""
    for key, value in trailing_metadata or ():
        if key.lower() == RETRIABLE_TRAILER:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            return text.strip() != "0"
    return None
