"""``talkwire sessions transcript ID [--json]``, ``talkwire outbound status|redrive``.

Registered by :func:`add_outbound_commands` from :mod:`talkwire.clients.cli`.
``sessions transcript`` prints one ``who: text`` line per user turn and durable frame
(``--json``: the ``ConversationEvent`` JSON form, a list); ``outbound status`` a table
of the sinks (``--json``: the response); ``outbound redrive [--sink NAME]`` queues
dead-lettered deliveries again.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from google.protobuf import json_format

from talkwire.clients import cli
from talkwire.clients.cliutil import add_connection_flags, guarded, runner
from talkwire.v1 import conversation_pb2

__all__ = ["add_outbound_commands", "outbound_command", "transcript_command", "transcript_line"]


def transcript_line(event: conversation_pb2.ConversationEvent) -> str:
    """``seq who: text`` for one transcript event ("" for kinds without text)."""
    if event.kind == "turn.received":
        turn = event.turn
        if turn.WhichOneof("frame") == "message":
            return f"      user: {turn.message.text}"
        return f"      user: [{turn.action.label or turn.action.intent}]"
    frame = event.frame
    kind = frame.WhichOneof("frame")
    seq = f"{frame.seq:>5}"
    if kind == "reply":
        return f"{seq} bot: {frame.reply.text}"
    if kind == "prompt":
        return f"{seq} bot: {frame.prompt.text}"
    if kind == "update":
        return f"{seq} update: {frame.update.text}"
    if kind == "error":
        return f"{seq} error: {frame.error.code}: {frame.error.message}"
    if kind == "subscription":
        verb = "subscribed to" if frame.subscription.active else "unsubscribed from"
        return f"{seq} ({verb} {frame.subscription.key})"
    return ""


def _jsonable(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


async def transcript_command(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``talkwire sessions transcript ID [--json]``."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    return await guarded(_transcript(args, out), err)


async def _transcript(args: argparse.Namespace, out: TextIO) -> int:
    async with cli._admin(args) as admin:
        events = [e async for e in admin.iter_transcript(args.session_id)]
    if args.json:
        print(json.dumps([_jsonable(e) for e in events], indent=2), file=out)
        return 0
    for event in events:
        line = transcript_line(event)
        if line:
            print(line, file=out)
    return 0


async def outbound_command(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``talkwire outbound status|redrive``."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    return await guarded(_outbound(args, out), err)


async def _outbound(args: argparse.Namespace, out: TextIO) -> int:
    async with cli._admin(args) as admin:
        if args.outbound_command == "redrive":
            n = await admin.redrive_outbound(args.sink)
            print(f"requeued {n} dead-lettered deliveries", file=out)
            return 0
        status = await admin.outbound_status()
    if args.json:
        print(json.dumps(_jsonable(status), indent=2, sort_keys=True), file=out)
        return 0
    header = ["SINK", "TYPE", "PENDING", "OLDEST_S", "DELIVERED", "RETRIED", "FAILED", "DEAD"]
    header.append("BREAKER")
    rows = [
        [
            s.name,
            s.type,
            str(s.pending),
            f"{s.oldest_pending_seconds:.1f}",
            str(s.delivered),
            str(s.retried),
            str(s.failed),
            str(s.dead_lettered),
            s.breaker,
        ]
        for s in status.sinks
    ]
    cli._table(out, header, rows)
    print(f"outbox depth {status.outbox_depth}", file=out)
    return 0


def add_outbound_commands(
    subparsers: argparse._SubParsersAction[Any],
    sessions_sub: argparse._SubParsersAction[Any],
) -> None:
    """Add ``sessions transcript`` and ``outbound status|redrive``."""
    t = sessions_sub.add_parser(
        "transcript",
        help="print a session's transcript",
        description="The session's user turns and durable frames, in order (admin role).",
        epilog="examples:\n  talkwire sessions transcript ID\n"
        "  talkwire sessions transcript ID --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("session_id", metavar="ID", help="the session id")
    t.add_argument("--json", action="store_true", help="print the events as JSON")
    add_connection_flags(t)
    t.set_defaults(func=runner(transcript_command), handler=runner(transcript_command))

    outbound = subparsers.add_parser(
        "outbound",
        help="outbound event sinks (admin)",
        description="The outbound conversation-event sinks (admin role).",
        epilog="examples:\n  talkwire outbound status\n"
        "  talkwire outbound redrive --sink crm_notes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = outbound.add_subparsers(dest="outbound_command", required=True)
    status = sub.add_parser(
        "status",
        help="outbox depth and per-sink counters",
        description="Outbox depth, oldest pending age, delivered / retried / failed / "
        "dead-lettered counts and breaker state per sink.",
        epilog="examples:\n  talkwire outbound status\n  talkwire outbound status --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    redrive = sub.add_parser(
        "redrive",
        help="send dead-lettered deliveries again",
        description="Put dead-lettered deliveries back in the outbox, in their order.",
        epilog="examples:\n  talkwire outbound redrive\n"
        "  talkwire outbound redrive --sink crm_notes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    redrive.add_argument("--sink", default="", help="only this sink's (default: every sink)")
    for p in (status, redrive):
        add_connection_flags(p)
        p.set_defaults(func=runner(outbound_command), handler=runner(outbound_command))
