"""The client CLI commands, called directly with StringIO streams against the scripted server."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from scripted_server import ADMIN_TOKEN, TOKEN, ServerHarness

from talkwire.clients.cli import (
    add_client_commands,
    chat_command,
    connectors_command,
    parse_parameters,
    sessions_command,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="talkwire")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


async def test_chat_piped_mode(harness: ServerHarness) -> None:
    stdin = io.StringIO("hello\nmenu\n1\n/sub order:1001\n/ping hi\nbye\n")
    out, err = io.StringIO(), io.StringIO()
    args = parse("chat", "--target", harness.target, "--token", TOKEN)
    code = await chat_command(args, stdin=stdin, stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert out.getvalue().splitlines() == [
        "bot: echo: hello",
        "bot: echo: menu",
        "  [1] Track order",
        "  [2] Talk to a human",
        'bot: did track_order {"order_id": 1001}',
        "subscribed order:1001",
        "pong hi",
        "bot: echo: bye",
    ]
    assert "# session " in err.getvalue()
    (session,) = harness.chat.sessions.values()
    assert session.subscriptions == {"order:1001"}
    # every answer was delivered and acked by the close
    await harness.chat.wait_until(lambda: max(session.acks, default=0) == session.head)


async def test_chat_piped_quit_and_resume(harness: ServerHarness) -> None:
    err = io.StringIO()
    args = parse("chat", "--target", harness.target, "--token", TOKEN)
    code = await chat_command(
        args, stdin=io.StringIO("one\n/quit\nnever sent\n"), stdout=io.StringIO(), stderr=err
    )
    assert code == 0
    (session,) = harness.chat.sessions.values()
    assert [r.message.text for r in harness.chat.received if r.HasField("message")] == ["one"]
    await harness.chat.push(session.session_id, "while away", key="order:7")

    out = io.StringIO()
    args = parse(
        "chat",
        "--target",
        harness.target,
        "--token",
        TOKEN,
        "--session",
        session.session_id,
        "--resume-token",
        session.token,
        "--last-seq",
        "1",
    )
    code = await chat_command(args, stdin=io.StringIO("two\n"), stdout=out, stderr=io.StringIO())
    assert code == 0
    assert out.getvalue().splitlines() == ["update order:7: while away", "bot: echo: two"]


async def test_chat_error_is_one_line(harness: ServerHarness) -> None:
    err = io.StringIO()
    args = parse("chat", "--target", harness.target, "--token", "wrong")
    code = await chat_command(args, stdin=io.StringIO("hi\n"), stdout=io.StringIO(), stderr=err)
    assert code == 1
    assert err.getvalue() == "talkwire: error: UNAUTHENTICATED: missing or bad token\n"

    err = io.StringIO()
    args = parse(
        "chat",
        "--target",
        harness.target,
        "--token",
        TOKEN,
        "--session",
        "x",
        "--resume-token",
        "y",
    )
    code = await chat_command(args, stdin=io.StringIO(""), stdout=io.StringIO(), stderr=err)
    assert code == 1
    assert err.getvalue().startswith("talkwire: error: NOT_FOUND: ")


async def test_chat_resume_of_closed_session_fails_cleanly(harness: ServerHarness) -> None:
    err = io.StringIO()
    args = parse("chat", "--target", harness.target, "--token", TOKEN)
    code = await chat_command(args, stdin=io.StringIO("hello\n"), stdout=io.StringIO(), stderr=err)
    assert code == 0
    (session,) = harness.chat.sessions.values()
    harness.chat.sessions[session.session_id].closed = True
    args = parse(
        "chat",
        "--target",
        harness.target,
        "--token",
        TOKEN,
        "--session",
        session.session_id,
        "--resume-token",
        session.token,
    )
    err = io.StringIO()
    code = await chat_command(args, stdin=io.StringIO("x\n"), stdout=io.StringIO(), stderr=err)
    assert code == 1
    assert "NOT_FOUND" in err.getvalue()


async def test_sessions_commands(harness: ServerHarness) -> None:
    await chat_command(
        parse("chat", "--target", harness.target, "--token", TOKEN),
        stdin=io.StringIO("/sub order:1\n"),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    (sid,) = harness.chat.sessions
    base = ["--target", harness.target, "--token", ADMIN_TOKEN]

    out = io.StringIO()
    assert await sessions_command(parse("sessions", "list", *base), stdout=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "SESSION",
        "SUBJECT",
        "CHANNEL",
        "STATE",
        "ATTACHED",
        "HEAD",
        "ACKED",
        "SUBSCRIPTIONS",
    ]
    assert lines[1].split() == [sid, "alice", "web", "active", "no", "1", "1", "order:1"]

    out = io.StringIO()
    args = parse("sessions", "list", "--key", "order:2", "--json", *base)
    assert await sessions_command(args, stdout=out) == 0
    assert json.loads(out.getvalue()) == []

    out = io.StringIO()
    assert await sessions_command(parse("sessions", "get", sid, *base), stdout=out) == 0
    assert json.loads(out.getvalue())["session_id"] == sid

    out = io.StringIO()
    assert await sessions_command(parse("sessions", "close", sid, *base), stdout=out) == 0
    assert out.getvalue() == f"closed {sid}\n"

    err = io.StringIO()
    assert await sessions_command(parse("sessions", "get", "nope", *base), stderr=err) == 1
    assert err.getvalue() == "talkwire: error: NOT_FOUND: no session nope\n"

    err = io.StringIO()
    args = parse("sessions", "list", "--target", harness.target, "--token", TOKEN)
    assert await sessions_command(args, stderr=err) == 1
    assert err.getvalue() == "talkwire: error: PERMISSION_DENIED: admin role required\n"


async def test_connectors_commands(harness: ServerHarness) -> None:
    base = ["--target", harness.target, "--token", ADMIN_TOKEN]
    out = io.StringIO()
    assert await connectors_command(parse("connectors", "list", *base), stdout=out) == 0
    assert out.getvalue().splitlines() == [
        "crm (sql)",
        "  get_order(order_id: int)  Look up an order",
    ]

    out = io.StringIO()
    args = parse(
        "connectors",
        "invoke",
        "crm",
        "get_order",
        "order_id=1001",
        "note=hello",
        "code==007",
        "tags:=[1,2]",
        "--json",
        '{"limit": 5, "order_id": 1}',
        "--as-subject",
        "bob",
        "--claims",
        '{"tenant": "acme"}',
        *base,
    )
    assert await connectors_command(args, stdout=out) == 0
    result = json.loads(out.getvalue())
    assert result["parameters"] == {
        "order_id": 1001,
        "note": "hello",
        "code": "007",
        "tags": [1, 2],
        "limit": 5,
    }
    assert result["subject"] == "bob"
    assert result["claims"] == {"tenant": "acme"}

    err = io.StringIO()
    args = parse("connectors", "invoke", "erp", "x", *base)
    assert await connectors_command(args, stderr=err) == 1
    assert err.getvalue() == "talkwire: error: NOT_FOUND: no connector erp\n"

    err = io.StringIO()
    args = parse("connectors", "invoke", "crm", "x", "--claims", "[1]", *base)
    assert await connectors_command(args, stderr=err) == 1
    assert err.getvalue().startswith("talkwire: error: INVALID_ARGUMENT: ")


def test_parse_parameters() -> None:
    assert parse_parameters(["a=1", "b=x", "c=true", "d=null", "e==1", 'f:={"g": 2}']) == {
        "a": 1,
        "b": "x",
        "c": True,
        "d": None,
        "e": "1",
        "f": {"g": 2},
    }
    assert parse_parameters(["url=http://x/?a=b"]) == {"url": "http://x/?a=b"}
    with pytest.raises(Exception, match="key=value"):
        parse_parameters(["novalue"])


def test_unreachable_server_runner_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """The sync runner (what the console script calls) returns non-zero, no traceback."""
    args = parse("sessions", "list", "--target", "127.0.0.1:1", "--token", "t")
    assert args.handler(args) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("talkwire: error: UNAVAILABLE: ")
    assert "Traceback" not in captured.err
