"""``talkwire config check``: validate a whole configuration without serving, and show it.

:func:`check_config` builds, without opening a port or a connection, every
part the server would build from the config: the authenticator, the
connectors (their sections), the bot (against those connectors), the
subscription policy, the ``events`` and ``webhooks`` sections. The first
mistake raises the same one-line :class:`~talkwire.server.errors.ConfigError`
``talkwire serve`` would print.

:func:`effective_config` is the configuration as the server reads it (defaults
filled in, environment overrides applied) as plain data, with every secret
masked: literal secrets become ``"***"``; ``env:NAME`` / ``file:PATH``
references are shown as written (they are not the secret); a password inside a
URL is masked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from talkwire.server.config import Config

__all__ = ["MASK", "check_config", "effective_config"]

MASK = "***"
# Keys whose value is a secret wherever they appear.
_SECRET_KEYS = frozenset({"password", "token", "client_secret", "secret", "secrets", "api_key"})
_URL_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]+@")


def _sections(config: Config) -> tuple[Mapping[str, Any], Any, Mapping[str, Any]]:
    """Connector, bot and policy sections as :class:`Application` would run them."""
    if not config.demo:
        return config.connectors, config.bot, config.policy
    from talkwire.server.demo import bot_path, crm_path
    from talkwire.server.demo.connectors import demo_connector_sections
    from talkwire.server.demo.policy import DEMO_POLICY

    demo = demo_connector_sections(str(crm_path(config)), "http://127.0.0.1:9")
    return (
        {**demo, **config.connectors},
        config.bot or str(bot_path()),
        config.policy or DEMO_POLICY,
    )


def check_config(config: Config) -> None:
    """Build every part of ``config`` that can be built offline; raise the first error."""
    from talkwire.connectors.registry import ConnectorRegistry
    from talkwire.server.auth import build_authenticator
    from talkwire.server.dialogue import DialogueEngine, load_bot
    from talkwire.server.events.settings import KafkaSettings
    from talkwire.server.events.webhooks import WebhookSettings
    from talkwire.server.policy import ConfigPolicy

    build_authenticator(config.auth)
    connectors, bot, policy = _sections(config)
    registry = ConnectorRegistry(connectors)
    if bot is not None and config.server.handler != "echo":
        DialogueEngine(load_bot(bot), registry)
    ConfigPolicy.from_config(policy, registry)
    if config.events:
        KafkaSettings.from_config(config.events)
    if config.webhooks:
        WebhookSettings(config.webhooks)


def _mask(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(("env:", "file:")):
        return value
    if isinstance(value, Mapping):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return MASK if value not in (None, "") else value


def _plain(value: Any, parent: str = "") -> Any:
    """Plain YAML-able data; secrets masked by the key they sit under."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items(), 1):
            name = str(key)
            if parent == "tokens":  # auth.tokens: the keys are the tokens
                shown = name if name.startswith(("env:", "file:")) else f"{MASK}{i}"
                out[shown] = _plain(item, name)
            elif name in _SECRET_KEYS or (parent == "auth" and name in ("key", "value")):
                out[name] = _mask(item)
            else:
                out[name] = _plain(item, name)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, parent) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", value)
    return value


def effective_config(config: Config) -> dict[str, Any]:
    """``config`` as plain data (what ``config check --print`` shows), secrets masked."""
    data: dict[str, Any] = _plain(config)
    data.pop("source", None)
    return data
