"""``talkwire.v1.ChatService``: the ``Converse`` session stream.

One stream runs three tasks in a TaskGroup: the reader (client frames), the
turn worker (one turn at a time; what arrives mid-turn is queued) and the
writer (the attachment's feed -> the wire, with a write timeout). The first of
them to end the attachment decides the final status.

The stream itself is a :class:`~talkwire.server.transport.FrameStream`: a gRPC
``Converse`` call (:meth:`ChatService.handler`) or a WebSocket of the web
gateway (``talkwire.server.web``), both served by :meth:`ChatService.serve`.

The service is an async context manager: while it runs, a watchdog ends the
streams whose client stopped reading (``server.write_timeout``) and writes the
acks clients sent (coalesced, newest per session). It owns the per-session turn
lock (one turn at a time per session on this process) and counts the turns in
flight, so a drain can wait for them (:meth:`ChatService.wait_idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from sqlalchemy.engine import Connection

from talkwire.server.auth import Authenticator
from talkwire.server.config import ServerConfig
from talkwire.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    Status,
    TalkwireError,
    UnavailableError,
    status_for,
)
from talkwire.server.frames import StoredFrame, encode_template, error_template, jsonable
from talkwire.server.hub import Attachment, SessionHub
from talkwire.server.identity import Identity
from talkwire.server.metrics import Metrics
from talkwire.server.store import SessionRecord, SessionStore
from talkwire.server.transport import UNDECODABLE, FrameStream, GrpcStream
from talkwire.server.turns import QuickReply, SubscriptionPolicy, Turn, TurnHandler
from talkwire.v1 import chat_pb2

__all__ = ["ChatService", "CommitStep", "TurnContextImpl"]

CommitStep = Callable[[Connection], list[StoredFrame]]
"""A step run inside a turn's commit (after its frames); returns the frames it appended."""

log = logging.getLogger(__name__)

SERVICE_NAME = "talkwire.v1.ChatService"
_BOOKKEEPING_WAIT = 5.0  # seconds ChatService.aclose waits for detach writes
_REFUSAL_WAIT = 2.0  # seconds a refused stream waits for its open frame before the status


class _Ended(Exception):
    """Raised inside the stream's TaskGroup to stop its tasks."""


def _quick_replies(target: Any, items: Sequence[QuickReply]) -> None:
    for qr in items:
        msg = target.add(label=qr.label, intent=qr.intent)
        if qr.parameters:
            msg.parameters.update(dict(qr.parameters))


@dataclass(slots=True)
class TurnContextImpl:
    """The :class:`~talkwire.server.turns.TurnContext` of one turn; frames commit at its end."""

    record_id: str
    _identity: Identity
    _locale: str
    _state: MutableMapping[str, Any]
    frame_id: str
    policy: SubscriptionPolicy
    store: SessionStore
    frames: list[chat_pb2.ConverseResponse] = field(default_factory=list)
    in_commit: list[CommitStep] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        return self.record_id

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def locale(self) -> str:
        return self._locale

    @property
    def state(self) -> MutableMapping[str, Any]:
        return self._state

    def commit_with(self, step: CommitStep) -> None:
        """Run ``step(conn)`` in the turn's own commit, after its frames (the frames it
        returns are delivered with the turn's)."""
        self.in_commit.append(step)

    def _frame(self) -> chat_pb2.ConverseResponse:
        frame = chat_pb2.ConverseResponse(in_reply_to=self.frame_id)
        self.frames.append(frame)
        return frame

    def reply(
        self,
        text: str,
        *,
        quick_replies: Sequence[QuickReply] = (),
        data: Mapping[str, Any] | None = None,
        intent: str = "",
    ) -> None:
        frame = self._frame()
        frame.reply.text = text
        frame.reply.intent = intent
        _quick_replies(frame.reply.quick_replies, quick_replies)
        if data:
            frame.reply.data.update(jsonable(data))

    def prompt(
        self,
        slot: str,
        text: str,
        *,
        quick_replies: Sequence[QuickReply] = (),
        intent: str = "",
    ) -> None:
        frame = self._frame()
        frame.prompt.slot = slot
        frame.prompt.text = text
        frame.prompt.intent = intent
        _quick_replies(frame.prompt.quick_replies, quick_replies)

    def error(self, code: grpc.StatusCode, message: str, *, retriable: bool = False) -> None:
        frame = self._frame()
        frame.error.code = code.name
        frame.error.message = message
        frame.error.retriable = retriable

    async def subscribe(self, key: str) -> None:
        _check_key(key)
        if not await self.policy.allowed(self._identity, key):
            raise PermissionDeniedError(f"not allowed to subscribe to {key}")
        await self.store.subscribe(self.record_id, key)
        frame = self._frame()
        frame.subscription.key = key
        frame.subscription.active = True

    async def unsubscribe(self, key: str) -> None:
        _check_key(key)
        await self.store.unsubscribe(self.record_id, key)
        frame = self._frame()
        frame.subscription.key = key
        frame.subscription.active = False


def _check_key(key: str) -> None:
    if not key or len(key) > 255:
        raise InvalidArgumentError("a subscription key must have 1 to 255 characters")


class _RateLimiter:
    """A token bucket for client frames."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.refused = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.refused = 0
            return True
        self.refused += 1
        return False


@dataclass(frozen=True, slots=True)
class _Work:
    request: chat_pb2.ConverseRequest


class ChatService:
    """The Converse handler; registered with :meth:`handler`."""

    def __init__(
        self,
        *,
        store: SessionStore,
        hub: SessionHub,
        authenticator: Authenticator,
        handler: TurnHandler,
        policy: SubscriptionPolicy,
        config: ServerConfig,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._hub = hub
        self._auth = authenticator
        self._handler = handler
        self._policy = policy
        self._config = config
        self._metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()
        self._turn_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: asyncio.TaskGroup | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Start the write watchdog (stuck writers, acks)."""
        tasks = asyncio.TaskGroup()
        await tasks.__aenter__()
        self._tasks = tasks
        self._watchdog = tasks.create_task(self._watch_writes(), name="talkwire-chat-watchdog")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def handler(self) -> grpc.GenericRpcHandler:
        """A generic handler; responses are written as pre-serialised bytes."""
        method = grpc.stream_stream_rpc_method_handler(
            self._guarded,
            request_deserializer=_decode_request,
            response_serializer=_identity_bytes,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Converse": method})

    async def _guarded(
        self,
        requests: AsyncIterator[chat_pb2.ConverseRequest],
        context: grpc.aio.ServicerContext[chat_pb2.ConverseRequest, bytes],
    ) -> None:
        await self.serve(GrpcStream(requests, context))

    async def serve(self, stream: FrameStream) -> None:
        """Serve one session stream to its end; never lets an error out as UNKNOWN."""
        try:
            await self.converse(stream)
        except Exception:
            log.exception("Converse failed")
            stream.finish(Status(grpc.StatusCode.INTERNAL, "internal error", False))

    async def converse(self, stream: FrameStream) -> None:
        requests = stream.requests()
        try:
            identity = self._admit(stream)
        except TalkwireError as exc:
            await _read_open_frame(requests)
            stream.finish(status_for(exc))
            return
        try:
            first = await self._first_frame(requests)
            record, token = await self._open(identity, first)
        except TalkwireError as exc:
            stream.finish(status_for(exc))
            return
        last_seq = first.open.last_seq
        # Attach before reading the replay: a frame committed meanwhile is then either
        # in the replay or offered to the attachment, never in neither.
        att = self._hub.attach(record.id, identity, after_seq=last_seq)
        self._metrics.sessions_attached.inc()
        try:
            await self._hub.claim(att)
            replay = await self._store.replay(record, last_seq) if first.open.session_id else []
            opened = _opened(first, record, token, replay)
            await self._run(att, record, opened, replay, requests, stream)
        except TalkwireError as exc:
            att.terminate(status_for(exc))
        finally:
            self._metrics.sessions_attached.dec()
            self._hub.detach(att)
            # The status goes out now; the bookkeeping writes follow in the background
            # (a busy store must not keep a client waiting to learn its stream ended).
            self._background(self._after_detach(att, record.id))
        stream.finish(att.status)

    def _admit(self, stream: FrameStream) -> Identity:
        """The caller's identity, from the call metadata alone (no frame read yet)."""
        if self._hub.draining:
            raise UnavailableError("server is shutting down; connect to another server")
        return self._auth.authenticate(stream.metadata())

    async def _after_detach(self, att: Attachment, session_id: str) -> None:
        try:
            if att.ack_seq > att.acked_flushed:
                await self._store.ack(session_id, att.ack_seq)
            if not self._hub.is_attached(session_id):
                await self._store.touch(session_id, replica=None)
        except TalkwireError as exc:
            log.warning("session %s: could not record the detach: %s", session_id, exc)
        except Exception:  # background bookkeeping: report it, never lose it silently
            log.exception("session %s: recording the detach failed", session_id)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def aclose(self) -> None:
        """Stop the watchdog; wait (up to 5 s) for the bookkeeping of ended streams.

        Call it after the gRPC server stopped and before the store closes. Idempotent.
        """
        tasks, self._tasks = self._tasks, None
        if tasks is not None and self._watchdog is not None:
            self._watchdog.cancel()
            await tasks.__aexit__(None, None, None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_BOOKKEEPING_WAIT):
                while self._pending:  # a handler unwinding late may add one more
                    await asyncio.gather(*self._pending, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Return once no turn is in progress on this process."""
        await self._idle.wait()

    def _session_lock(self, session_id: str) -> asyncio.Lock:
        """The session's turn lock (one turn at a time per session on this process);
        the same lock for every stream of the session while one holds it."""
        lock = self._turn_locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._turn_locks[session_id] = lock
        return lock

    async def _watch_writes(self) -> None:
        """End streams whose client stopped reading (``server.write_timeout``); write acks."""
        timeout = self._config.write_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))  # one timer for all streams
            self._hub.cut_stuck_writers(loop.time(), timeout)
            acks = self._hub.take_acks()
            if acks:
                try:
                    await self._store.ack_many(acks)
                except Exception:  # noqa: BLE001 - acks only shorten retention; never stop serving
                    log.warning("could not record %d acks; later acks cover them", len(acks))

    async def _first_frame(
        self, requests: AsyncIterator[chat_pb2.ConverseRequest]
    ) -> chat_pb2.ConverseRequest:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            raise InvalidArgumentError("the stream ended before an open frame") from None
        if first is UNDECODABLE:
            raise InvalidArgumentError("the first frame is not a valid ConverseRequest")
        if first.WhichOneof("frame") != "open":
            raise InvalidArgumentError("the first frame must be open")
        return first

    async def _open(
        self, identity: Identity, request: chat_pb2.ConverseRequest
    ) -> tuple[SessionRecord, str]:
        """Create the session, or check that this caller may resume it at ``last_seq``."""
        op = request.open
        _validate_open(op)
        if not op.session_id:
            record, token = await self._store.create_session(
                identity,
                channel=op.channel,
                locale=op.locale,
                attributes=dict(op.attributes),
                replica=self._config.replica,
            )
            self._metrics.sessions_opened.inc()
            return record, token

        def check(found: SessionRecord | None) -> SessionRecord:
            if found is None:
                raise NotFoundError(f"session {op.session_id} not found")
            if not found.active:
                raise NotFoundError(f"session {op.session_id} is closed or expired")
            if found.subject != identity.subject or not found.token_matches(op.resume_token):
                raise PermissionDeniedError("resume token or subject does not match this session")
            self._store.check_resume(found, op.last_seq)
            return found

        found = await self._store.claim_session(op.session_id, check, replica=self._config.replica)
        self._metrics.sessions_resumed.inc()
        return found, op.resume_token

    async def _run(
        self,
        att: Attachment,
        record: SessionRecord,
        opened: chat_pb2.ConverseResponse,
        replay: list[Any],
        requests: AsyncIterator[chat_pb2.ConverseRequest],
        stream: FrameStream,
    ) -> None:
        turns: asyncio.Queue[_Work | None] = asyncio.Queue(self._config.turn_queue_size)
        state: dict[str, Any] = dict(record.dialogue)
        # ``opened`` is written here, outside the TaskGroup: the first write carries the
        # response headers, and when grpc.aio has that write cancelled half-way (the
        # attachment ending at once, e.g. superseded) it never sends the final status:
        # the client would wait forever on a silent stream.
        loop = asyncio.get_running_loop()
        try:
            att.writing_since = loop.time()
            await stream.write(encode_template(opened))
            att.writing_since = None
        except TalkwireError as exc:
            att.terminate(status_for(exc))
            return
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._write_loop(att, replay, stream))
                tg.create_task(_until_ended(att))
                # The reading runs in this task, the turns in their own once the first
                # turn comes (a stream that only resumes costs two tasks, not four).
                await self._read_loop(
                    att,
                    requests,
                    turns,
                    lambda: tg.create_task(self._turn_loop(att, record, state, turns)),
                )
        except* _Ended:
            pass

    async def _write_loop(
        self,
        att: Attachment,
        replay: list[Any],
        stream: FrameStream,
    ) -> None:
        # The write watchdog ends a stream whose write is stuck longer than
        # server.write_timeout (one timer for all streams, not one per frame).
        loop = asyncio.get_running_loop()
        frames_out = self._metrics.frames_out
        try:
            async for payload in att.payloads(replay):
                att.writing_since = loop.time()
                await stream.write(payload)
                att.writing_since = None
                frames_out.inc()
        except TalkwireError as exc:
            att.terminate(status_for(exc))

    async def _read_loop(
        self,
        att: Attachment,
        requests: AsyncIterator[chat_pb2.ConverseRequest],
        turns: asyncio.Queue[_Work | None],
        start_turns: Callable[[], object],
    ) -> None:
        limiter = _RateLimiter(self._config.frames_per_second, self._config.frame_burst)
        started = False
        try:
            async for request in requests:
                await self._on_frame(att, request, turns, limiter)
                if not started and not turns.empty():
                    start_turns()
                    started = True
        except TalkwireError as exc:
            att.terminate(status_for(exc))
            return
        if started:
            await turns.put(None)  # the turn loop closes the attachment after the last turn
        else:
            att.close()

    async def _on_frame(
        self,
        att: Attachment,
        request: chat_pb2.ConverseRequest,
        turns: asyncio.Queue[_Work | None],
        limiter: _RateLimiter,
    ) -> None:
        if request is UNDECODABLE:
            raise InvalidArgumentError("a frame is not a valid ConverseRequest")
        kind = request.WhichOneof("frame")
        if kind == "ack":
            # Acks are coalesced: the write watchdog (and the detach) writes the newest.
            if request.ack.seq <= att.sent_seq:
                att.ack_seq = max(att.ack_seq, request.ack.seq)
            return
        if not limiter.allow():
            if limiter.refused > 10 * limiter.burst:
                raise ResourceExhaustedError("too many frames; slow down and resume")
            self._transient_error(att, request.id, ResourceExhaustedError("rate limit exceeded"))
            return
        if kind == "ping":
            pong = chat_pb2.ConverseResponse(in_reply_to=request.id)
            pong.pong.data = request.ping.data
            att.send_transient(encode_template(pong))
            return
        try:
            _validate_frame(request, kind, self._config.max_text_chars)
        except InvalidArgumentError as exc:
            self._transient_error(att, request.id, exc)
            return
        try:
            turns.put_nowait(_Work(request))
        except asyncio.QueueFull:
            self._transient_error(
                att, request.id, ResourceExhaustedError("too many turns in progress; wait")
            )

    def _transient_error(self, att: Attachment, frame_id: str, exc: TalkwireError) -> None:
        att.send_transient(error_template(exc, frame_id))

    async def _turn_loop(
        self,
        att: Attachment,
        record: SessionRecord,
        state: dict[str, Any],
        turns: asyncio.Queue[_Work | None],
    ) -> None:
        lock = self._session_lock(att.session_id)  # held for the stream's life
        while True:
            work = await turns.get()
            if work is None:
                att.close()
                return
            async with lock:
                self._busy += 1
                self._idle.clear()
                try:
                    await self._turn(att, record, state, work.request)
                finally:
                    self._busy -= 1
                    if not self._busy:
                        self._idle.set()

    async def _turn(
        self,
        att: Attachment,
        record: SessionRecord,
        state: dict[str, Any],
        request: chat_pb2.ConverseRequest,
    ) -> None:
        started = time.perf_counter()
        working = dict(state)
        ctx = TurnContextImpl(
            record.id, att.identity, record.locale, working, request.id, self._policy, self._store
        )
        kind = request.WhichOneof("frame")
        try:
            async with asyncio.timeout(self._config.turn_timeout):
                if kind == "subscribe":
                    await ctx.subscribe(request.subscribe.key)
                elif kind == "unsubscribe":
                    await ctx.unsubscribe(request.unsubscribe.key)
                else:
                    await self._handler.handle(_turn_of(request), ctx)
        except TimeoutError:
            ctx.frames.clear()
            ctx.error(grpc.StatusCode.DEADLINE_EXCEEDED, "the answer took too long", retriable=True)
        except Exception as exc:
            status = status_for(exc)
            if status.code == grpc.StatusCode.INTERNAL:
                log.exception("session %s: turn failed", record.id)
            ctx.error(status.code, status.message, retriable=status.retriable)
        templates = [encode_template(f) for f in ctx.frames]
        changed = working != state
        try:
            frames = await self._commit(ctx, templates, working if changed else None, request)
        except TalkwireError as exc:
            self._transient_error(att, request.id, UnavailableError(exc.message))
            return
        if changed:
            state.clear()
            state.update(working)
        self._hub.deliver({record.id: frames})
        self._metrics.turn_seconds.observe(time.perf_counter() - started)

    async def _commit(
        self,
        ctx: TurnContextImpl,
        templates: list[bytes],
        dialogue: Mapping[str, Any] | None,
        request: chat_pb2.ConverseRequest,
    ) -> list[StoredFrame]:
        turn = _turn_bytes(request)
        if not ctx.in_commit:
            return await self._store.append(ctx.record_id, templates, dialogue=dialogue, turn=turn)
        steps = list(ctx.in_commit)

        def then(conn: Connection) -> list[StoredFrame]:
            return [f for step in steps for f in step(conn)]

        frames, more = await self._store.append_then(
            ctx.record_id, templates, then, dialogue=dialogue, turn=turn
        )
        return frames + more


def _opened(
    request: chat_pb2.ConverseRequest,
    record: SessionRecord,
    token: str,
    replay: Sequence[StoredFrame],
) -> chat_pb2.ConverseResponse:
    resumed = bool(request.open.session_id)
    head = replay[-1].seq if replay else max(record.head_seq, request.open.last_seq)
    opened = chat_pb2.ConverseResponse(in_reply_to=request.id)
    opened.opened.CopyFrom(
        chat_pb2.Opened(
            session_id=record.id,
            resume_token=token,
            resumed=resumed,
            replayed=len(replay),
            head_seq=head if resumed else 0,
        )
    )
    return opened


async def _read_open_frame(requests: AsyncIterator[chat_pb2.ConverseRequest]) -> None:
    """Before refusing a stream, take in the open frame its client is already writing.

    Every client writes its open frame the moment the call starts. A status sent
    before that frame arrived closes the stream under the client's write, and
    grpc-python then reports ``INTERNAL "Internal error from Core"`` in place of
    the status we sent (``UNAUTHENTICATED`` for most of 300 opens started at
    once). Once the frame has arrived here the client's write has completed, and
    the status reaches it as sent. A caller that writes nothing gets its status
    after ``_REFUSAL_WAIT`` seconds.
    """
    with contextlib.suppress(StopAsyncIteration, TimeoutError, TalkwireError):
        async with asyncio.timeout(_REFUSAL_WAIT):
            await anext(requests)


async def _until_ended(att: Attachment) -> None:
    await att.ended.wait()
    raise _Ended


def _identity_bytes(payload: bytes) -> bytes:
    return payload


def _decode_request(data: bytes) -> chat_pb2.ConverseRequest:
    try:
        return chat_pb2.ConverseRequest.FromString(data)
    except DecodeError:
        return UNDECODABLE


def _turn_bytes(request: chat_pb2.ConverseRequest) -> bytes | None:
    """The user frame recorded as ``turn.received`` (messages and actions only)."""
    return request.SerializeToString() if request.WhichOneof("frame") in _TURNS else None


_TURNS = frozenset({"message", "action"})


def _turn_of(request: chat_pb2.ConverseRequest) -> Turn:
    if request.WhichOneof("frame") == "message":
        return Turn(frame_id=request.id, text=request.message.text)
    params = json_format.MessageToDict(request.action.parameters)
    return Turn(frame_id=request.id, intent=request.action.intent, parameters=params)


def _validate_open(op: chat_pb2.Open) -> None:
    if len(op.attributes) > 64 or any(
        len(k) > 128 or len(v) > 1024 for k, v in op.attributes.items()
    ):
        raise InvalidArgumentError("open.attributes: at most 64 entries of 128/1024 characters")
    if len(op.channel) > 64 or len(op.locale) > 35:
        raise InvalidArgumentError("open.channel or open.locale too long")
    if op.session_id and not op.resume_token:
        raise InvalidArgumentError("resuming needs the resume_token")
    if len(op.session_id) > 64:
        raise InvalidArgumentError("open.session_id too long")


def _validate_frame(request: chat_pb2.ConverseRequest, kind: str | None, max_chars: int) -> None:
    if len(request.id) > 128:
        raise InvalidArgumentError("frame id longer than 128 characters")
    if kind is None:
        raise InvalidArgumentError("empty or unknown frame")
    if kind == "open":
        raise InvalidArgumentError("the session is already open")
    if kind == "message":
        text = request.message.text
        if not text.strip():
            raise InvalidArgumentError("message.text is empty")
        if len(text) > max_chars:
            raise InvalidArgumentError(f"message.text longer than {max_chars} characters")
    if kind == "action" and not request.action.intent:
        raise InvalidArgumentError("action.intent is empty")
    if kind in ("subscribe", "unsubscribe"):
        _check_key(getattr(request, kind).key)
