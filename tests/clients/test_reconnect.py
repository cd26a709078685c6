"""The reconnect policy applied to one outage (talkwire.clients.reconnect.Backoff)."""

from __future__ import annotations

import random

from talkwire.clients.reconnect import Backoff, ReconnectPolicy


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_counts_attempts_and_gives_up_after_max_attempts() -> None:
    policy = ReconnectPolicy(initial_backoff=0.5, max_backoff=4, max_attempts=3, max_elapsed=None)
    backoff = Backoff(policy, _Clock(), random.Random(1))
    delays = [backoff.next_delay() for _ in range(3)]
    caps = (0.5, 1, 2)
    assert all(d is not None and 0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert backoff.attempts == 3
    assert backoff.next_delay() is None
    assert backoff.attempts == 3


def test_backoff_gives_up_when_the_next_wait_would_pass_max_elapsed() -> None:
    clock = _Clock()
    policy = ReconnectPolicy(initial_backoff=0, max_backoff=0, max_attempts=None, max_elapsed=10)
    backoff = Backoff(policy, clock)
    assert backoff.next_delay() == 0
    clock.now += 10
    assert backoff.next_delay() == 0  # exactly at the limit: one more try
    clock.now += 0.001
    assert backoff.next_delay() is None
    assert backoff.attempts == 2
