"""``talkwire chat``: a Converse session on the terminal, from a pipe, or for one ``-m`` turn.

What a line does: plain text is a message; a number ``N`` presses the N-th
quick reply of the latest reply/prompt (out of range: a hint, nothing sent);
``/say TEXT`` sends TEXT as it is (a number too); ``/sub KEY``, ``/unsub KEY``,
``/ping [DATA]``, ``/help``, ``/quit``.

When a turn is answered: frames carry ``in_reply_to`` = the id of the client
frame that caused them, and the server answers every message or action with a
``reply``, ``prompt`` or ``error`` (a ``subscription`` frame caused by the same
turn comes before it and is not the answer); ``/sub`` and ``/unsub`` are
answered by their ``subscription`` (or an ``error``), ``/ping`` by its ``pong``.
Piped input and ``-m`` send one turn at a time, each after the previous one is
answered, so numbers refer to the quick replies just shown. At the end the
command pings the server and exits on the pong: the server queues all frames
of one turn together, and the pong behind whatever is already queued, so no
frame of the last turn is cut off. On a terminal
lines go out as typed and pushed updates print while you type.

Session id and resume token go to stderr (``# session ...``), so
``talkwire chat --session ID --resume-token TOKEN [--last-seq N]`` resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from talkwire.clients.chat import ChatClient, ChatSession
from talkwire.clients.cliutil import CommandError, credentials, guarded
from talkwire.clients.convert import from_struct
from talkwire.clients.jsonout import message_line
from talkwire.clients.reconnect import ConnectionEvent, ConnectionEventKind, ConnectionHook
from talkwire.v1 import chat_pb2

__all__ = ["PROMPT", "chat_command", "chat_help", "render_frame"]

PROMPT = "you> "
_TURN_ANSWERS = frozenset({"reply", "prompt", "error"})
_DRAIN_PING = "talkwire-cli-drain"

CHAT_COMMANDS = (
    ("TEXT", "send TEXT as a message"),
    ("N", "press quick reply number N of the last answer"),
    ("/say TEXT", "send TEXT as it is (e.g. a number that is not a quick reply)"),
    ("/sub KEY", "subscribe to a key, e.g. /sub order:1001"),
    ("/unsub KEY", "drop a subscription"),
    ("/ping [DATA]", "ping the server (answered by a pong)"),
    ("/help", "this list"),
    ("/quit", "leave (Ctrl-D too)"),
)


def chat_help() -> str:
    """The ``/help`` text (also the command's epilog)."""
    width = max(len(name) for name, _ in CHAT_COMMANDS)
    return "\n".join(f"  {name.ljust(width)}  {what}" for name, what in CHAT_COMMANDS)


def render_frame(frame: chat_pb2.ConverseResponse) -> list[str]:
    """The lines a frame prints as in the chat (``opened`` and unknown kinds print nothing)."""
    kind = frame.WhichOneof("frame")
    if kind == "handoff" or (kind == "reply" and frame.reply.author.role not in ("", "bot")):
        from talkwire.clients.agent import describe_frame

        return [describe_frame(frame, with_seq=False)]  # a person, or the handoff
    if kind in ("reply", "prompt"):
        body = frame.reply if kind == "reply" else frame.prompt
        lines = [f"bot: {body.text}"]
        lines += [f"  [{n}] {qr.label or qr.intent}" for n, qr in enumerate(body.quick_replies, 1)]
        return lines
    if kind == "update":
        update = frame.update
        text = update.text or json.dumps(from_struct(update.data), sort_keys=True)
        where = f" {update.key}" if update.key else ""
        return [f"update{where}: {text}"]
    if kind == "error":
        return [f"error {frame.error.code}: {frame.error.message}"]
    if kind == "pong":
        return [f"pong {frame.pong.data}".rstrip()]
    if kind == "subscription":
        state = "subscribed" if frame.subscription.active else "unsubscribed"
        return [f"{state} {frame.subscription.key}"]
    return []


@dataclasses.dataclass
class _Waiting:
    kinds: frozenset[str]
    answered: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class _ChatView:
    """Prints frames (text or JSON lines), remembers quick replies, tracks unanswered frames."""

    def __init__(self, out: TextIO, err: TextIO, *, prompt: bool, as_json: bool) -> None:
        self.out = out
        self.err = err
        self.prompt = prompt
        self.as_json = as_json
        self.clear_line = prompt and bool(getattr(out, "isatty", lambda: False)())
        self.quick_replies: list[chat_pb2.QuickReply] = []
        self._waiting: dict[str, _Waiting] = {}
        self._silent: set[str] = set()

    def show_prompt(self) -> None:
        if self.prompt:
            print(PROMPT, end="", file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A line about the chat (hints, help): stderr, so stdout stays the conversation."""
        print(text, file=self.err, flush=True)

    def expect(self, frame_id: str, kinds: frozenset[str], *, silent: bool = False) -> _Waiting:
        waiting = _Waiting(kinds)
        self._waiting[frame_id] = waiting
        if silent:
            self._silent.add(frame_id)
        return waiting

    def render(self, frame: chat_pb2.ConverseResponse) -> None:
        kind = frame.WhichOneof("frame")
        if kind in ("reply", "prompt"):
            body = frame.reply if kind == "reply" else frame.prompt
            self.quick_replies = list(body.quick_replies)
        if frame.in_reply_to not in self._silent:
            lines = [message_line(frame)] if self.as_json else render_frame(frame)
            if self.clear_line:
                print("\r\x1b[K", end="", file=self.out)
            for line in lines:
                print(line, file=self.out)
            self.out.flush()
            self.show_prompt()
        waiting = self._waiting.get(frame.in_reply_to) if frame.in_reply_to else None
        if waiting is not None and kind in waiting.kinds:
            del self._waiting[frame.in_reply_to]
            self._silent.discard(frame.in_reply_to)
            waiting.answered.set()


class _Input:
    """Turns input lines into frames; in one-turn-at-a-time mode waits for each answer."""

    def __init__(
        self, session: ChatSession, view: _ChatView, *, wait: bool, answer_timeout: float
    ) -> None:
        self.session = session
        self.view = view
        self.wait = wait
        self.answer_timeout = answer_timeout

    async def run(self, lines: asyncio.Queue[str | None]) -> None:
        self.view.show_prompt()
        while (line := await lines.get()) is not None:
            if not await self.handle(line.strip()):
                break
        if self.wait:
            await self.drain()

    async def handle(self, line: str) -> bool:
        """Act on one line; ``False`` means leave."""
        if not line:
            return True
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        if command in ("/quit", "/exit"):
            return False
        if command == "/help":
            self.view.note(chat_help())
        elif command == "/say" and rest:
            await self._turn(line, await self.session.send(rest), _TURN_ANSWERS)
        elif command in ("/sub", "/unsub") and rest:
            send = self.session.subscribe if command == "/sub" else self.session.unsubscribe
            await self._turn(line, await send(rest), frozenset({"subscription", "error"}))
        elif command == "/ping":
            await self._turn(line, await self.session.ping(rest), frozenset({"pong", "error"}))
        elif command.startswith("/"):
            self.view.note(f"# unknown command {command}; /help lists the commands")
        elif line.isdigit() and self.view.quick_replies:
            await self._quick_reply(line)
        else:
            await self._turn(line, await self.session.send(line), _TURN_ANSWERS)
        return True

    async def _quick_reply(self, line: str) -> None:
        choices = self.view.quick_replies
        number = int(line)
        if not 1 <= number <= len(choices):
            self.view.note(
                f"# no quick reply {number}: pick 1-{len(choices)}, "
                f"or /say {number} to send it as text"
            )
            return
        qr = choices[number - 1]
        frame_id = await self.session.action(qr.intent, from_struct(qr.parameters), qr.label)
        await self._turn(line, frame_id, _TURN_ANSWERS)

    async def _turn(self, line: str, frame_id: str, kinds: frozenset[str]) -> None:
        waiting = self.view.expect(frame_id, kinds)
        if self.wait:
            await self._answered(waiting, f"no answer to {line!r}")

    async def drain(self) -> None:
        """Ping and wait for the pong: frames of the last turn still in flight arrive first."""
        frame_id = await self.session.ping(_DRAIN_PING)
        waiting = self.view.expect(frame_id, frozenset({"pong", "error"}), silent=True)
        await self._answered(waiting, "no pong at the end")

    async def _answered(self, waiting: _Waiting, what: str) -> None:
        try:
            async with asyncio.timeout(self.answer_timeout):
                await waiting.answered.wait()
        except TimeoutError:
            raise CommandError(
                f"DEADLINE_EXCEEDED: {what} within {self.answer_timeout:g}s (--answer-timeout)"
            ) from None


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


def _fixed_lines(lines: Sequence[str]) -> asyncio.Queue[str | None]:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    for line in lines:
        queue.put_nowait(line)
    queue.put_nowait(None)
    return queue


async def chat_command(
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``talkwire chat``: an interactive, piped or ``-m`` session. Returns the exit code."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    return await guarded(_chat(args, stdin, stdout, stderr), stderr)


def _connection_notes(stderr: TextIO) -> ConnectionHook:
    def on_event(event: ConnectionEvent) -> None:
        if event.kind is ConnectionEventKind.DISCONNECTED:
            code = event.code.name if event.code else "?"
            print(f"# disconnected ({code}: {event.details}); resuming", file=stderr)
        elif event.kind is ConnectionEventKind.RESUMED:
            print(f"# resumed ({event.replayed} frames replayed)", file=stderr)

    return on_event


async def _chat(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    messages: list[str] = list(getattr(args, "message", None) or [])
    isatty = getattr(stdin, "isatty", None)
    interactive = not messages and callable(isatty) and bool(isatty())
    view = _ChatView(stdout, stderr, prompt=interactive and not args.json, as_json=args.json)
    if bool(args.session) != bool(args.resume_token):
        raise CommandError("--session and --resume-token go together")
    attributes: dict[str, str] = {}
    for pair in args.attribute:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise CommandError(f"INVALID_ARGUMENT: --attribute: expected K=V, got {pair!r}")
        attributes[key] = value
    client = ChatClient(
        args.target,
        token=args.token,
        credentials=credentials(args),
        on_connection_event=_connection_notes(stderr),
    )
    async with client:
        if args.session:
            session = await client.resume(args.session, args.resume_token, args.last_seq)
        else:
            session = await client.open(
                channel=args.channel, locale=args.locale, attributes=attributes
            )
        print(f"# session {session.session_id} resume-token {session.resume_token}", file=stderr)
        if interactive:
            view.note("# type /help for the commands, /quit to leave")
        async with session:
            lines = _fixed_lines(messages) if messages else _start_line_reader(stdin)
            user = _Input(session, view, wait=not interactive, answer_timeout=args.answer_timeout)
            await _converse(session, view, user, lines, stderr)
        if interactive:
            print(file=stdout)
        print(f"# last-seq {session.last_seq}", file=stderr)
    return 0


async def _converse(
    session: ChatSession,
    view: _ChatView,
    user: _Input,
    lines: asyncio.Queue[str | None],
    stderr: TextIO,
) -> None:
    async def output() -> None:
        async for frame in session:
            view.render(frame)

    reader = asyncio.create_task(output())
    writer = asyncio.create_task(user.run(lines))
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (writer, reader):
            task.cancel()
        await asyncio.wait({writer, reader})
    if reader in done and not reader.cancelled():
        reader.result()  # raises the session's error
        print("# the server closed the session", file=stderr)
    elif not writer.cancelled():
        writer.result()  # raises CommandError if an answer never came
