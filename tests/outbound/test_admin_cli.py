"""GetTranscript, outbound status and re-drive over gRPC, and their CLI commands."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkwire.clients.admin import AdminClient
from talkwire.clients.cli import add_client_commands
from talkwire.clients.errors import RpcError
from talkwire.clients.outbound_cli import outbound_command, transcript_command
from talkwire.server.app import OUTBOUND_HEALTH, Application
from tests.conftest import make_config
from tests.connectors.httpserver import Response
from tests.outbound.conftest import SECRET
from tests.outbound.receiver import WebhookReceiver
from tests.support.grpcx import Stream, message
from tests.support.waiting import eventually


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="talkwire")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


async def _chat(app: Application, texts: list[str]) -> str:
    async with grpc.aio.insecure_channel(app.target) as channel:
        s = Stream(channel, "alice-token")
        opened = await s.open(channel="web")
        for i, text in enumerate(texts):
            await s.send(message(text, f"m{i}"))
            await s.recv()
        s.cancel()
    return opened.session_id


async def test_transcript_over_grpc_and_cli(make_app: Any, tmp_path: Path) -> None:
    app: Application = await make_app(make_config(tmp_path))
    sid = await _chat(app, ["hello", "bye"])
    async with AdminClient(app.target, token="admin-token") as admin:
        page = await admin.get_transcript(sid, page_size=3)
        assert len(page.events) == 3 and page.next_page_token
        events = [e async for e in admin.iter_transcript(sid, page_size=3)]
        with pytest.raises(RpcError) as err:
            await admin.get_transcript("no-such-session")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert [(e.kind, e.seq) for e in events] == [
        ("turn.received", 0),
        ("frame.appended", 1),
        ("turn.received", 0),
        ("frame.appended", 2),
    ]
    out, err_out = io.StringIO(), io.StringIO()
    args = parse("sessions", "transcript", sid, "--target", app.target, "--token", "admin-token")
    assert await transcript_command(args, stdout=out, stderr=err_out) == 0, err_out.getvalue()
    assert out.getvalue().splitlines() == [
        "      user: hello",
        "    1 bot: hello",
        "      user: bye",
        "    2 bot: bye",
    ]
    out = io.StringIO()
    args = parse("sessions", "transcript", sid, "--json", "--target", app.target)
    args.token = "admin-token"
    assert await transcript_command(args, stdout=out, stderr=err_out) == 0
    assert [e["kind"] for e in json.loads(out.getvalue())][:2] == [
        "turn.received",
        "frame.appended",
    ]
    out = io.StringIO()
    args = parse("sessions", "transcript", sid, "--target", app.target, "--token", "alice-token")
    assert await transcript_command(args, stdout=io.StringIO(), stderr=out) == 1
    assert out.getvalue().startswith("talkwire: error: PERMISSION_DENIED")


async def test_outbound_status_health_and_redrive(
    make_app: Any, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.script.append(Response(400))  # the first delivery is refused: dead-lettered
    outbound = {
        "relay": {"poll_interval": 0.05, "stale_after": 1},
        "hook": {
            "type": "webhook",
            "url": receiver.url,
            "secret": SECRET,
            "allow_private": True,
            "on": ["session.opened", "turn.received"],
        },
    }
    app: Application = await make_app(make_config(tmp_path, outbound=outbound))
    await _chat(app, ["hi"])
    await eventually(lambda: len(receiver.events) >= 1, message="the turn delivered")
    target = ["--target", app.target, "--token", "admin-token"]
    out = io.StringIO()
    assert await outbound_command(parse("outbound", "status", *target), stdout=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "SINK", "TYPE", "PENDING", "OLDEST_S", "DELIVERED", "RETRIED", "FAILED", "DEAD", "BREAKER"
    ]  # fmt: skip
    assert lines[1].split()[:3] == ["hook", "webhook", "0"] and lines[1].split()[7] == "1"
    out = io.StringIO()
    assert await outbound_command(parse("outbound", "redrive", *target), stdout=out) == 0
    assert out.getvalue().strip() == "requeued 1 dead-lettered deliveries"
    await eventually(lambda: len(receiver.events) >= 2, message="the re-driven event")
    assert receiver.events[-1]["kind"] == "session.opened"
    # The receiver goes away: turns still work, the outbox grows, health says so.
    await receiver.stop()
    await _chat(app, ["still served"])
    async with grpc.aio.insecure_channel(app.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def not_serving() -> bool:
            r = await health.Check(health_pb2.HealthCheckRequest(service=OUTBOUND_HEALTH))
            return r.status == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, timeout=30, message="outbound health NOT_SERVING")
    async with AdminClient(app.target, token="admin-token") as admin:
        status = await admin.outbound_status()
        assert status.outbox_depth == 2 and status.sinks[0].failed >= 1
        with pytest.raises(RpcError) as err:
            await admin.redrive_outbound("nope")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
