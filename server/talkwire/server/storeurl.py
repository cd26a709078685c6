"""Checks of the ``store.url`` setting: a usable async driver, and a database that exists.

The URL is a SQLAlchemy *async* URL: ``sqlite+aiosqlite:///path.db``,
``postgresql+asyncpg://user@host/db``, ``mysql+asyncmy://user@host/db`` or
``mysql+aiomysql://user@host/db`` (``mariadb+`` works as ``mysql+``). A common
sync or shorthand scheme (``postgres://``, ``postgresql://``, ``mysql://``,
``sqlite://``) is refused at load with the scheme to use instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError

from talkwire.server.errors import ConfigError

__all__ = ["ASYNC_DRIVERS", "check_store_url", "missing_database"]

ASYNC_DRIVERS = {
    "sqlite": ("aiosqlite",),
    "postgresql": ("asyncpg",),
    "mysql": ("asyncmy", "aiomysql"),
    "mariadb": ("asyncmy", "aiomysql"),
}
_ALIASES = {"postgres": "postgresql", "pgsql": "postgresql"}
# asyncpg's InvalidCatalogNameError and MySQL's ER_BAD_DB_ERROR.
_PG_MISSING_DB = "3D000"
_MYSQL_MISSING_DB = 1049


def check_store_url(url: str, where: str) -> None:
    """Refuse a ``store.url`` without an async driver, naming the scheme to use."""
    scheme = url.partition("://")[0]
    backend, _, driver = scheme.partition("+")
    backend = _ALIASES.get(backend, backend)
    drivers = ASYNC_DRIVERS.get(backend)
    if drivers is None:
        known = ", ".join(f"{b}+{d[0]}://" for b, d in ASYNC_DRIVERS.items() if b != "mariadb")
        raise ConfigError(f"{where}: unsupported database URL scheme {scheme!r} (use {known})")
    if driver not in drivers:
        use = " or ".join(f"{backend}+{d}://" for d in drivers)
        raise ConfigError(f"{where}: {scheme}:// is not an async database URL; use {use}")
    try:
        sa.make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"{where}: invalid database URL: {exc}") from None


def missing_database(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the URL's database does not exist."""
    seen: set[int] = set()
    probe: BaseException | None = exc
    while probe is not None and id(probe) not in seen:
        seen.add(id(probe))
        orig = getattr(probe, "orig", None)
        for candidate in (probe, orig):
            if getattr(candidate, "sqlstate", None) == _PG_MISSING_DB:
                return True
            args = getattr(candidate, "args", ())
            if args and args[0] == _MYSQL_MISSING_DB:
                return True
            if type(candidate).__name__ == "InvalidCatalogNameError":
                return True
        probe = probe.__cause__ or probe.__context__
    return False
