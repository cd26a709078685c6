"""Small asyncio helpers shared by the server's long-lived components."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

__all__ = ["Backoff", "Periodic", "cancel_and_wait"]

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it; re-raise if *we* are being cancelled meanwhile."""
    if task is None or task.done():
        if task is not None and not task.cancelled():
            task.exception()  # mark retrieved
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: BLE001 - already failed; logged by its owner
        log.debug("task %s ended with an error while cancelled", task.get_name())


class Backoff:
    """Capped exponential backoff with "equal" jitter (half fixed, half random).

    :meth:`next` returns a delay drawn uniformly from ``[ceiling / 2, ceiling]``
    where ``ceiling`` starts at ``initial`` and doubles up to ``cap``, so many
    replicas retrying the same broker do not knock in step. :meth:`reset` after
    a success.
    """

    def __init__(self, initial: float, cap: float, *, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = max(cap, initial)
        self._ceiling = initial
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto

    def next(self) -> float:
        """The delay before the next attempt (and double the ceiling for the one after)."""
        ceiling = self._ceiling
        self._ceiling = min(self._ceiling * 2, self.cap)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._ceiling = self.initial


class Periodic:
    """Runs ``work`` every ``interval`` seconds while entered (an async context manager).

    A pass that raises is logged and the next tick tries again; cancellation is never
    swallowed. :meth:`aclose` stops the loop and waits for it (idempotent).
    """

    def __init__(
        self, work: Callable[[], Awaitable[object]], interval: float, *, name: str
    ) -> None:
        self._work = work
        self._interval = interval
        self._name = name
        self._tasks: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        tasks = asyncio.TaskGroup()
        await tasks.__aenter__()
        self._tasks = tasks
        self._task = tasks.create_task(self._run(), name=self._name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, None
        if tasks is not None and self._task is not None:
            self._task.cancel()
            await tasks.__aexit__(None, None, None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)  # periodic work, not synchronisation
            try:
                await self._work()
            except Exception:
                log.exception("%s failed; retrying in %ss", self._name, self._interval)
