"""Configuration: one YAML file plus ``TALKWIRE_*`` environment variables.

Loaded once at start into frozen dataclasses. Sections the core owns
(``server``, ``store``, ``auth``) are validated here; sections owned by plugins
(``connectors``, ``bot``, ``events``, ``webhooks``, ``policy``, ``bus``, ``web``, ``handoff``) are
kept as mappings (with their YAML lines) and validated by their owners through
the one section reader, :class:`talkwire.connectors.sections.Section`. Every
error names the bad key and, for a file, its line:
``store.pool_siz (talkwire.yaml, line 7): unknown key (known: ...)``.

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

from talkwire.connectors.sections import Section, YamlMapping, load_yaml
from talkwire.server.errors import ConfigError
from talkwire.server.storeurl import check_store_url

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
    # SIGTERM: seconds readiness is NOT_SERVING while everything is still served.
    drain_delay: float = 0.0
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
    handler: str = field(default="auto", metadata={"choices": ("auto", "echo", "dialogue")})
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

    kind: str = field(default="none", metadata={"choices": ("none", "static", "jwt")})
    # none: every caller is this subject with these claims (development only).
    demo_subject: str = "demo"
    demo_claims: Mapping[str, Any] = field(default_factory=lambda: {"customer_id": "c-100"})
    demo_roles: tuple[str, ...] = ("admin", "agent")
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
    outbound: Mapping[str, Any] = field(default_factory=dict)
    web: Mapping[str, Any] = field(default_factory=dict)
    handoff: Mapping[str, Any] = field(default_factory=dict)
    demo: bool = False
    source: str = ""


_T = TypeVar("_T")
_SECTIONS = {"server": ServerConfig, "store": StoreConfig, "auth": AuthConfig}
_RAW = ("connectors", "events", "webhooks", "policy", "bus", "web", "handoff", "outbound")


def _read(section: Section, key: str, default: Any, choices: tuple[str, ...] = ()) -> Any:
    """``section[key]`` read as the type of its dataclass default."""
    if choices:
        return section.text(key, default, choices=choices)
    if isinstance(default, bool):
        return section.flag(key, default)
    if isinstance(default, int):
        return section.integer(key, default)
    if isinstance(default, float):
        return section.number(key, default)
    if isinstance(default, str):
        return section.text(key, default)
    if isinstance(default, tuple):
        return section.strings(key, default, split=True)
    return section.section(key).raw


def _section(name: str, cls: type[_T], raw: Any) -> _T:
    specs = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    section = Section(raw, name, known=specs)
    defaults = cls()
    return cls(
        **{
            key: _read(section, key, getattr(defaults, key), specs[key].metadata.get("choices", ()))
            for key in section.raw
        }
    )


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


def _copy(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy that keeps the YAML lines of a :class:`YamlMapping`."""
    return mapping.copy() if isinstance(mapping, YamlMapping) else dict(mapping)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            base[key] = _merge(_copy(base[key]), value)
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
        raw = _read_file(Path(path))
        source = str(path)
    raw = _merge(raw, _env_overrides(env))
    if overrides:
        raw = _merge(raw, overrides)
    top = Section(raw, "", known=[f.name for f in fields(Config) if f.name != "source"])
    for key in _RAW:
        top.section(key)
    store = _section("store", StoreConfig, raw.get("store"))
    check_store_url(store.url, Section(raw.get("store"), "store").where("url"))
    return Config(
        server=_section("server", ServerConfig, raw.get("server")),
        store=store,
        auth=_section("auth", AuthConfig, raw.get("auth")),
        connectors=raw.get("connectors") or {},
        bot=raw.get("bot"),
        events=raw.get("events") or {},
        webhooks=raw.get("webhooks") or {},
        policy=raw.get("policy") or {},
        bus=raw.get("bus") or {},
        outbound=raw.get("outbound") or {},
        web=raw.get("web") or {},
        handoff=raw.get("handoff") or {},
        demo=top.flag("demo", path is None and "bot" not in raw),
        source=source,
    )


def _read_file(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
    loaded = load_yaml(text, source=str(file))
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{file}: the top level must be a mapping")
    return _copy(loaded)
