"""A per-connector circuit breaker.

closed --N consecutive failures--> open --reset_after elapsed--> half-open
(exactly one probe call allowed; others fail fast) --probe ok--> closed, or
--probe failed--> open again. While open every call fails fast with
:class:`CircuitOpenError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from talkwire.connectors.errors import CircuitOpenError, ConnectorConfigError
from talkwire.connectors.spec import check_keys, get_number

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Count consecutive failures; fail fast while open.

    ``clock`` is injectable (tests advance a fake clock instead of sleeping);
    ``on_change(old, new)`` is called on every state change (metrics).
    """

    __slots__ = (
        "_failures",
        "_opened_at",
        "_probe_in_flight",
        "_state",
        "clock",
        "failure_threshold",
        "name",
        "on_change",
        "reset_after",
    )

    def __init__(
        self,
        failures: int = 5,
        reset_after: float = 30.0,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.failure_threshold = failures
        self.reset_after = reset_after
        self.name = name
        self.clock = clock
        self.on_change = on_change
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @classmethod
    def from_config(cls, raw: Any, where: str, *, name: str = "") -> CircuitBreaker | None:
        """``breaker: {failures: 5, reset_after: 30}``; ``breaker: false`` disables it."""
        if raw is False:
            return None
        raw = raw or {}
        check_keys(raw, {"failures", "reset_after"}, where)
        failures = int(get_number(raw, "failures", 5, where, minimum=1, integer=True))
        reset_after = get_number(raw, "reset_after", 30.0, where)
        if failures < 1:  # pragma: no cover - guarded above
            raise ConnectorConfigError(f"{where}.failures", "must be >= 1")
        return cls(failures, reset_after, name=name)

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self.clock() - self._opened_at >= self.reset_after:
            return "half_open"
        return self._state

    def _set(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        if old != new and self.on_change is not None:
            self.on_change(old, new)

    def before_call(self) -> bool:
        """Admit a call or raise :class:`CircuitOpenError`; True if the call is the probe."""
        state = self._state
        if state == "closed":
            return False
        if state == "open":
            if self.clock() - self._opened_at < self.reset_after:
                raise CircuitOpenError(f"circuit open for connector '{self.name}'")
            self._set("half_open")
        if self._probe_in_flight:
            raise CircuitOpenError(
                f"circuit half-open for connector '{self.name}': probe in flight"
            )
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self._state != "closed":
            self._set("closed")

    def record_failure(self) -> None:
        self._probe_in_flight = False
        if self._state == "half_open":
            self._opened_at = self.clock()
            self._set("open")
            return
        self._failures += 1
        if self._state == "closed" and self._failures >= self.failure_threshold:
            self._opened_at = self.clock()
            self._set("open")

    def release(self) -> None:
        """The admitted call ended without a verdict (cancelled, refused input)."""
        self._probe_in_flight = False
