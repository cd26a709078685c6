"""Client subcommands of the ``talkwire`` console script: ``chat``, ``sessions``, ``connectors``.

``add_client_commands(subparsers)`` registers them; each leaf parser sets
``func`` and ``handler`` (the same ``callable(args) -> int`` returning the exit
code), which runs the command's ``async def`` with ``asyncio.run``. Errors
print one line naming the gRPC status (``talkwire: error: UNAVAILABLE: ...``)
on stderr and exit 1; no traceback. Standalone: ``python -m talkwire.clients.cli chat``.

``talkwire chat`` reads lines from stdin (in a daemon thread, so the event
loop keeps printing pushed updates while you type):

* plain text is sent as a message; a number ``N`` presses the N-th quick reply
  of the latest reply/prompt; ``/sub KEY``, ``/unsub KEY``, ``/ping``, ``/quit``;
* when stdin is not a terminal (a pipe or file), each line waits for its first
  answer (a frame whose ``in_reply_to`` is the line's frame id) before the next
  is sent, and the command exits at EOF once the last line is answered.

The session id and resume token are printed on stderr (``# session ...``), so
``talkwire chat --session ID --resume-token TOKEN [--last-seq N]`` resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from talkwire.clients.admin import AdminClient
from talkwire.clients.agent import add_agent_command, describe_frame
from talkwire.clients.chat import ChatClient, ChatSession
from talkwire.clients.convert import from_struct
from talkwire.clients.errors import RpcError, TalkwireError
from talkwire.clients.reconnect import ConnectionEvent, ConnectionEventKind
from talkwire.v1 import admin_pb2, chat_pb2

__all__ = [
    "add_client_commands",
    "chat_command",
    "connectors_command",
    "main",
    "parse_parameters",
    "sessions_command",
]

DEFAULT_TARGET = "127.0.0.1:50051"


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


# -- plumbing ----------------------------------------------------------------------


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if not (args.tls or args.ca_file or args.cert_file):
        return None

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as fh:
            return fh.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(args.ca_file),
        private_key=read(args.key_file),
        certificate_chain=read(args.cert_file),
    )


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, RpcError):
        return f"{exc.code.name}: {exc.details}" if exc.details else exc.code.name
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        name = code.name if code is not None else "UNKNOWN"
        return f"{name}: {exc.details() or ''}".rstrip(": ")
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED: no answer in time"
    return str(exc) or type(exc).__name__


async def _guarded(coro: Awaitable[int], stderr: TextIO) -> int:
    try:
        return await coro
    except (TalkwireError, grpc.aio.AioRpcError, CommandError, TimeoutError, OSError) as exc:
        print(f"talkwire: error: {_error_line(exc)}", file=stderr)
        return 1


def _runner(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(command(args))
        except KeyboardInterrupt:
            return 130

    run.__name__ = getattr(command, "__name__", "run")
    return run


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=os.environ.get("TALKWIRE_TARGET", DEFAULT_TARGET),
        help="server address host:port (env TALKWIRE_TARGET; default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("TALKWIRE_TOKEN"),
        help="bearer token (env TALKWIRE_TOKEN)",
    )
    group.add_argument("--tls", action="store_true", help="use TLS (system roots)")
    group.add_argument("--ca-file", help="PEM root certificates (implies --tls)")
    group.add_argument("--cert-file", help="PEM client certificate for mTLS (implies --tls)")
    group.add_argument("--key-file", help="PEM client key for mTLS")


# -- chat ----------------------------------------------------------------------------


def _start_line_reader(stream: TextIO) -> asyncio.Queue[str | None]:
    """Feed ``stream`` lines into a queue from a daemon thread; ``None`` marks EOF."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            for line in iter(stream.readline, ""):
                put(line)
        except (OSError, ValueError):
            pass
        finally:
            put(None)

    threading.Thread(target=work, name="talkwire-stdin", daemon=True).start()
    return queue


class _ChatView:
    """Renders frames and tracks quick replies and answered frame ids."""

    ANSWERS = frozenset({"reply", "prompt", "error", "subscription", "pong"})

    def __init__(self, out: TextIO, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive
        self.quick_replies: list[chat_pb2.QuickReply] = []
        self.waiting: dict[str, asyncio.Event] = {}

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def render(self, frame: chat_pb2.ConverseResponse) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "handoff" or (kind == "reply" and frame.reply.author.role not in ("", "bot")):
            self._print(describe_frame(frame, with_seq=False))  # a person, or the handoff
        elif kind in ("reply", "prompt"):
            body = frame.reply if kind == "reply" else frame.prompt
            self._print(f"bot: {body.text}")
            self.quick_replies = list(body.quick_replies)
            for n, qr in enumerate(self.quick_replies, 1):
                self._print(f"  [{n}] {qr.label or qr.intent}")
        elif kind == "update":
            update = frame.update
            text = update.text or json.dumps(from_struct(update.data), sort_keys=True)
            where = f" {update.key}" if update.key else ""
            self._print(f"update{where}: {text}")
        elif kind == "error":
            self._print(f"error {frame.error.code}: {frame.error.message}")
        elif kind == "pong":
            self._print(f"pong {frame.pong.data}".rstrip())
        elif kind == "subscription":
            state = "subscribed" if frame.subscription.active else "unsubscribed"
            self._print(f"{state} {frame.subscription.key}")
        if frame.in_reply_to and kind in self.ANSWERS:
            event = self.waiting.pop(frame.in_reply_to, None)
            if event is not None:
                event.set()
        if self.interactive:
            print("> ", end="", file=self.out, flush=True)

    def expect(self, frame_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self.waiting[frame_id] = event
        return event


async def _chat_input(
    session: ChatSession,
    lines: asyncio.Queue[str | None],
    view: _ChatView,
    answer_timeout: float,
) -> None:
    if view.interactive:
        print("> ", end="", file=view.out, flush=True)
    while True:
        line = await lines.get()
        if line is None:
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        if command == "/sub" and rest:
            frame_id = await session.subscribe(rest)
        elif command == "/unsub" and rest:
            frame_id = await session.unsubscribe(rest)
        elif command == "/ping":
            frame_id = await session.ping(rest)
        elif line.isdigit() and 1 <= int(line) <= len(view.quick_replies):
            qr = view.quick_replies[int(line) - 1]
            frame_id = await session.action(qr.intent, from_struct(qr.parameters), qr.label)
        else:
            frame_id = await session.send(line)
        if not view.interactive:  # piped: one turn at a time, so numbers and EOF work
            answered = view.expect(frame_id)
            async with asyncio.timeout(answer_timeout):
                await answered.wait()


async def _chat_output(session: ChatSession, view: _ChatView) -> None:
    async for frame in session:
        view.render(frame)


async def chat_command(
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``talkwire chat``: an interactive (or piped) Converse session. Returns the exit code."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    return await _guarded(_chat(args, stdin, stdout, stderr), stderr)


async def _chat(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    isatty = getattr(stdin, "isatty", None)
    interactive = bool(isatty()) if callable(isatty) else False
    view = _ChatView(stdout, interactive)

    def on_event(event: ConnectionEvent) -> None:
        if event.kind is ConnectionEventKind.DISCONNECTED:
            code = event.code.name if event.code else "?"
            print(f"# disconnected ({code}: {event.details}); resuming", file=stderr)
        elif event.kind is ConnectionEventKind.RESUMED:
            print(f"# resumed ({event.replayed} frames replayed)", file=stderr)

    if bool(args.session) != bool(args.resume_token):
        raise CommandError("--session and --resume-token go together")
    client = ChatClient(
        args.target,
        token=args.token,
        credentials=_credentials(args),
        on_connection_event=on_event,
    )
    async with client:
        if args.session:
            session = await client.resume(args.session, args.resume_token, args.last_seq)
        else:
            attributes = dict(a.split("=", 1) for a in args.attribute)
            session = await client.open(
                channel=args.channel, locale=args.locale, attributes=attributes
            )
        print(f"# session {session.session_id} resume-token {session.resume_token}", file=stderr)
        async with session:
            lines = _start_line_reader(stdin)
            output = asyncio.create_task(_chat_output(session, view))
            user = asyncio.create_task(_chat_input(session, lines, view, args.answer_timeout))
            try:
                done, _ = await asyncio.wait({output, user}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (user, output):
                    task.cancel()
                await asyncio.wait({user, output})
            if output in done and not output.cancelled():
                output.result()  # raises the session's error
                print("# the server closed the session", file=stderr)
            elif not user.cancelled():
                user.result()  # raises TimeoutError if an answer never came
        print(f"# last-seq {session.last_seq}", file=stderr)
    return 0


# -- sessions ------------------------------------------------------------------------


def _admin(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.target, token=args.token, credentials=_credentials(args))


def _as_json(message: Any) -> str:
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True),
        indent=2,
        sort_keys=True,
    )


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
    """``talkwire sessions list|get|close``."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    return await _guarded(_sessions(args, out), err)


async def _sessions(args: argparse.Namespace, out: TextIO) -> int:
    async with _admin(args) as admin:
        if args.sessions_command == "list":
            rows = []
            async for s in admin.iter_sessions(
                subject=args.subject, key=args.key, include_closed=args.include_closed
            ):
                rows.append(s)
            if args.json:
                print(json.dumps([json.loads(_as_json(s)) for s in rows], indent=2), file=out)
            else:
                header = ["SESSION", "SUBJECT", "CHANNEL", "STATE", "ATTACHED", "HEAD", "ACKED"]
                _table(out, [*header, "SUBSCRIPTIONS"], [_session_row(s) for s in rows])
        elif args.sessions_command == "get":
            print(_as_json(await admin.get_session(args.session_id)), file=out)
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


async def connectors_command(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """``talkwire connectors list|invoke``."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    return await _guarded(_connectors(args, out), err)


async def _connectors(args: argparse.Namespace, out: TextIO) -> int:
    if args.connectors_command == "invoke":
        params = parse_parameters(args.params, args.json_params)
        claims: dict[str, Any] | None = None
        if args.claims:
            try:
                claims = json.loads(args.claims)
            except json.JSONDecodeError as exc:
                raise CommandError(f"INVALID_ARGUMENT: --claims is not valid JSON: {exc}") from None
            if not isinstance(claims, dict):
                raise CommandError("INVALID_ARGUMENT: --claims must be a JSON object")
    async with _admin(args) as admin:
        if args.connectors_command == "list":
            connectors = await admin.list_connectors()
            if args.json:
                print(json.dumps([json.loads(_as_json(c)) for c in connectors], indent=2), file=out)
                return 0
            for c in connectors:
                print(f"{c.name} ({c.type})", file=out)
                for op in c.operations:
                    params_text = ", ".join(
                        f"{p.name}{'' if p.required else '?'}: {p.type or 'any'}"
                        for p in op.parameters
                    )
                    kind = " [write]" if op.write else ""
                    print(f"  {op.name}({params_text}){kind}  {op.description}".rstrip(), file=out)
            return 0
        result = await admin.invoke_connector(
            args.connector,
            args.operation,
            params,
            subject=args.as_subject,
            claims=claims,
            idempotency_key=args.idempotency_key or "",
        )
        print(json.dumps(result, indent=2, sort_keys=True, default=str), file=out)
    return 0


# -- registration ------------------------------------------------------------------------


def add_client_commands(
    subparsers: argparse._SubParsersAction[Any],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Register ``chat``, ``sessions`` and ``connectors`` on a ``talkwire`` subparsers object.

    Every leaf parser sets ``func`` and ``handler`` (aliases): ``args.handler(args)``
    runs the command and returns its exit code. Returns the ``connectors``
    subcommands, so the server CLI can add offline ones (``inspect``).
    """
    chat = subparsers.add_parser(
        "chat",
        help="chat with the bot (interactive, or one line per turn from a pipe)",
        description="Open (or resume) a session; type text, a quick-reply number, "
        "/sub KEY, /unsub KEY, /ping or /quit.",
    )
    _add_connection_flags(chat)
    chat.add_argument("--session", help="resume this session id")
    chat.add_argument("--resume-token", help="the session's resume token")
    chat.add_argument("--last-seq", type=int, default=0, help="resume after this seq")
    chat.add_argument("--channel", default="cli", help="channel name (default %(default)s)")
    chat.add_argument("--locale", default="", help="BCP 47 locale, e.g. en-GB")
    chat.add_argument(
        "--attribute", action="append", default=[], metavar="K=V", help="session attribute"
    )
    chat.add_argument(
        "--answer-timeout",
        type=float,
        default=30.0,
        help="piped mode: seconds to wait for each answer (default %(default)s)",
    )
    chat.set_defaults(func=_runner(chat_command), handler=_runner(chat_command))

    sessions = subparsers.add_parser("sessions", help="list / get / close sessions (admin)")
    sessions_sub = sessions.add_subparsers(dest="sessions_command", required=True)
    s_list = sessions_sub.add_parser("list", help="list sessions")
    s_list.add_argument("--subject", default="", help="only this subject's sessions")
    s_list.add_argument("--key", default="", help="only sessions subscribed to this key")
    s_list.add_argument("--include-closed", action="store_true")
    s_list.add_argument("--json", action="store_true", help="print JSON")
    s_get = sessions_sub.add_parser("get", help="show one session as JSON")
    s_get.add_argument("session_id")
    s_close = sessions_sub.add_parser("close", help="close a session")
    s_close.add_argument("session_id")
    s_close.add_argument("--reason", default="closed by operator")
    for p in (s_list, s_get, s_close):
        _add_connection_flags(p)
        p.set_defaults(func=_runner(sessions_command), handler=_runner(sessions_command))
    from talkwire.clients.outbound_cli import add_outbound_commands

    add_outbound_commands(subparsers, sessions_sub)

    connectors = subparsers.add_parser("connectors", help="list / invoke connectors (admin)")
    connectors_sub: argparse._SubParsersAction[argparse.ArgumentParser]
    connectors_sub = connectors.add_subparsers(dest="connectors_command", required=True)
    c_list = connectors_sub.add_parser("list", help="list connectors and their operations")
    c_list.add_argument("--json", action="store_true", help="print JSON")
    c_invoke = connectors_sub.add_parser(
        "invoke",
        help="invoke a connector operation",
        description="Parameters: key=value (JSON scalars are typed: id=1001 is a number), "
        "key:=JSON, key==string; --json '{...}' is the base object.",
    )
    c_invoke.add_argument("connector")
    c_invoke.add_argument("operation")
    c_invoke.add_argument("params", nargs="*", metavar="key=value")
    c_invoke.add_argument("--json", dest="json_params", metavar="OBJECT", help="parameters")
    c_invoke.add_argument("--as-subject", help="act as this subject")
    c_invoke.add_argument("--claims", help="claims of that subject, a JSON object")
    c_invoke.add_argument(
        "--idempotency-key", help="idempotency key: a write runs once per key (same result after)"
    )
    for p in (c_list, c_invoke):
        _add_connection_flags(p)
        p.set_defaults(func=_runner(connectors_command), handler=_runner(connectors_command))
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
