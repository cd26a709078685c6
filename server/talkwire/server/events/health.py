"""The Kafka consumer's progress watchdog and its health / lag reporting.

:class:`ConsumerHealth` knows when the consumer last made progress (a stored
batch or an empty poll) and pushes what the ingress reports to its observers:
health to ``on_health`` (only on a change; the first report always goes out)
and the lag and stall gauges to ``metrics``. :meth:`ConsumerHealth.watch`
re-reports every ``interval`` and logs one warning when progress stops for
``stall_after`` seconds (and one when it resumes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from talkwire.server.metrics import Metrics

__all__ = ["ConsumerHealth", "HealthCallback"]

log = logging.getLogger(__name__)

HealthCallback = Callable[[bool], Awaitable[None]]
"""Called with the consumer's health whenever it changes (and once at start)."""


class ConsumerHealth:
    """Progress clock + health/lag reporting for one consumer."""

    def __init__(
        self,
        *,
        stall_after: float,
        on_health: HealthCallback | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_after = stall_after
        self._on_health = on_health
        self._metrics = metrics
        self._clock = clock
        self.last_progress = clock()
        self._stalled = False
        self._reported: bool | None = None

    @property
    def fresh(self) -> bool:
        """Progress within ``stall_after`` seconds."""
        return self._clock() - self.last_progress <= self.stall_after

    def progress(self) -> None:
        self.last_progress = self._clock()
        if self._stalled:
            log.warning("kafka ingress is making progress again")
            self._stalled = False

    async def report(self, healthy: bool, lag: int) -> None:
        """Push ``healthy`` (on a change) and the gauges to the observers."""
        if self._metrics is not None:
            self._metrics.consumer_stalled.set(0 if healthy else 1)
            self._metrics.consumer_lag_total.set(lag)
        if self._on_health is None or healthy is self._reported:
            return
        self._reported = healthy
        try:
            await self._on_health(healthy)
        except Exception:
            log.exception("kafka health observer failed")

    async def watch(
        self,
        healthy: Callable[[], bool],
        lag: Callable[[], int],
        active: Callable[[], bool],
        *,
        detail: Callable[[], str] = str,
    ) -> None:
        """Re-report every interval; warn once when an ``active`` consumer stalls."""
        interval = max(0.05, min(1.0, self.stall_after / 4))
        while True:
            await asyncio.sleep(interval)
            await self.report(healthy(), lag())
            if not active():
                continue
            idle = self._clock() - self.last_progress
            if idle > self.stall_after and not self._stalled:
                self._stalled = True
                log.warning("kafka ingress stalled: no progress for %.1fs (%s)", idle, detail())
