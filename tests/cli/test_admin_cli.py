"""``talkwire sessions|connectors|health`` and the help texts, through the console script."""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from talkwire.clients import AdminClient
from talkwire.clients.cli import add_client_commands
from talkwire.clients.emit import add_emit_command
from talkwire.server.app import Application
from tests.cli.conftest import CLI_TIMEOUT, talkwire
from tests.support.server_proc import talkwire_binary


async def _session_id(as_alice: list[str]) -> str:
    chat = await talkwire("chat", *as_alice, "-m", "where is my order 1001")
    assert chat.code == 0, chat.err
    return next(w for w in chat.err.split() if len(w) == 36 and w.count("-") == 4)


async def test_sessions_json_has_numbers_as_numbers(
    as_alice: list[str], as_admin: list[str]
) -> None:
    sid = await _session_id(as_alice)
    listed = await talkwire("sessions", "list", "--json", *as_admin)
    assert listed.code == 0, listed.err
    (row,) = [s for s in json.loads(listed.out) if s["session_id"] == sid]
    assert row["head_seq"] == 2 and isinstance(row["head_seq"], int)
    got = await talkwire("sessions", "get", sid, *as_admin)
    assert json.loads(got.out)["head_seq"] == 2


async def test_sessions_watch_streams_unacked_then_live_frames(
    demo_app: Application, as_alice: list[str], as_admin: list[str]
) -> None:
    sid = await _session_id(as_alice)  # seq 1-2, acked by the chat command
    async with AdminClient(demo_app.target, token="admin-token") as admin:
        await admin.publish(session_id=sid, text="while nobody was attached")  # seq 3, unacked
        proc = await asyncio.create_subprocess_exec(
            talkwire_binary(),
            "sessions",
            "watch",
            sid,
            *as_admin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(CLI_TIMEOUT):
                retained = (await proc.stdout.readline()).decode()
                await admin.publish(session_id=sid, text="your parcel is at the door")
                live = (await proc.stdout.readline()).decode()
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
    assert retained == "[3] update: while nobody was attached\n", await proc.stderr.read()
    assert live == "[4] update: your parcel is at the door\n"

    gone = await talkwire("sessions", "watch", sid, "--after-seq", "0", *as_admin)
    assert gone.code == 1
    assert gone.err.startswith("talkwire: error: OUT_OF_RANGE: ")


async def test_watch_into_a_closed_pipe_ends_quietly(
    demo_app: Application, as_alice: list[str], as_admin: list[str]
) -> None:
    """``talkwire sessions watch ID | head -1``: the reader leaves, talkwire exits quietly."""
    sid = await _session_id(as_alice)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is already gone: the first write fails with EPIPE
    async with AdminClient(demo_app.target, token="admin-token") as admin:
        await admin.publish(session_id=sid, text="something to print")
    proc = await asyncio.create_subprocess_exec(
        talkwire_binary(),
        "sessions",
        "watch",
        sid,
        *as_admin,
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    async with asyncio.timeout(CLI_TIMEOUT):
        _, err = await proc.communicate()
    assert proc.returncode == 141
    assert err.decode() == ""


async def test_list_into_a_closed_pipe_ends_quietly(as_admin: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = await asyncio.create_subprocess_exec(
        talkwire_binary(),
        "connectors",
        "list",
        *as_admin,
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    async with asyncio.timeout(CLI_TIMEOUT):
        _, err = await proc.communicate()
    assert proc.returncode == 141
    assert err.decode() == ""


async def test_invoke_takes_parameters_after_options(as_admin: list[str]) -> None:
    result = await talkwire(
        "connectors",
        "invoke",
        "crm",
        "order_status",
        *as_admin,
        "order_id=1001",
        "customer_id=c-100",
    )
    assert result.code == 0, result.err
    row = json.loads(result.out)
    assert row["status"] == "shipped"
    assert row["order_id"] == 1001  # a number, not "1001" and not 1001.0


async def test_health_checks_the_server_and_named_services(demo_app: Application) -> None:
    target = ["--target", demo_app.target]
    ok = await talkwire("health", "talkwire.ready", *target)
    assert (ok.code, ok.lines) == (0, ['"": SERVING', "talkwire.ready: SERVING"])
    unknown = await talkwire("health", "no.such.service", *target)
    assert (unknown.code, unknown.lines[-1]) == (3, "no.such.service: SERVICE_UNKNOWN")
    # what a Redis bus outage does to readiness (drain() would also stop the listener)
    await demo_app._set_ready(False)
    draining = await talkwire("health", "talkwire.ready", *target)
    assert (draining.code, draining.lines[-1]) == (4, "talkwire.ready: NOT_SERVING")


async def test_health_of_an_unreachable_server_is_one_line() -> None:
    result = await talkwire("health", "--target", "127.0.0.1:1", "--timeout", "2")
    assert result.code == 1
    assert result.err.startswith("talkwire: error: ")
    assert len(result.err.splitlines()) == 1


def _leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="talkwire")
    sub = parser.add_subparsers(dest="command")
    add_client_commands(sub)
    add_emit_command(sub)
    leaves: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, p: argparse.ArgumentParser) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves[prefix.strip()] = p
        for action in subs:
            for name, child in action.choices.items():
                walk(f"{prefix} {name}", child)

    for name, child in sub.choices.items():
        walk(name, child)
    return leaves


def test_every_client_option_has_help() -> None:
    leaves = _leaf_parsers()
    assert set(leaves) >= {
        "chat",
        "sessions list",
        "sessions get",
        "sessions watch",
        "sessions close",
        "connectors list",
        "connectors invoke",
        "health",
        "emit",
    }
    for name, parser in leaves.items():
        for action in parser._actions:
            assert action.help, f"talkwire {name}: {action.dest} has no help"


async def test_help_has_examples_and_no_restructuredtext() -> None:
    for name in _leaf_parsers():
        result = await talkwire(*name.split(), "--help")
        assert result.code == 0, (name, result.err)
        assert "examples:" in result.out, name
        assert "``" not in result.out and ":class:" not in result.out, name
