"""How often the hot path moves a session's ``last_active_at``.

A turn's commit on SQLite is mostly the pages it dirties; moving ``last_active_at``
moves the session's entry in that column's index (a delete and an insert in another
page). Idle expiry needs it to the second, not to the turn: a session written to in
the last ``every`` seconds is not written again. Live sessions are never expired (the
sweeper keeps every attached one) and a detach writes the time, so the only reader
that sees the lag is an admin listing, by at most ``every`` seconds.
"""

from __future__ import annotations

__all__ = ["TouchThrottle"]

_FLOOR = 10_000  # entries kept before a prune is considered


class TouchThrottle:
    """Per session, whether a write at ``now`` should move ``last_active_at``."""

    def __init__(self, every: float = 1.0) -> None:
        self._every = every
        self._at: dict[str, float] = {}
        self._cap = _FLOOR

    def due(self, session_id: str, now: float) -> bool:
        """True (and remembered) when the session's time was last moved ``every`` or
        more seconds before ``now``, or never by this process."""
        last = self._at.get(session_id)
        if last is not None and 0.0 <= now - last < self._every:
            return False
        self._at[session_id] = now
        if len(self._at) > self._cap:
            self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        # Entries older than ``every`` say nothing ``due`` would not find out itself.
        self._at = {s: t for s, t in self._at.items() if 0.0 <= now - t < self._every}
        self._cap = max(_FLOOR, 2 * len(self._at))
