"""The attachment registry: which replica holds the live attachment of which session.

One Redis string per attached session, ``<prefix>presence:<session_id>``, whose
value is ``<replica>|<token>`` (``token`` is unique per attachment, so an old
attachment never releases or refreshes a newer one on the same replica). Each
key has a TTL (``bus.presence_ttl``) that the owning replica refreshes from a
heartbeat; the entries of a replica that died expire by themselves.

Why Redis and not the ``sessions.replica`` column: claims happen on every attach
and refreshes every few seconds for every live session; putting them on Redis
keeps them off the PostgreSQL write path, and a TTL is the natural way to make
a dead replica's entries disappear (a SQL column stays stale after ``kill -9``).
The column is kept as informational "last replica that attached" for the admin
API; the registry is authoritative for supersede, for the admin API's
``attached``/``replica`` fields and for the idle-session sweeper's keep-list
(:meth:`RedisPresence.live`, one ``SCAN`` per sweep).

Claiming is one atomic ``SET key value EX ttl GET``: the previous value names
the attachment that has just been superseded (the caller notifies its replica).
A lost notice is repaired by the heartbeat: a refresh that finds the key owned
by someone else reports the session as lost, and the replica ends its
attachment there.

Assumes a single Redis (or a primary with Sentinel): the heartbeat script
touches many keys at once, which a Redis Cluster would refuse across slots.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from redis.asyncio import Redis

__all__ = ["Presence", "RedisPresence", "owner_of"]

_CHUNK = 500

_REFRESH = """
local lost = {}
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local want = ARGV[i + 1]
  local cur = redis.call('GET', key)
  if cur == want then
    redis.call('EXPIRE', key, ttl)
  elseif not cur then
    redis.call('SET', key, want, 'EX', ttl)
  else
    table.insert(lost, key)
  end
end
return lost
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def owner_of(value: str) -> tuple[str, str]:
    """Split a registry value into ``(replica, token)``."""
    replica, _, token = value.rpartition("|")
    return replica, token


class Presence(Protocol):
    """Session -> attachment registry."""

    async def claim(self, session_id: str, value: str) -> str | None:
        """Register ``value`` as the session's attachment; return the previous value."""
        ...

    async def release(self, session_id: str, value: str) -> None:
        """Drop the entry if it is still ``value``."""
        ...

    async def refresh(self, entries: Sequence[tuple[str, str]]) -> list[str]:
        """Extend the TTL of ``(session_id, value)`` entries; return sessions owned by others."""
        ...

    async def lookup(self, session_ids: Iterable[str]) -> dict[str, str]:
        """The current owner value of each attached session (absent when nobody holds it)."""
        ...

    async def live(self) -> set[str]:
        """Every session with a live entry, on any replica (for the idle-session sweeper)."""
        ...

    async def aclose(self) -> None: ...


class RedisPresence:
    """The registry in Redis (see the module docstring)."""

    def __init__(self, client: Redis, *, prefix: str, ttl: float) -> None:
        self._redis = client
        self._prefix = f"{prefix}presence:"
        self._ttl = max(1, round(ttl))
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)

    def key(self, session_id: str) -> str:
        return self._prefix + session_id

    async def claim(self, session_id: str, value: str) -> str | None:
        old = await self._redis.set(self.key(session_id), value, ex=self._ttl, get=True)
        return _text(old)

    async def release(self, session_id: str, value: str) -> None:
        await self._release(keys=[self.key(session_id)], args=[value])

    async def refresh(self, entries: Sequence[tuple[str, str]]) -> list[str]:
        lost: list[str] = []
        cut = len(self._prefix)
        for i in range(0, len(entries), _CHUNK):
            chunk = entries[i : i + _CHUNK]
            keys = [self.key(sid) for sid, _ in chunk]
            args: list[str | int] = [self._ttl, *(value for _, value in chunk)]
            result = await self._refresh(keys=keys, args=args)
            lost.extend(str(_text(k))[cut:] for k in result or ())
        return lost

    async def lookup(self, session_ids: Iterable[str]) -> dict[str, str]:
        ids = list(session_ids)
        out: dict[str, str] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            values = await self._redis.mget([self.key(s) for s in chunk])
            for sid, value in zip(chunk, values, strict=True):
                text = _text(value)
                if text is not None:
                    out[sid] = text
        return out

    async def live(self) -> set[str]:
        # SCAN walks the whole keyspace in steps of ``count`` (non-blocking for Redis);
        # about ceil(keys / 1000) round trips, once per expiry sweep.
        cut = len(self._prefix)
        match = _glob_escape(self._prefix) + "*"
        return {
            str(_text(key))[cut:] async for key in self._redis.scan_iter(match=match, count=1000)
        }

    async def aclose(self) -> None:
        return None


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
