"""Client subcommands of the ``talkwire`` console script.

``chat``, ``sessions list|get|close|watch``, ``connectors list|invoke`` and
``health``. ``add_client_commands(subparsers)`` registers them; each leaf
parser sets ``func`` and ``handler`` (the same ``callable(args) -> int``
returning the exit code). Failures print one line (``talkwire: error:
UNAVAILABLE: ...``) on stderr and exit 1, never a traceback; exit codes are
listed in :mod:`talkwire.clients.cliutil`. Standalone:
``python -m talkwire.clients.cli chat``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkwire.clients.admin import AdminClient
from talkwire.clients.channel import call_metadata, open_channel
from talkwire.clients.chat_cli import chat_command, chat_help, render_frame
from talkwire.clients.cliutil import (
    CommandError,
    add_connection_flags,
    credentials,
    guarded,
    runner,
)
from talkwire.clients.jsonout import message_dict, message_line
from talkwire.v1 import admin_pb2

__all__ = [
    "EXIT_NOT_SERVING",
    "EXIT_UNKNOWN_SERVICE",
    "add_client_commands",
    "chat_command",
    "connectors_command",
    "health_command",
    "main",
    "parse_parameters",
    "sessions_command",
]

#: ``talkwire health`` exit codes besides 0 (all SERVING) and 1 (no answer).
EXIT_UNKNOWN_SERVICE = 3
EXIT_NOT_SERVING = 4

_Formatter = argparse.RawDescriptionHelpFormatter


def _out(stdout: TextIO | None) -> TextIO:
    return stdout if stdout is not None else sys.stdout


def _err(stderr: TextIO | None) -> TextIO:
    return stderr if stderr is not None else sys.stderr


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _admin(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.target, token=args.token, credentials=credentials(args))


# -- sessions --------------------------------------------------------------------------


def _session_row(s: admin_pb2.Session) -> list[str]:
    state = admin_pb2.SessionState.Name(s.state).removeprefix("SESSION_STATE_").lower()
    return [
        s.session_id,
        s.subject,
        s.channel,
        state,
        "yes" if s.attached else "no",
        str(s.head_seq),
        str(s.acked_seq),
        ",".join(s.subscriptions),
    ]


def _table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


async def sessions_command(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``talkwire sessions list|get|close|watch``."""
    return await guarded(_sessions(args, _out(stdout)), _err(stderr))


async def _sessions(args: argparse.Namespace, out: TextIO) -> int:
    async with _admin(args) as admin:
        if args.sessions_command == "list":
            rows = [
                s
                async for s in admin.iter_sessions(
                    subject=args.subject, key=args.key, include_closed=args.include_closed
                )
            ]
            if args.json:
                print(_dumps([message_dict(s) for s in rows]), file=out)
            else:
                header = ["SESSION", "SUBJECT", "CHANNEL", "STATE", "ATTACHED", "HEAD", "ACKED"]
                _table(out, [*header, "SUBSCRIPTIONS"], [_session_row(s) for s in rows])
        elif args.sessions_command == "get":
            print(_dumps(message_dict(await admin.get_session(args.session_id))), file=out)
        elif args.sessions_command == "watch":
            after = args.after_seq
            if after is None:  # acked frames may be pruned; unacked ones are always retained
                after = (await admin.get_session(args.session_id)).acked_seq
            async for frame in admin.watch(args.session_id, after):
                if args.json:
                    print(message_line(frame), file=out, flush=True)
                else:
                    for line in render_frame(frame):
                        print(f"[{frame.seq}] {line}", file=out, flush=True)
        else:
            session = await admin.close_session(args.session_id, args.reason)
            print(f"closed {session.session_id}", file=out)
    return 0


# -- connectors ------------------------------------------------------------------------


def parse_parameters(pairs: list[str], base_json: str | None = None) -> dict[str, Any]:
    """``--json`` (an object) overlaid with ``key=value`` pairs.

    A value that is a JSON number, ``true``/``false``/``null``, or a JSON
    object/array/quoted string is parsed as JSON; anything else is a string.
    ``key:=value`` forces JSON and ``key==value`` forces a string.
    """
    params: dict[str, Any] = {}
    if base_json:
        try:
            loaded = json.loads(base_json)
        except json.JSONDecodeError as exc:
            raise CommandError(f"INVALID_ARGUMENT: --json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise CommandError("INVALID_ARGUMENT: --json must be a JSON object")
        params.update(loaded)
    for pair in pairs:
        eq = pair.find("=")
        if eq <= 0:
            raise CommandError(f"INVALID_ARGUMENT: expected key=value, got {pair!r}")
        if pair[eq - 1] == ":" and eq > 1:  # key:=JSON
            key, raw = pair[: eq - 1], pair[eq + 1 :]
            try:
                params[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise CommandError(f"INVALID_ARGUMENT: {key}: not valid JSON: {exc}") from None
        elif pair[eq + 1 : eq + 2] == "=":  # key==string
            params[pair[:eq]] = pair[eq + 2 :]
        else:
            key, raw = pair[:eq], pair[eq + 1 :]
            try:
                params[key] = json.loads(raw)
            except json.JSONDecodeError:
                params[key] = raw
    return params


def _claims(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        claims = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CommandError(f"INVALID_ARGUMENT: --claims is not valid JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise CommandError("INVALID_ARGUMENT: --claims must be a JSON object")
    return claims


async def connectors_command(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``talkwire connectors list|invoke``."""
    return await guarded(_connectors(args, _out(stdout)), _err(stderr))


def _print_connectors(out: TextIO, connectors: list[admin_pb2.ConnectorInfo]) -> None:
    for c in connectors:
        print(f"{c.name} ({c.type})", file=out)
        for op in c.operations:
            params_text = ", ".join(
                f"{p.name}{'' if p.required else '?'}: {p.type or 'any'}" for p in op.parameters
            )
            kind = " [write]" if op.write else ""
            print(f"  {op.name}({params_text}){kind}  {op.description}".rstrip(), file=out)


async def _connectors(args: argparse.Namespace, out: TextIO) -> int:
    if args.connectors_command == "invoke":
        params = parse_parameters(args.params, args.json_params)
        claims = _claims(args.claims)
    async with _admin(args) as admin:
        if args.connectors_command == "list":
            connectors = await admin.list_connectors()
            if args.json:
                print(_dumps([message_dict(c) for c in connectors]), file=out)
            else:
                _print_connectors(out, connectors)
            return 0
        result = await admin.invoke_connector(
            args.connector,
            args.operation,
            params,
            subject=args.as_subject,
            claims=claims,
            idempotency_key=args.idempotency_key or "",
        )
        print(_dumps(result), file=out)
    return 0


# -- health ------------------------------------------------------------------------------


async def health_command(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``talkwire health [SERVICE...]``: grpc.health.v1 Check of ``""`` and each SERVICE."""
    return await guarded(_health(args, _out(stdout)), _err(stderr))


async def _health(args: argparse.Namespace, out: TextIO) -> int:
    names = ["", *(s for s in args.services if s)]
    serving = health_pb2.HealthCheckResponse.SERVING
    worst = 0
    channel = open_channel(args.target, credentials(args), ())
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in names:
            label = name or '""'
            try:
                response = await stub.Check(
                    health_pb2.HealthCheckRequest(service=name),
                    metadata=call_metadata(args.token),
                    timeout=args.timeout,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                print(f"{label}: SERVICE_UNKNOWN", file=out)
                worst = max(worst, EXIT_UNKNOWN_SERVICE)
                continue
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            print(f"{label}: {status}", file=out)
            if response.status != serving:
                worst = max(worst, EXIT_NOT_SERVING)
    return worst


# -- registration --------------------------------------------------------------------------


class _TrailingParamsParser(argparse.ArgumentParser):
    """Takes ``key=value`` words found after options into ``params`` (``invoke x y --a b k=v``)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if not hasattr(parsed, "params"):
            return parsed, extras
        rest: list[str] = []
        for word in extras:
            if "=" in word and not word.startswith("-"):
                parsed.params.append(word)
            else:
                rest.append(word)
        return parsed, rest


def _leaf(
    sub: argparse._SubParsersAction[Any],
    name: str,
    *,
    help: str,
    description: str,
    examples: str,
    handler: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"examples:\n{examples}",
        formatter_class=_Formatter,
    )
    parser.set_defaults(func=handler, handler=handler)
    return parser


_CHAT_EXAMPLES = """\
  talkwire chat                                   talk to the bot (type /help)
  talkwire chat -m 'where is my order 1001'       one turn, then exit
  printf 'where is my order 1001\\n1\\n' | talkwire chat    one turn per line
  talkwire chat --json -m 'hi' | jq .reply.text    frames as JSON lines
  talkwire chat --session ID --resume-token TOKEN --last-seq 4

chat commands:
"""


def _add_chat(sub: argparse._SubParsersAction[Any]) -> None:
    chat = _leaf(
        sub,
        "chat",
        help="chat with the bot (terminal, pipe, or -m for one turn)",
        description="Open (or resume) a Converse session and talk to the bot. From a pipe "
        "or with -m, each line is one turn, sent once the previous one is answered.",
        examples=_CHAT_EXAMPLES + chat_help(),
        handler=runner(chat_command),
    )
    add_connection_flags(chat)
    chat.add_argument(
        "-m",
        "--message",
        action="append",
        metavar="TEXT",
        help="send TEXT as one turn, print the answer and exit (repeat for more turns; "
        "stdin is not read)",
    )
    chat.add_argument(
        "--json",
        action="store_true",
        help="print every frame as one line of JSON (proto3 JSON mapping, .proto field "
        "names, numbers as numbers)",
    )
    chat.add_argument("--session", metavar="ID", help="resume this session id")
    chat.add_argument("--resume-token", metavar="TOKEN", help="the session's resume token")
    chat.add_argument(
        "--last-seq",
        type=int,
        default=0,
        metavar="N",
        help="on resume, replay the frames after seq N (default %(default)s: all retained)",
    )
    chat.add_argument("--channel", default="cli", help="channel name (default %(default)s)")
    chat.add_argument("--locale", default="", help="BCP 47 locale of the user, e.g. en-GB")
    chat.add_argument(
        "--attribute",
        action="append",
        default=[],
        metavar="K=V",
        help="a session attribute (repeatable)",
    )
    chat.add_argument(
        "--answer-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="pipe / -m: give up (exit 1) when a turn has no answer after this long "
        "(default %(default)s)",
    )


def _add_sessions(
    sub: argparse._SubParsersAction[Any],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    sessions = sub.add_parser(
        "sessions",
        help="list / get / close / watch sessions (admin role)",
        description="Inspect and manage sessions through the AdminService (admin role).",
        epilog="examples:\n  talkwire sessions list --key order:1001\n"
        "  talkwire sessions get ID\n  talkwire sessions watch ID --after-seq 10\n"
        "  talkwire sessions close ID --reason 'spam'",
        formatter_class=_Formatter,
    )
    sessions_sub: argparse._SubParsersAction[argparse.ArgumentParser]
    sessions_sub = sessions.add_subparsers(dest="sessions_command", required=True, metavar="ACTION")
    handler = runner(sessions_command)
    s_list = _leaf(
        sessions_sub,
        "list",
        help="list sessions",
        description="List sessions (open ones unless --include-closed).",
        examples="  talkwire sessions list\n  talkwire sessions list --subject alice --json",
        handler=handler,
    )
    s_list.add_argument("--subject", default="", help="only the sessions of this subject")
    s_list.add_argument("--key", default="", help="only sessions subscribed to this key")
    s_list.add_argument("--include-closed", action="store_true", help="closed sessions too")
    s_list.add_argument("--json", action="store_true", help="print a JSON array")
    s_get = _leaf(
        sessions_sub,
        "get",
        help="show one session as JSON",
        description="Show one session as JSON.",
        examples="  talkwire sessions get 3f2a...",
        handler=handler,
    )
    s_get.add_argument("session_id", metavar="ID", help="the session id")
    s_watch = _leaf(
        sessions_sub,
        "watch",
        help="stream a session's frames (the Watch RPC)",
        description="Print a session's durable frames, each prefixed with its [seq]: the "
        "retained ones after --after-seq, then live ones as they happen. Ctrl-C stops.",
        examples="  talkwire sessions watch ID\n  talkwire sessions watch ID --after-seq 12 --json",
        handler=handler,
    )
    s_watch.add_argument("session_id", metavar="ID", help="the session id")
    s_watch.add_argument(
        "--after-seq",
        type=int,
        default=None,
        metavar="N",
        help="start after seq N (default: the session's acked seq, i.e. the frames its "
        "client has not acknowledged yet, then live ones)",
    )
    s_watch.add_argument("--json", action="store_true", help="one JSON frame per line")
    s_close = _leaf(
        sessions_sub,
        "close",
        help="close a session",
        description="Close a session; a live attachment ends with NOT_FOUND.",
        examples="  talkwire sessions close ID --reason 'closed by support'",
        handler=handler,
    )
    s_close.add_argument("session_id", metavar="ID", help="the session id")
    s_close.add_argument("--reason", default="closed by operator", help="why (default %(default)r)")
    for p in (s_list, s_get, s_watch, s_close):
        add_connection_flags(p)
    return sessions_sub


def _add_connectors(
    sub: argparse._SubParsersAction[Any],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    connectors = sub.add_parser(
        "connectors",
        help="list / invoke connector operations (admin role)",
        description="Connector operations through the AdminService (admin role).",
        epilog="examples:\n  talkwire connectors list\n"
        "  talkwire connectors invoke crm get_order order_id=1001",
        formatter_class=_Formatter,
    )
    connectors_sub: argparse._SubParsersAction[argparse.ArgumentParser]
    connectors_sub = connectors.add_subparsers(
        dest="connectors_command",
        required=True,
        metavar="ACTION",
        parser_class=_TrailingParamsParser,
    )
    handler = runner(connectors_command)
    c_list = _leaf(
        connectors_sub,
        "list",
        help="list connectors and their operations",
        description="List the configured connectors and their operations.",
        examples="  talkwire connectors list\n  talkwire connectors list --json",
        handler=handler,
    )
    c_list.add_argument("--json", action="store_true", help="print a JSON array")
    c_invoke = _leaf(
        connectors_sub,
        "invoke",
        help="invoke a connector operation",
        description="Invoke one operation with parameters and print its result as JSON. "
        "Parameters are key=value (a JSON scalar is typed: id=1001 is a number), "
        "key:=JSON (forced JSON) or key==text (forced string); they may come before "
        "or after the options.",
        examples="  talkwire connectors invoke crm get_order order_id=1001\n"
        "  talkwire connectors invoke crm get_order --as-subject alice order_id=1001\n"
        '  talkwire connectors invoke crm find_orders --json \'{"status": "shipped"}\'',
        handler=handler,
    )
    c_invoke.add_argument("connector", help="connector name, as in the config")
    c_invoke.add_argument("operation", help="operation name")
    c_invoke.add_argument("params", nargs="*", metavar="key=value", help="operation parameters")
    c_invoke.add_argument(
        "--json",
        dest="json_params",
        metavar="OBJECT",
        help="parameters as a JSON object (key=value pairs override its keys)",
    )
    c_invoke.add_argument("--as-subject", metavar="SUBJECT", help="act as this subject")
    c_invoke.add_argument("--claims", metavar="OBJECT", help="that subject's claims (JSON)")
    c_invoke.add_argument("--idempotency-key", metavar="KEY", help="idempotency key (writes)")
    for p in (c_list, c_invoke):
        add_connection_flags(p)
    return connectors_sub


def _add_health(sub: argparse._SubParsersAction[Any]) -> None:
    health = _leaf(
        sub,
        "health",
        help="ask the server's gRPC health service",
        description='grpc.health.v1 Check of the server ("") and of each SERVICE named; '
        "one line per service. Exit 0: all SERVING; 3: a SERVICE is unknown; 4: one is "
        "NOT_SERVING; 1: no answer.",
        examples="  talkwire health\n  talkwire health talkwire.ready talkwire.events\n"
        "  until talkwire health talkwire.ready; do sleep 1; done",
        handler=runner(health_command),
    )
    health.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help="services to check besides the server itself, e.g. talkwire.ready "
        "(readiness), talkwire.events (the Kafka consumer)",
    )
    health.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each check (default %(default)s)",
    )
    add_connection_flags(health)


def add_client_commands(
    subparsers: argparse._SubParsersAction[Any],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Register ``chat``, ``sessions``, ``outbound``, ``connectors``, ``health`` and ``agent``.

    Every leaf parser sets ``func`` and ``handler`` (aliases): ``args.handler(args)``
    runs the command and returns its exit code. Returns the ``connectors``
    subcommands, so the server CLI can add offline ones (``inspect``).
    """
    from talkwire.clients.agent import add_agent_command
    from talkwire.clients.outbound_cli import add_outbound_commands

    _add_chat(subparsers)
    add_outbound_commands(subparsers, _add_sessions(subparsers))
    connectors_sub = _add_connectors(subparsers)
    _add_health(subparsers)
    add_agent_command(subparsers)  # talkwire agent: the desk lives in talkwire.clients.agent
    return connectors_sub


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point with just the client commands."""
    parser = argparse.ArgumentParser(prog="talkwire")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_client_commands(subparsers)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
