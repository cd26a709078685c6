"""Bad input to the ``talkwire`` console script: one line naming the problem, exit 2.

Each case runs the real console script as a user would and asserts on what the
user sees: the exit code and the whole of stderr (exactly one line, no traceback).
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support.server_proc import talkwire_binary

_AUTH = """\
auth:
  kind: static
  tokens: {t-123: {subject: ops}}
"""


def _run(*args: str, cwd: Path) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [talkwire_binary(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


def _serve(tmp_path: Path, body: str) -> tuple[int, list[str]]:
    config = tmp_path / "talkwire.yaml"
    config.write_text(textwrap.dedent(body) + _AUTH)
    return _run("serve", "--config", str(config), cwd=tmp_path)


def _store(url: str) -> str:
    return f"server: {{listen: '127.0.0.1:0', handler: echo}}\nstore:\n  url: {url}\n"


def test_log_level_unknown(tmp_path: Path) -> None:
    code, err = _run("--log-level", "LOUD", "serve", cwd=tmp_path)
    assert code == 2
    assert err == [
        "talkwire: --log-level: unknown level 'LOUD' (one of debug, info, warning, error, critical)"
    ]


def test_postgres_scheme_names_the_async_one(tmp_path: Path) -> None:
    code, err = _serve(tmp_path, _store("postgres://postgres@127.0.0.1:5432/test"))
    assert code == 2
    assert err == [
        f"talkwire: store.url ({tmp_path / 'talkwire.yaml'}, line 3): postgres:// is not an "
        "async database URL; use postgresql+asyncpg://"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:5432/talkwire_no_such_db",
        "mysql+asyncmy://root@127.0.0.1:3306/talkwire_no_such_db",
    ],
    ids=["postgresql", "mariadb"],
)
def test_store_database_that_does_not_exist(tmp_path: Path, url: str) -> None:
    code, err = _serve(tmp_path, _store(url))
    assert code == 2
    assert err == [
        "talkwire: store.url: database 'talkwire_no_such_db' does not exist; create it first "
        "(talkwire creates the tables, not the database)"
    ]


_SQL = """\
server: {{listen: '127.0.0.1:0', handler: echo}}
store: {{url: 'sqlite+aiosqlite:///{dir}/sessions.db'}}
connectors:
  crm:
    type: {type}
    url: sqlite+aiosqlite:///{dir}/crm.db
    {extra}
    operations:
      orders: {{sql: "{sql}"}}
"""


def _sql(tmp_path: Path, *, type: str = "sql", extra: str = "", sql: str = "select 1") -> str:
    return _SQL.format(dir=tmp_path, type=type, extra=extra or "row_limit: 10", sql=sql)


def test_connector_unknown_key(tmp_path: Path) -> None:
    code, err = _serve(tmp_path, _sql(tmp_path, extra="rowlimit: 10"))
    assert code == 2
    assert err == [
        f"talkwire: connectors.crm.rowlimit ({tmp_path / 'talkwire.yaml'}, line 7): unknown key "
        "(known: description, echo, operations, pool, read_only, row_limit, statement_timeout, "
        "type, url)"
    ]


def test_connector_unknown_type(tmp_path: Path) -> None:
    code, err = _serve(tmp_path, _sql(tmp_path, type="sqll"))
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith(
        f"talkwire: connectors.crm.type ({tmp_path / 'talkwire.yaml'}, line 5): "
        "unknown connector type 'sqll'; available types: "
    )


def test_connector_write_on_read_only(tmp_path: Path) -> None:
    code, err = _serve(tmp_path, _sql(tmp_path, extra="read_only: true", sql="delete from t"))
    assert code == 2
    assert err == [
        f"talkwire: connectors.crm.operations.orders.sql ({tmp_path / 'talkwire.yaml'}, line 9): "
        "connector is read_only: DML/DDL statements are refused"
    ]


def test_events_section_is_validated_whole(tmp_path: Path) -> None:
    body = f"""\
    server: {{listen: '127.0.0.1:0', handler: echo}}
    store: {{url: 'sqlite+aiosqlite:///{tmp_path}/sessions.db'}}
    events:
      bootstrp: 127.0.0.1:9092
      topics:
        erp.orders: {{keys: ["order:{{after.id}}"]}}
    """
    code, err = _serve(tmp_path, body)
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith(
        f"talkwire: events.bootstrp ({tmp_path / 'talkwire.yaml'}, line 4): unknown key (known: "
    )


def test_inline_bot_error_names_the_line(tmp_path: Path) -> None:
    body = f"""\
    server: {{listen: '127.0.0.1:0'}}
    store: {{url: 'sqlite+aiosqlite:///{tmp_path}/sessions.db'}}
    bot:
      intents:
        hello:
          examples: [hi]
          replly: Hello!
    """
    code, err = _serve(tmp_path, body)
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith(
        f"talkwire: bot.intents.hello.replly ({tmp_path / 'talkwire.yaml'}, line 7): "
        "unknown key (known: action, "
    )


def test_static_token_roles_of_the_wrong_shape(tmp_path: Path) -> None:
    # A mapping such as {admin: false} must never be read as the role "admin".
    config = tmp_path / "talkwire.yaml"
    config.write_text(
        "server: {listen: '127.0.0.1:0', handler: echo}\n"
        "auth:\n  kind: static\n  tokens: {t-123: {subject: ops, roles: {admin: false}}}\n"
    )
    code, err = _run("serve", "--config", str(config), cwd=tmp_path)
    assert code == 2
    assert err == [
        "talkwire: auth.tokens.t-12....roles: must be a list of strings or a space-separated string"
    ]


def test_webhooks_listen_on_a_taken_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _serve(
            tmp_path,
            "server: {listen: '127.0.0.1:0', handler: echo}\n"
            f"webhooks: {{listen: '127.0.0.1:{port}', secrets: [s3cret-for-tests]}}\n",
        )
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"talkwire: webhooks.listen: cannot listen on 127.0.0.1:{port}")
