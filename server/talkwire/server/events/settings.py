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
``file:PATH`` (the one rule of :func:`talkwire.connectors.sections.secret_value`:
an unset or empty variable is an error naming the key); they are resolved once
at start and never logged. ``enabled: false`` keeps a validated section off.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talkwire.connectors.sections import Section
from talkwire.server.events.routing import TopicRoute, parse_topics

__all__ = ["KafkaSettings", "SecuritySettings"]


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
        sec = section if isinstance(section, Section) else Section(section, where)
        sec.check_known(_SECURITY_KEYS)
        protocol = sec.text("protocol", "PLAINTEXT").upper()
        if protocol not in _PROTOCOLS:
            raise sec.error("protocol", f"{protocol!r} is not one of {', '.join(_PROTOCOLS)}")
        mechanism = sec.text("sasl_mechanism", "PLAIN").upper()
        if mechanism not in _MECHANISMS:
            raise sec.error(
                "sasl_mechanism", f"{mechanism!r} is not one of {', '.join(_MECHANISMS)}"
            )
        username = sec.text("username", "")
        password = ""
        if protocol.startswith("SASL"):
            if not username:
                raise sec.error("username", f"required for {protocol}")
            password = sec.secret("password")
        files = {key: sec.text(key, "") for key in ("cafile", "certfile", "keyfile")}
        for key, value in files.items():
            if value and not Path(value).is_file():
                raise sec.error(key, f"no such file {value}")
        if bool(files["certfile"]) != bool(files["keyfile"]):
            raise sec.error(None, "certfile and keyfile go together")
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
    enabled: bool = True

    @classmethod
    def from_config(cls, section: Mapping[str, Any], where: str = "events") -> KafkaSettings:
        """Validate the whole section, whatever it contains; errors name key and line."""
        sec = Section(section, where, known=_KEYS)
        bootstrap = sec.strings("bootstrap", split=True)
        if not bootstrap:
            raise sec.error("bootstrap", "required (host:port, or a list of them)")
        topics = parse_topics(sec.section("topics"))
        if not topics:
            raise sec.error("topics", "at least one topic is required")
        heartbeat = sec.number("heartbeat_interval", 1.0, positive=True)
        session_timeout = sec.number("session_timeout", 6.0, positive=True)
        if heartbeat >= session_timeout:
            raise sec.error("heartbeat_interval", "must be below session_timeout")
        dlt = sec.text("dead_letter_topic", "")
        if dlt and dlt in topics:
            raise sec.error("dead_letter_topic", "must not be one of the consumed topics")
        return cls(
            bootstrap=bootstrap,
            topics=topics,
            group_id=sec.text("group_id", "talkwire"),
            start=sec.text("start", "earliest", choices=("earliest", "latest")),
            client_id=sec.text("client_id", "talkwire"),
            dead_letter_topic=dlt,
            max_records=sec.integer("max_records", 500, minimum=1),
            poll_timeout=sec.number("poll_timeout", 0.5, positive=True),
            commit_interval=sec.number("commit_interval", 0.0, minimum=0.0),
            retry_initial=sec.number("retry_initial", 0.2, positive=True),
            retry_max=sec.number("retry_max", 5.0, positive=True),
            stall_after=sec.number("stall_after", 30.0, positive=True),
            session_timeout=session_timeout,
            heartbeat_interval=heartbeat,
            rebalance_timeout=sec.number("rebalance_timeout", 10.0, positive=True),
            max_poll_interval=sec.number("max_poll_interval", 300.0, positive=True),
            security=SecuritySettings.from_config(sec.section("security")),
            enabled=sec.flag("enabled", True),
        )

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": list(self.bootstrap),
            "client_id": self.client_id,
            **self.security.client_kwargs(),
        }
