"""Configuration: one YAML file plus ``TALKWIRE_*`` environment variables.

Loaded once at start into frozen dataclasses. Sections the core owns
(``server``, ``store``, ``auth``) are validated here; sections owned by plugins
(``connectors``, ``bot``, ``events``, ``webhooks``, ``policy``, ``bus``) are
kept as mappings and validated by their owners. Every error names the bad key.

Environment overrides: ``TALKWIRE_CONFIG`` (the file), ``TALKWIRE_LISTEN``,
``TALKWIRE_STORE_URL``, and generally ``TALKWIRE_<SECTION>__<KEY>[__<KEY>]``
(double underscores nest; the value is parsed as a YAML scalar), e.g.
``TALKWIRE_SERVER__GRACE_PERIOD=5`` or ``TALKWIRE_AUTH__KIND=jwt``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from talkwire.server.errors import ConfigError

__all__ = [
    "AuthConfig",
    "Config",
    "ServerConfig",
    "StoreConfig",
    "load_config",
]

_DEFAULT_DATA_DIR = "talkwire-data"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The gRPC server and per-stream limits."""

    listen: str = "127.0.0.1:50051"
    replica: str = field(default_factory=socket.gethostname)
    grace_period: float = 10.0
    max_message_bytes: int = 64 * 1024
    max_text_chars: int = 4000
    max_concurrent_streams: int = 100_000
    max_pending_requests: int = 100_000
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0
    max_connection_age: float = 0.0
    queue_size: int = 256
    write_timeout: float = 5.0
    turn_queue_size: int = 16
    turn_timeout: float = 30.0
    frames_per_second: float = 50.0
    frame_burst: int = 100
    sweep_interval: float = 30.0
    metrics_listen: str = ""
    handler: str = "auto"
    # Where the embedded demo keeps its SQLite CRM.
    data_dir: str = _DEFAULT_DATA_DIR


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where sessions and frames live and for how long."""

    url: str = f"sqlite+aiosqlite:///{_DEFAULT_DATA_DIR}/talkwire.db"
    retention_frames: int = 1000
    retention_age: float = 24 * 3600.0
    session_ttl: float = 24 * 3600.0
    dedup_window: float = 7 * 24 * 3600.0
    # How long connector idempotency keys are remembered (seconds).
    idempotency_window: float = 24 * 3600.0
    pool_size: int = 10


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How callers authenticate. ``kind``: ``none`` | ``static`` | ``jwt``."""

    kind: str = "none"
    # none: every caller is this subject with these claims (development only).
    demo_subject: str = "demo"
    demo_claims: Mapping[str, Any] = field(default_factory=lambda: {"customer_id": "c-100"})
    demo_roles: tuple[str, ...] = ("admin",)
    # static: token -> {subject, claims, roles}; tokens may be given as env:NAME or file:PATH.
    tokens: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # jwt
    algorithms: tuple[str, ...] = ("RS256", "ES256", "HS256")
    key: str = ""
    key_file: str = ""
    jwks_file: str = ""
    jwks_url: str = ""
    issuer: str = ""
    audience: str = ""
    leeway: float = 30.0
    subject_claim: str = "sub"
    roles_claim: str = "roles"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    connectors: Mapping[str, Any] = field(default_factory=dict)
    bot: Any = None
    events: Mapping[str, Any] = field(default_factory=dict)
    webhooks: Mapping[str, Any] = field(default_factory=dict)
    policy: Mapping[str, Any] = field(default_factory=dict)
    bus: Mapping[str, Any] = field(default_factory=dict)
    demo: bool = False
    source: str = ""


_T = TypeVar("_T")
_SECTIONS = {"server": ServerConfig, "store": StoreConfig, "auth": AuthConfig}
_RAW = ("connectors", "events", "webhooks", "policy", "bus")


def _coerce(path: str, value: Any, default: Any) -> Any:
    target = type(default)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        raise ConfigError(f"{path}: expected a list, got {value!r}")
    if isinstance(default, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise ConfigError(f"{path}: expected a mapping, got {value!r}")
    return target(value)


def _section(name: str, cls: type[_T], raw: Any) -> _T:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {type(raw).__name__}")
    defaults = cls()
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    values = {
        key: _coerce(f"{name}.{key}", value, getattr(defaults, key)) for key, value in raw.items()
    }
    return cls(**values)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    shortcuts = {"TALKWIRE_LISTEN": "server__listen", "TALKWIRE_STORE_URL": "store__url"}
    for name, value in env.items():
        if name in shortcuts:
            path = shortcuts[name]
        elif name.startswith("TALKWIRE_") and "__" in name:
            path = name[len("TALKWIRE_") :].lower()
        else:
            continue
        parts = path.split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            base[key] = _merge(dict(base[key]), value)
        else:
            base[key] = value
    return base


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load the configuration from ``path`` (or ``TALKWIRE_CONFIG``) plus env vars.

    With no file at all, the embedded demo default is used: the demo bot on a
    demo SQLite CRM, the development authenticator, a SQLite session store.
    """
    env = os.environ if env is None else env
    path = path or env.get("TALKWIRE_CONFIG") or None
    raw: dict[str, Any] = {}
    source = "embedded demo default"
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{file}: the top level must be a mapping")
        raw = dict(loaded)
        source = str(file)
    raw = _merge(raw, _env_overrides(env))
    if overrides:
        raw = _merge(raw, overrides)
    known = {f.name for f in fields(Config)} - {"source"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown top-level key (known: {', '.join(sorted(known))})")
    demo = bool(raw.get("demo", path is None and "bot" not in raw))
    for key in _RAW:
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(f"{key}: expected a mapping")
    return Config(
        server=_section("server", ServerConfig, raw.get("server")),
        store=_section("store", StoreConfig, raw.get("store")),
        auth=_section("auth", AuthConfig, raw.get("auth")),
        connectors=dict(raw.get("connectors") or {}),
        bot=raw.get("bot"),
        events=dict(raw.get("events") or {}),
        webhooks=dict(raw.get("webhooks") or {}),
        policy=dict(raw.get("policy") or {}),
        bus=dict(raw.get("bus") or {}),
        demo=demo,
        source=source,
    )
