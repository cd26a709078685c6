"""The agent desk: :class:`AgentClient` for ``talkwire.v1.AgentService`` and ``talkwire agent``.

Usage::

    async with AgentClient("127.0.0.1:50051", token=agent_token) as desk:
        waiting = await desk.list_queue()
        await desk.accept(waiting[0].session_id)
        async with desk.attend(waiting[0].session_id) as conversation:
            async for frame in conversation:        # replay, then live frames
                if frame.reply.author.role == "user":
                    await conversation.say("Let me check that for you.")
            ...
            await conversation.release()

Every failed RPC raises :class:`~talkwire.clients.errors.RpcError`. A
conversation remembers the newest seq it yielded (``last_seq``), drops frames
at or below it, and reopens after ``UNAVAILABLE`` (a replica went away) from
there, like the chat client does.

``talkwire agent`` is a terminal desk over it. Lines typed (or piped) are:
``/queue`` (list the queues this agent may serve, with each session's context),
``/accept N`` (the N-th listed session, or a session id; the conversation is
printed from its start), plain text (sent to the user), ``/transfer QUEUE
[reason]``, ``/release [reason]`` (back to the bot), ``/close [reason]`` and
``/quit``. With a pipe, each line waits for its effect (a listing, the replay,
the echo of a message, the end of the conversation) before the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self, TextIO

import grpc
import grpc.aio
from google.protobuf import json_format

from talkwire.clients.channel import ServiceClient
from talkwire.clients.errors import RpcError, SessionClosed, TalkwireError, rpc_error_from
from talkwire.v1 import agent_pb2, agent_pb2_grpc, chat_pb2

__all__ = ["AgentClient", "Conversation", "add_agent_command", "agent_command", "describe_frame"]

_RESUME_ATTEMPTS = 5


class AgentClient(ServiceClient["agent_pb2_grpc.AgentServiceAsyncStub"]):
    """Typed wrapper over ``AgentService``; an async context manager owning its channel."""

    _service = "AgentClient"

    def _make_stub(self, channel: grpc.aio.Channel) -> agent_pb2_grpc.AgentServiceAsyncStub:
        return agent_pb2_grpc.AgentServiceStub(channel)

    def stub(self) -> agent_pb2_grpc.AgentServiceAsyncStub:
        """The AgentService stub (opens the channel on first use)."""
        return self._get_stub()

    async def _unary(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self.stub(), method)(
                request, metadata=self.metadata, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None

    async def list_queue(self, queue: str = "") -> list[agent_pb2.QueuedSession]:
        """The waiting sessions of the queues this agent may serve, oldest first."""
        response = await self._unary("ListQueue", agent_pb2.ListQueueRequest(queue=queue))
        return list(response.sessions)

    async def accept(self, session_id: str) -> agent_pb2.QueuedSession:
        """Take a queued session (``FAILED_PRECONDITION`` if someone else was faster)."""
        response = await self._unary("Accept", agent_pb2.AcceptRequest(session_id=session_id))
        session: agent_pb2.QueuedSession = response.session
        return session

    async def transfer(
        self, session_id: str, queue: str, reason: str = ""
    ) -> agent_pb2.QueuedSession:
        request = agent_pb2.TransferRequest(session_id=session_id, queue=queue, reason=reason)
        session: agent_pb2.QueuedSession = (await self._unary("Transfer", request)).session
        return session

    async def request_handoff(
        self, session_id: str, queue: str = "", reason: str = ""
    ) -> agent_pb2.QueuedSession:
        request = agent_pb2.RequestHandoffRequest(session_id=session_id, queue=queue, reason=reason)
        session: agent_pb2.QueuedSession = (await self._unary("RequestHandoff", request)).session
        return session

    def attend(self, session_id: str, *, last_seq: int = 0) -> Conversation:
        """The conversation of an accepted session (replay after ``last_seq``, then live)."""
        return Conversation(self, session_id, last_seq=last_seq)


class Conversation:
    """One accepted session's Attend stream; async-iterate it for the session's frames."""

    def __init__(self, client: AgentClient, session_id: str, *, last_seq: int = 0) -> None:
        self._client = client
        self.session_id = session_id
        self.last_seq = last_seq
        self.attended: agent_pb2.Attended | None = None
        self.errors: asyncio.Queue[chat_pb2.TurnError] = asyncio.Queue()
        self._call: Any = None
        self._ids = 0
        self._done = False

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Leave the stream (the session stays accepted; attend again to resume)."""
        self._done = True
        if self._call is not None:
            self._call.cancel()

    def next_id(self, prefix: str = "a") -> str:
        self._ids += 1
        return f"{prefix}{self._ids}"

    async def _open(self) -> None:
        self._call = self._client.stub().Attend(metadata=self._client.metadata)
        opening = agent_pb2.AttendRequest(
            id="open",
            open=agent_pb2.AttendOpen(session_id=self.session_id, last_seq=self.last_seq),
        )
        try:
            await self._call.write(opening)
            first = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None
        if first is grpc.aio.EOF:
            code = await self._call.code()
            raise RpcError(code, str(await self._call.details() or ""))
        self.attended = first.attended

    async def _send(self, request: agent_pb2.AttendRequest) -> str:
        if self._call is None:
            raise SessionClosed("the conversation is not open")
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None
        return request.id

    async def say(
        self,
        text: str,
        *,
        quick_replies: Sequence[chat_pb2.QuickReply] = (),
        frame_id: str = "",
    ) -> str:
        """Send text (and buttons) to the user; returns the frame id its reply answers."""
        message = agent_pb2.AgentMessage(text=text, quick_replies=list(quick_replies))
        request = agent_pb2.AttendRequest(id=frame_id or self.next_id(), message=message)
        return await self._send(request)

    async def ack(self, seq: int) -> None:
        await self._send(agent_pb2.AttendRequest(ack=chat_pb2.Ack(seq=seq)))

    async def release(self, reason: str = "") -> str:
        """Hand the session back to the bot; the stream then ends."""
        release = agent_pb2.ReleaseSession(reason=reason)
        return await self._send(agent_pb2.AttendRequest(id=self.next_id("r"), release=release))

    async def close(self, reason: str = "") -> str:
        """End the handoff and close the session; the stream then ends."""
        close = agent_pb2.CloseConversation(reason=reason)
        return await self._send(agent_pb2.AttendRequest(id=self.next_id("c"), close=close))

    def __aiter__(self) -> AsyncIterator[chat_pb2.ConverseResponse]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[chat_pb2.ConverseResponse]:
        attempts = 0
        while not self._done:
            try:
                while (response := await self._call.read()) is not grpc.aio.EOF:
                    attempts = 0
                    which = response.WhichOneof("frame")
                    if which == "error":
                        self.errors.put_nowait(response.error)
                    elif which == "session_frame":
                        frame = response.session_frame
                        if frame.seq and frame.seq <= self.last_seq:
                            continue  # seen before a resume
                        self.last_seq = max(self.last_seq, frame.seq)
                        yield frame
                return  # ended with OK: released, closed or transferred
            except grpc.aio.AioRpcError as exc:
                if self._done or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    if self._done:
                        return
                    raise rpc_error_from(exc) from None
                attempts += 1
                if attempts > _RESUME_ATTEMPTS:
                    raise rpc_error_from(exc) from None
                await asyncio.sleep(min(2.0, 0.2 * 2**attempts))  # backoff before the resume
                with contextlib.suppress(RpcError):
                    await self._open()


def describe_frame(frame: chat_pb2.ConverseResponse, *, with_seq: bool = True) -> str:
    """One line for a session frame, as the desk (and ``talkwire chat``) prints it."""
    which = frame.WhichOneof("frame")
    head = f"#{frame.seq} " if with_seq else ""
    if which == "reply":
        author = frame.reply.author
        role = author.role or "bot"
        who = f"agent {author.display_name}" if role == "agent" else role
        return f"{head}{who}: {frame.reply.text}"
    if which == "handoff":
        h = frame.handoff
        state = chat_pb2.HandoffState.Name(h.state).removeprefix("HANDOFF_STATE_").lower()
        extra = {
            "queued": f"in {h.queue} (position {h.position})",
            "accepted": f"by {h.agent_display_name}",
            "ended": "and closed" if h.closed else "back to the bot",
        }.get(state, "")
        reason = f" ({h.reason})" if h.reason else ""
        return f"{head}handoff {state} {extra}{reason}".rstrip()
    if which == "update":
        return f"{head}update: {frame.update.text}"
    if which == "prompt":
        return f"{head}bot asks: {frame.prompt.text}"
    if which == "error":
        return f"{head}error {frame.error.code}: {frame.error.message}"
    return f"{head}{which}"


def _describe_session(index: int, s: agent_pb2.QueuedSession, now: float) -> list[str]:
    waited = max(0, int(now - s.waiting_since.ToNanoseconds() / 1e9))
    claims = json_format.MessageToDict(s.claims)
    lines = [
        f"[{index}] {s.session_id} queue={s.queue} position={s.position} waiting={waited}s "
        f"subject={s.subject} claims={claims} reason={s.reason!r}"
    ]
    slots = json_format.MessageToDict(s.context.slots)
    results = json_format.MessageToDict(s.context.results)
    if slots or results:
        lines.append(f"    slots={slots} results={results}")
    lines += [f"    {t.role}: {t.text}" for t in s.context.turns]
    return lines


# -- the terminal desk ---------------------------------------------------------


class _Desk:
    """``talkwire agent``: reads commands, prints the conversation (see the module docstring)."""

    def __init__(self, client: AgentClient, out: TextIO, *, queue: str, wait: float) -> None:
        self.client = client
        self.out = out
        self.queue = queue
        self.wait = wait
        self.listed: list[agent_pb2.QueuedSession] = []
        self.conversation: Conversation | None = None
        self.printer: asyncio.Task[None] | None = None
        self.echoes: dict[str, asyncio.Event] = {}

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self, lines: asyncio.Queue[str | None]) -> int:
        try:
            while (line := await lines.get()) is not None:
                line = line.strip()
                if not line:
                    continue
                if line in ("/quit", "/exit"):
                    break
                try:
                    await self.command(line)
                except RpcError as exc:
                    self.print(f"! {exc.code.name}: {exc.details}")
        finally:
            if self.conversation is not None:
                self.conversation.cancel()
            if self.printer is not None:
                self.printer.cancel()
                with contextlib.suppress(asyncio.CancelledError, TalkwireError):
                    await self.printer
        return 0

    async def command(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "/queue":
            self.listed = await self.client.list_queue(self.queue)
            now = time.time()
            if not self.listed:
                self.print("(no one is waiting)")
            for i, s in enumerate(self.listed, start=1):
                for text in _describe_session(i, s, now):
                    self.print(text)
        elif word == "/accept":
            await self.accept(rest.strip())
        elif word in ("/release", "/close", "/transfer"):
            await self.end(word, rest.strip())
        elif word.startswith("/"):
            self.print(f"! unknown command {word} (/queue /accept /release /close /transfer /quit)")
        else:
            await self.say(line)

    async def accept(self, which: str) -> None:
        if which.isdigit() and 0 < int(which) <= len(self.listed):
            session_id = self.listed[int(which) - 1].session_id
        elif which:
            session_id = which
        elif self.listed:
            session_id = self.listed[0].session_id
        else:
            self.print("! /accept N (after /queue) or /accept SESSION_ID")
            return
        session = await self.client.accept(session_id)
        self.print(f"# accepted {session.session_id} from {session.queue}")
        conversation = self.client.attend(session_id)
        await conversation.__aenter__()
        self.conversation = conversation
        attended = conversation.attended
        replayed = attended.replayed if attended is not None else 0
        self.print(f"# attending {session_id} (replayed {replayed})")
        ready = asyncio.Event()
        self.printer = asyncio.create_task(self.print_frames(conversation, replayed, ready))
        async with asyncio.timeout(self.wait):
            await ready.wait()

    async def print_frames(
        self, conversation: Conversation, replayed: int, ready: asyncio.Event
    ) -> None:
        count = 0
        if not replayed:
            ready.set()
        try:
            async for frame in conversation:
                self.print(describe_frame(frame))
                count += 1
                if count >= replayed:
                    ready.set()
                waiter = self.echoes.pop(frame.in_reply_to, None)
                if waiter is not None:
                    waiter.set()
                if count % 20 == 0:
                    await conversation.ack(frame.seq)
            self.print(f"# conversation {conversation.session_id} ended")
        except RpcError as exc:
            self.print(f"! conversation ended: {exc.code.name}: {exc.details}")
        finally:
            ready.set()
            for waiter in self.echoes.values():
                waiter.set()

    async def say(self, text: str) -> None:
        if self.conversation is None:
            self.print("! not attending a session (/queue, then /accept N)")
            return
        echoed = asyncio.Event()
        frame_id = self.conversation.next_id()
        self.echoes[frame_id] = echoed
        await self.conversation.say(text, frame_id=frame_id)
        echo = asyncio.ensure_future(echoed.wait())
        error = asyncio.ensure_future(self.conversation.errors.get())
        try:
            await asyncio.wait((echo, error), timeout=self.wait, return_when="FIRST_COMPLETED")
            if error.done():
                refused = error.result()
                self.print(f"! {refused.code}: {refused.message}")
        finally:
            echo.cancel()
            error.cancel()
            self.echoes.pop(frame_id, None)

    async def end(self, word: str, rest: str) -> None:
        conversation = self.conversation
        if conversation is None:
            self.print("! not attending a session")
            return
        if word == "/transfer":
            queue, _, reason = rest.partition(" ")
            if not queue:
                self.print("! /transfer QUEUE [reason]")
                return
            session = await self.client.transfer(conversation.session_id, queue, reason)
            self.print(f"# transferred to {session.queue} (position {session.position})")
        elif word == "/release":
            await conversation.release(rest)
        else:
            await conversation.close(rest)
        if self.printer is not None:
            async with asyncio.timeout(self.wait):
                with contextlib.suppress(asyncio.CancelledError):
                    await self.printer
        self.conversation = None
        self.printer = None


def _line_reader(stream: TextIO) -> asyncio.Queue[str | None]:
    """Lines of ``stream`` from a daemon thread (the loop keeps printing); ``None``: EOF."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        for line in stream:
            put(line)
        put(None)

    threading.Thread(target=pump, daemon=True, name="talkwire-agent-stdin").start()
    return queue


async def agent_command(args: argparse.Namespace) -> int:
    """Run the desk on stdin/stdout; exit 0 at EOF or /quit, 1 with one error line."""
    try:
        async with AgentClient(args.target, token=args.token) as client:
            desk = _Desk(client, sys.stdout, queue=args.queue, wait=args.answer_timeout)
            return await desk.run(_line_reader(sys.stdin))
    except (TalkwireError, TimeoutError, OSError) as exc:
        detail = f"{exc.code.name}: {exc.details}" if isinstance(exc, RpcError) else str(exc)
        print(f"talkwire: error: {detail or type(exc).__name__}", file=sys.stderr)
        return 1


def add_agent_command(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``talkwire agent`` (the terminal desk)."""
    agent = subparsers.add_parser(
        "agent",
        help="the agent desk: list the queue, accept a session, talk, release",
        description="Commands: /queue, /accept N|SESSION_ID, text (to the user), "
        "/transfer QUEUE [reason], /release [reason], /close [reason], /quit.",
        epilog="examples:\n  talkwire agent --token ann-token\n"
        "  talkwire agent --queue billing\n"
        "  printf '/queue\\n/accept 1\\nhello\\n/release\\n' | talkwire agent",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    agent.add_argument(
        "--target",
        default=os.environ.get("TALKWIRE_TARGET", "127.0.0.1:50051"),
        help="server address host:port (env TALKWIRE_TARGET; default %(default)s)",
    )
    agent.add_argument(
        "--token",
        default=os.environ.get("TALKWIRE_TOKEN"),
        help="bearer token (env TALKWIRE_TOKEN)",
    )
    agent.add_argument("--queue", default="", help="only this queue (default: every queue)")
    agent.add_argument(
        "--answer-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for each command's effect (default %(default)s)",
    )

    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(agent_command(args))
        except KeyboardInterrupt:
            return 130

    agent.set_defaults(func=run, handler=run)
