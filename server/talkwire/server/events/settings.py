"""The ``events:`` (Kafka) configuration section and secret resolution.

Example::

    events:
      bootstrap: kafka-1:9093,kafka-2:9093   # or a list
      group_id: talkwire                     # one consumer group per deployment
      start: earliest                        # where a NEW group starts: earliest | latest
      client_id: talkwire
      dead_letter_topic: talkwire.dead-letters   # else the store's dead_letters table
      max_records: 500                       # per getmany batch
      poll_timeout: 0.5                      # seconds per getmany
      commit_interval: 0                     # 0: commit offsets after every stored batch;
                                             # > 0: at most every this many seconds (fewer
                                             # broker round trips; a crash re-reads more,
                                             # deduplicated by event id)
      retry_initial: 0.2                     # store-unavailable backoff (doubles) ...
      retry_max: 5.0                         # ... up to this
      stall_after: 30.0                      # watchdog: no progress for this long -> unhealthy
      session_timeout: 6.0                   # group session timeout (seconds): how long a
                                             # killed replica keeps its partitions; 6 is
                                             # Kafka's default group.min.session.timeout.ms
      heartbeat_interval: 1.0                # < session_timeout; also how soon a member
                                             # notices a rebalance
      rebalance_timeout: 10.0                # how long the group waits for members to rejoin
      max_poll_interval: 300.0               # a consumer stuck longer in one batch leaves
      security:
        protocol: SASL_SSL                   # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
        cafile: /etc/talkwire/ca.pem
        certfile: /etc/talkwire/client.pem   # mTLS (optional)
        keyfile: /etc/talkwire/client.key
        sasl_mechanism: SCRAM-SHA-512        # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
        username: talkwire
        password: env:KAFKA_PASSWORD         # env:NAME or file:PATH, never inline in prod
      topics:
        erp.orders: {format: json, keys: ["order:{after.id}"], update_text: "..."}

Secrets (``password``, webhook ``secrets``) may be written ``env:NAME`` or
``file:PATH``; they are resolved once at start and never logged.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talkwire.server.errors import ConfigError
from talkwire.server.events.routing import TopicRoute, parse_topics

__all__ = ["KafkaSettings", "SecuritySettings", "resolve_secret"]


def resolve_secret(value: Any, where: str) -> str:
    """``env:NAME`` -> the variable, ``file:PATH`` -> the file's content (stripped)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string")
    if value.startswith("env:"):
        name = value[4:]
        got = os.environ.get(name)
        if not got:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return got
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            got = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
        if not got:
            raise ConfigError(f"{where}: {path} is empty")
        return got
    return value


_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SECURITY_KEYS = frozenset(
    {"protocol", "cafile", "certfile", "keyfile", "sasl_mechanism", "username", "password"}
)


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    protocol: str = "PLAINTEXT"
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    sasl_mechanism: str = "PLAIN"
    username: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def from_config(cls, section: Any, where: str = "events.security") -> SecuritySettings:
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        for key in section:
            if key not in _SECURITY_KEYS:
                raise ConfigError(
                    f"{where}.{key}: unknown key (known: {', '.join(sorted(_SECURITY_KEYS))})"
                )
        protocol = str(section.get("protocol", "PLAINTEXT")).upper()
        if protocol not in _PROTOCOLS:
            raise ConfigError(f"{where}.protocol: {protocol!r} is not one of {_PROTOCOLS}")
        mechanism = str(section.get("sasl_mechanism", "PLAIN")).upper()
        if mechanism not in _MECHANISMS:
            raise ConfigError(f"{where}.sasl_mechanism: {mechanism!r} is not one of {_MECHANISMS}")
        username = str(section.get("username", ""))
        password = ""
        if protocol.startswith("SASL"):
            if not username:
                raise ConfigError(f"{where}.username: required for {protocol}")
            password = resolve_secret(section.get("password"), f"{where}.password")
        files = {}
        for key in ("cafile", "certfile", "keyfile"):
            value = str(section.get(key, ""))
            if value and not Path(value).is_file():
                raise ConfigError(f"{where}.{key}: no such file {value}")
            files[key] = value
        if bool(files["certfile"]) != bool(files["keyfile"]):
            raise ConfigError(f"{where}: certfile and keyfile go together")
        return cls(
            protocol=protocol,
            sasl_mechanism=mechanism,
            username=username,
            password=password,
            **files,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.protocol not in ("SSL", "SASL_SSL"):
            return None
        ctx = ssl.create_default_context(cafile=self.cafile or None)
        if self.certfile:
            ctx.load_cert_chain(self.certfile, self.keyfile or None)
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's consumer, producer and admin client."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        ctx = self.ssl_context()
        if ctx is not None:
            out["ssl_context"] = ctx
        if self.protocol.startswith("SASL"):
            out["sasl_mechanism"] = self.sasl_mechanism
            out["sasl_plain_username"] = self.username
            out["sasl_plain_password"] = self.password
        return out


_KEYS = frozenset(
    {
        "bootstrap",
        "group_id",
        "start",
        "client_id",
        "dead_letter_topic",
        "max_records",
        "poll_timeout",
        "commit_interval",
        "retry_initial",
        "retry_max",
        "stall_after",
        "session_timeout",
        "heartbeat_interval",
        "rebalance_timeout",
        "max_poll_interval",
        "security",
        "topics",
        "enabled",
    }
)


def _number(section: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}.{key}: expected a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """The validated ``events:`` section."""

    bootstrap: tuple[str, ...]
    topics: Mapping[str, TopicRoute]
    group_id: str = "talkwire"
    start: str = "earliest"
    client_id: str = "talkwire"
    dead_letter_topic: str = ""
    max_records: int = 500
    poll_timeout: float = 0.5
    commit_interval: float = 0.0
    retry_initial: float = 0.2
    retry_max: float = 5.0
    stall_after: float = 30.0
    session_timeout: float = 6.0
    heartbeat_interval: float = 1.0
    rebalance_timeout: float = 10.0
    max_poll_interval: float = 300.0
    security: SecuritySettings = field(default_factory=SecuritySettings)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], where: str = "events") -> KafkaSettings:
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        for key in section:
            if key not in _KEYS:
                raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(_KEYS))})")
        raw = section.get("bootstrap")
        if isinstance(raw, str):
            bootstrap = tuple(b.strip() for b in raw.split(",") if b.strip())
        elif isinstance(raw, list | tuple):
            bootstrap = tuple(str(b).strip() for b in raw if str(b).strip())
        else:
            bootstrap = ()
        if not bootstrap:
            raise ConfigError(f"{where}.bootstrap: required (host:port, or a list of them)")
        topics = parse_topics(section.get("topics"), where=f"{where}.topics")
        if not topics:
            raise ConfigError(f"{where}.topics: at least one topic is required")
        start = str(section.get("start", "earliest")).lower()
        if start not in ("earliest", "latest"):
            raise ConfigError(f"{where}.start: expected earliest or latest, got {start!r}")
        max_records = section.get("max_records", 500)
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise ConfigError(f"{where}.max_records: expected a positive integer")
        commit_interval = section.get("commit_interval", 0)
        if (
            isinstance(commit_interval, bool)
            or not isinstance(commit_interval, int | float)
            or commit_interval < 0
        ):
            raise ConfigError(
                f"{where}.commit_interval: expected a number of seconds >= 0, "
                f"got {commit_interval!r}"
            )
        if _number(section, "heartbeat_interval", 1.0, where) >= _number(
            section, "session_timeout", 6.0, where
        ):
            raise ConfigError(f"{where}.heartbeat_interval: must be below session_timeout")
        dlt = str(section.get("dead_letter_topic", "") or "")
        if dlt and dlt in topics:
            raise ConfigError(f"{where}.dead_letter_topic: must not be one of the consumed topics")
        return cls(
            bootstrap=bootstrap,
            topics=topics,
            group_id=str(section.get("group_id", "talkwire")),
            start=start,
            client_id=str(section.get("client_id", "talkwire")),
            dead_letter_topic=dlt,
            max_records=max_records,
            poll_timeout=_number(section, "poll_timeout", 0.5, where),
            commit_interval=float(commit_interval),
            retry_initial=_number(section, "retry_initial", 0.2, where),
            retry_max=_number(section, "retry_max", 5.0, where),
            stall_after=_number(section, "stall_after", 30.0, where),
            session_timeout=_number(section, "session_timeout", 6.0, where),
            heartbeat_interval=_number(section, "heartbeat_interval", 1.0, where),
            rebalance_timeout=_number(section, "rebalance_timeout", 10.0, where),
            max_poll_interval=_number(section, "max_poll_interval", 300.0, where),
            security=SecuritySettings.from_config(section.get("security"), f"{where}.security"),
        )

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": list(self.bootstrap),
            "client_id": self.client_id,
            **self.security.client_kwargs(),
        }
