"""Retry policy with full-jitter exponential backoff.

Attempt ``n`` (0-based) sleeps ``uniform(0, min(max_delay, base_delay * 2**n))``
before the next one (the "full jitter" of the AWS architecture blog), and never
past the call's deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from talkwire.connectors.spec import check_keys, get_number

__all__ = ["IDEMPOTENT_METHODS", "RetryPolicy"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(slots=True)
class RetryPolicy:
    attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 2.0
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_config(cls, raw: Any, where: str) -> RetryPolicy:
        """``retries: 3`` or ``retries: {attempts: 3, base_delay: 0.1, max_delay: 2}``."""
        if raw is None:
            return cls()
        if raw is False:
            return cls(attempts=1)
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = {"attempts": raw}
        check_keys(raw, {"attempts", "base_delay", "max_delay"}, where)
        return cls(
            attempts=max(1, int(get_number(raw, "attempts", 3, where, minimum=1, integer=True))),
            base_delay=get_number(raw, "base_delay", 0.1, where),
            max_delay=get_number(raw, "max_delay", 2.0, where),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        cap = min(self.max_delay, self.base_delay * (2 ** min(attempt, 30)))
        return self.rng.uniform(0.0, cap)
