"""The one config reader: unknown keys, the secrets rule and the YAML line in every message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from talkwire.connectors.errors import ConfigError, ConnectorConfigError
from talkwire.connectors.sections import Section, load_yaml
from talkwire.server import errors as server_errors
from talkwire.server.auth import build_authenticator
from talkwire.server.bus import BusSettings
from talkwire.server.config import load_config
from talkwire.server.events.settings import KafkaSettings
from talkwire.server.events.webhooks import WebhookSettings
from talkwire.server.policy import from_config as policy_from_config


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "talkwire.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_one_error_class_for_server_and_connectors() -> None:
    assert server_errors.ConfigError is ConfigError
    assert issubclass(ConnectorConfigError, ConfigError)
    status = server_errors.status_for(ConfigError("store.url: bad"))
    assert (status.code.name, status.message) == ("FAILED_PRECONDITION", "store.url: bad")


def test_unknown_key_has_one_wording_with_the_line(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        """\
        server:
          listen: 127.0.0.1:0
        store:
          pool_siz: 3
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.message == (
        f"store.pool_siz ({path}, line 4): unknown key (known: dedup_window, "
        "durability, idempotency_window, pool_size, retention_age, retention_frames, "
        "session_ttl, url)"
    )
    assert err.value.key == "store.pool_siz"


def test_sections_built_in_code_name_the_key_alone() -> None:
    with pytest.raises(ConfigError, match=r"^bus\.kindd: unknown key \(known: kind, "):
        BusSettings.from_config({"kindd": "redis"})
    with pytest.raises(ConfigError, match=r"^policy\.rules\[0\]\.kee: unknown key \(known: "):
        policy_from_config({"rules": [{"kee": "order:{id}"}]})


def test_every_section_names_its_yaml_line(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        """\
        bus:
          kind: redis
          sweep_interval: -1
        policy:
          default: deny
          rules:
            - key: "customer:{user.customer_id}"
            - key: "order:{order_id}"
              check: {connector: crm, operation: owner, expct: {id: "{order_id}"}}
        webhooks:
          listen: 127.0.0.1:0
          secrets: [env:TW_HOOK_SECRET]
          update_txt: nope
        events:
          bootstrap: 127.0.0.1:9092
          topics:
            erp.orders:
              format: jsn
        """,
    )
    config = load_config(path, env={})
    cases = [
        (
            lambda: BusSettings.from_config(config.bus),
            f"bus.sweep_interval ({path}, line 3): expected a positive number, got -1",
        ),
        (
            lambda: policy_from_config(config.policy),
            f"policy.rules[1].check.expct ({path}, line 9): unknown key "
            "(known: connector, expect, operation, params)",
        ),
        (
            lambda: WebhookSettings(config.webhooks),
            f"webhooks.update_txt ({path}, line 13): unknown key (known: ",
        ),
        (
            lambda: KafkaSettings.from_config(config.events),
            f"events.topics.erp.orders.format ({path}, line 18): expected one of ",
        ),
    ]
    for build, message in cases:
        with pytest.raises(ConfigError) as err:
            build()
        assert err.value.message.startswith(message)


def test_secrets_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("  s3cret\n")
    (tmp_path / "empty").write_text("\n")
    section = Section(
        {
            "inline": "literal",
            "from_env": "env:TW_SET",
            "from_file": f"file:{secret_file}",
            "unset": "env:TW_UNSET",
            "empty_env": "env:TW_EMPTY",
            "empty_file": f"file:{tmp_path / 'empty'}",
            "missing_file": f"file:{tmp_path / 'nope'}",
        },
        "x",
    )
    env = {"TW_SET": "from-env", "TW_EMPTY": ""}
    assert section.secret("inline", env=env) == "literal"
    assert section.secret("from_env", env=env) == "from-env"
    assert section.secret("from_file", env=env) == "s3cret"
    assert section.secret("absent", required=False, env=env) == ""
    errors = {
        "unset": "x.unset: environment variable TW_UNSET is not set",
        "empty_env": "x.empty_env: environment variable TW_EMPTY is empty",
        "empty_file": f"x.empty_file: secret file {tmp_path / 'empty'} is empty",
        "missing_file": f"x.missing_file: cannot read secret file {tmp_path / 'nope'}: ",
        "absent": "x.absent: required (a value, env:NAME or file:PATH)",
    }
    for key, message in errors.items():
        with pytest.raises(ConfigError) as err:
            section.secret(key, env=env)
        assert err.value.message.startswith(message)


def test_auth_and_kafka_agree_on_an_empty_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both used to have their own resolve_secret: auth accepted an empty variable."""
    monkeypatch.setenv("TW_EMPTY_TOKEN", "")
    config = load_config(
        None,
        env={},
        overrides={"auth": {"kind": "static", "tokens": {"env:TW_EMPTY_TOKEN": {"subject": "a"}}}},
    )
    with pytest.raises(ConfigError) as err:
        build_authenticator(config.auth)
    assert err.value.message == (
        "auth.tokens.env:TW_EMPTY_TOKEN: environment variable TW_EMPTY_TOKEN is empty"
    )
    events = {
        "bootstrap": "127.0.0.1:9092",
        "topics": {"t": {}},
        "security": {
            "protocol": "SASL_PLAINTEXT",
            "username": "u",
            "password": "env:TW_EMPTY_TOKEN",
        },
    }
    with pytest.raises(ConfigError) as err:
        KafkaSettings.from_config(events)
    assert err.value.message == (
        "events.security.password: environment variable TW_EMPTY_TOKEN is empty"
    )


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^t\.yaml, line 2: invalid YAML: "):
        load_yaml("a: 1\nb: x: y\nc: 2\n", source="t.yaml")


def test_env_overrides_keep_the_file_lines(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        """\
        server:
          listen: 127.0.0.1:0
          grace_perod: 3
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"TALKWIRE_SERVER__QUEUE_SIZE": "10"})
    assert err.value.message.startswith(f"server.grace_perod ({path}, line 3): unknown key")
