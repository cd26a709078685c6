"""The server side of the ``talkwire`` console script, run as a user runs it.

``--version``, global options before or after the command, help texts with
examples and no reStructuredText, ``config check [--print]``, ``demo
--no-events`` printing what to type, and ``examples/gateway.py`` as the README
documents it. Every case runs the real console script (or the example file)
and asserts on exit codes, stdout and stderr.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.support.server_proc import ServerProcess, talkwire_binary

ROOT = Path(__file__).resolve().parents[2]


def _run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [talkwire_binary(), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr lines that are not log lines (the WARNING of auth.kind=none is a log line)."""
    return [
        line
        for line in done.stderr.splitlines()
        if line.strip() and not re.match(r"^\d{4}-\d\d-\d\d ", line)
    ]


def test_version(tmp_path: Path) -> None:
    done = _run("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"talkwire {metadata.version('talkwire')}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["serve", "--help"],
        ["demo", "--help"],
        ["db", "--help"],
        ["config", "check", "--help"],
    ],
)
def test_help_has_examples_and_no_restructuredtext(tmp_path: Path, argv: list[str]) -> None:
    done = _run(*argv, cwd=tmp_path)
    assert done.returncode == 0
    out = done.stdout
    assert "examples:" in out
    assert "``" not in out
    assert ":func:" not in out
    assert ":class:" not in out
    assert "--log-level LEVEL" in out, "the global options are listed on every command"


def test_every_server_option_has_a_help_text(tmp_path: Path) -> None:
    for argv in (["serve"], ["demo"], ["db"], ["config", "check"], []):
        out = _run(*argv, "--help", cwd=tmp_path).stdout
        options = out.split("options:", 1)[1]
        # argparse prints an option without help as a line of only its flags
        bare = [
            line
            for line in options.splitlines()
            if re.fullmatch(r"\s+-[-\w]+(?: [A-Z:_{},a-z]+)?(?:, -[-\w]+(?: \S+)?)*", line)
            and not line.strip().startswith("--log-format")
        ]
        assert bare == [], (argv, bare)


def test_global_options_after_the_command(tmp_path: Path) -> None:
    done = _run("config", "check", "--log-level", "LOUD", cwd=tmp_path)
    assert done.returncode == 2
    assert _errors(done) == [
        "talkwire: --log-level: unknown level 'LOUD' (one of debug, info, warning, error, critical)"
    ]
    config = tmp_path / "talkwire.yaml"
    config.write_text("server: {listen: '127.0.0.1:0', handler: echo}\n")
    after = _run("config", "check", "--config", str(config), "--log-format", "json", cwd=tmp_path)
    before = _run("--config", str(config), "--log-format", "json", "config", "check", cwd=tmp_path)
    assert after.returncode == before.returncode == 0, after.stderr + before.stderr
    assert after.stdout == before.stdout == f"config ok: {config}\n"


def test_a_global_option_before_the_command_is_not_reset_by_it(tmp_path: Path) -> None:
    done = _run("--log-level", "LOUD", "config", "check", cwd=tmp_path)
    assert done.returncode == 2
    assert "--log-level" in _errors(done)[0]


def test_config_check_of_the_embedded_default(tmp_path: Path) -> None:
    done = _run("config", "check", cwd=tmp_path, env={"TALKWIRE_CONFIG": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "config ok: embedded demo default\n"


def test_config_check_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "talkwire.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            server: {listen: '127.0.0.1:0'}
            connectors:
              crm:
                type: sql
                url: sqlite+aiosqlite:///x.db
                operations:
                  one: {sql: "SELECT 1", result: row}
            bot:
              intents:
                hello:
                  examples: [hi]
                  action: {connector: crm, operation: missing}
                  reply: hi
            """
        )
    )
    done = _run("config", "check", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2
    errors = _errors(done)
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("talkwire: bot.intents.hello.action.operation")
    assert "no operation 'missing'" in errors[0]
    assert "Traceback" not in done.stderr


def test_config_check_print_masks_secrets(tmp_path: Path) -> None:
    config = tmp_path / "talkwire.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            server: {listen: '127.0.0.1:0', handler: echo}
            store: {url: 'postgresql+asyncpg://app:pg-s3cret@db.example/talkwire'}
            auth:
              kind: static
              tokens:
                tok-s3cret: {subject: ops, roles: [admin]}
                env:OPS_TOKEN: {subject: bot}
            webhooks:
              secrets: [hook-s3cret, env:HOOK_SECRET]
            """
        )
    )
    env = {
        "OPS_TOKEN": "from-env-s3cret",
        "HOOK_SECRET": "env-hook-s3cret",
        "TALKWIRE_SERVER__GRACE_PERIOD": "4",
    }
    done = _run("config", "check", "--print", "--config", str(config), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout
    shown = yaml.safe_load(done.stdout)
    assert shown["server"]["grace_period"] == 4.0, "environment overrides are applied"
    assert shown["server"]["metrics_listen"] == "", "metrics are off by default"
    assert shown["store"]["url"] == "postgresql+asyncpg://app:***@db.example/talkwire"
    assert shown["auth"]["tokens"] == {
        "***1": {"subject": "ops", "roles": ["admin"]},
        "env:OPS_TOKEN": {"subject": "bot"},
    }
    assert shown["webhooks"]["secrets"] == ["***", "env:HOOK_SECRET"]


async def test_demo_without_events_prints_what_to_type(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        talkwire_binary(),
        "demo",
        "--no-events",
        "--listen",
        "127.0.0.1:0",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not lines or lines[-1].strip() != "Ctrl-C stops the demo.":
                raw = await proc.stdout.readline()
                assert raw, "the demo ended early"
                lines.append(raw.decode())
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    text = "".join(lines)
    grpc_line = re.search(r"^\s+gRPC\s+(127\.0\.0\.1:\d+)", text, re.M)
    assert grpc_line is not None, text
    assert f"talkwire chat --target {grpc_line.group(1)}" in text
    assert "you> where is my order 1001" in text
    assert "Kafka" not in text
    assert code == 0


async def test_example_gateway_runs_as_documented(tmp_path: Path) -> None:
    config = {"demo": True, "server": {"data_dir": str(tmp_path / "data")}}
    async with ServerProcess(config, workdir=tmp_path) as server:
        done = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "examples" / "gateway.py"),
            "--target",
            server.target,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, err.decode()
    text = out.decode()
    assert "reply: Order 1001 (Espresso machine) is shipped" in text
    assert "update: Your order 1001 is out for delivery" in text
