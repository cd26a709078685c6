"""Async client for ``talkwire.v1.ChatService.Converse`` with resume, dedup, ack and reconnect.

Usage::

    async with ChatClient("127.0.0.1:50051", token="...") as client:
        async with await client.open(channel="web", locale="en") as session:
            await session.send("where is my order 1001?")
            async for frame in session:
                print(frame)

Semantics (what this library guarantees and what it chose):

* **Durable frames exactly once, in order.** Every server frame with ``seq > 0``
  is yielded once: frames with ``seq <=`` the highest seq already received are
  dropped (they are replays after a resume). A frame that skips a seq ends the
  session with :class:`~talkwire.clients.errors.ProtocolError` -- a gap is
  never silent. Transient frames (``seq == 0``: pong, stream-level errors) are
  yielded as they come; ``opened`` frames are consumed by the library.
* **Automatic reconnect.** When the stream ends with a retriable status
  (``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``, ``DEADLINE_EXCEEDED``, ``INTERNAL``,
  ``DATA_LOSS``, and ``CANCELLED`` not caused by us -- a dropped connection or a
  restarted server shows up as one of these) and the server's
  ``talkwire-retriable`` trailer does not say ``0``, the session re-attaches with ``open{session_id,
  resume_token, last_seq=<highest seq received>}`` after an exponential backoff
  with full jitter (:class:`~talkwire.clients.reconnect.ReconnectPolicy`). The
  server replays what is missing; dedup makes the replay invisible. Other
  statuses end iteration with a typed
  :class:`~talkwire.clients.errors.SessionEnded`; an authentication failure
  (``UNAUTHENTICATED`` -> ``Unauthenticated``, ``PERMISSION_DENIED`` ->
  ``SessionPermissionDenied``) always does, at once, whatever the policy says.
  Observe reconnects with ``session.reconnects`` and the
  ``on_connection_event`` hook. The very first ``open()``/``resume()`` is not
  retried: it fails fast.
* **Automatic ack.** The library acks the highest seq *delivered to you* (yielded
  by the iterator), not merely received: frames still buffered in the client
  are not acked, so a process that dies with a full buffer can resume from
  ``session.last_seq`` and lose nothing. Acks are batched: after
  ``ack_every`` delivered frames, or ``ack_interval`` seconds after the first
  unacked delivery, and once more on ``aclose()``.
* **Frames you send.** ``send``/``action``/``subscribe``/``unsubscribe``/``ping``
  put the frame in an outbound queue and return its client frame ``id`` (echoed
  as ``in_reply_to`` on the answers). While connected the frame is written at
  once; while disconnected it waits and is written right after the resume, in
  order. A frame whose write the transport accepted is never written again: if
  the stream breaks just after, the server may or may not have processed it
  (at-most-once for frames sent while connected; look for ``in_reply_to`` in the
  replayed frames to tell). Frames still queued when the session ends or is
  closed are dropped.
* **Back-pressure.** At most ``max_buffered`` received frames wait for you; past
  that the reader stops reading, the server eventually ends the stream with
  ``RESOURCE_EXHAUSTED`` and the session resumes once you catch up.
* **Timeouts.** Each attach (the first ``open()``/``resume()`` and every
  automatic resume) waits at most ``open_timeout`` seconds (default 30) for
  the server's ``opened``; past that it counts as ``DEADLINE_EXCEEDED``
  (retried like any retriable status). A dead peer mid-stream is noticed by TCP
  or by the keepalive pings of :data:`DEFAULT_CHANNEL_OPTIONS`.
* **Tasks.** Each session owns one background task (reader + reconnect loop),
  which runs one writer task per attachment; ``aclose()`` cancels them and
  waits for them. ``CancelledError`` is never swallowed. However that task
  ends, iteration ends with the reason: a consumer never waits on a dead task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import inspect
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeAlias

import grpc
import grpc.aio

from talkwire.clients.channel import call_metadata, open_channel
from talkwire.clients.convert import to_struct
from talkwire.clients.dedup import SeqFilter, Verdict
from talkwire.clients.errors import (
    ProtocolError,
    ReconnectExhausted,
    SessionClosed,
    SessionEnded,
    TalkwireError,
    session_ended_from,
)
from talkwire.clients.reconnect import (
    RETRIABLE_CODES,
    Backoff,
    ConnectionEvent,
    ConnectionEventKind,
    ConnectionHook,
    ReconnectPolicy,
    retriable_hint,
)
from talkwire.v1 import chat_pb2, chat_pb2_grpc

# RETRIABLE_CODES, ConnectionEvent(Kind) and ReconnectPolicy live in
# talkwire.clients.reconnect; they stay importable from here.
__all__ = [
    "DEFAULT_CHANNEL_OPTIONS",
    "RETRIABLE_CODES",
    "ChatClient",
    "ChatSession",
    "ConnectionEvent",
    "ConnectionEventKind",
    "ReconnectPolicy",
    "SessionState",
]

logger = logging.getLogger("talkwire.clients.chat")

#: Channel options used unless overridden by ``options=``. Keepalive pings every
#: 5 minutes (the gRPC server default minimum, so servers do not answer GOAWAY
#: "too many pings"), and a short channel reconnect backoff so a restarted
#: server is found again quickly.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)

_Call: TypeAlias = grpc.aio.StreamStreamCall[chat_pb2.ConverseRequest, chat_pb2.ConverseResponse]


class SessionState(enum.StrEnum):
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True, slots=True)
class _End:
    error: TalkwireError


@dataclasses.dataclass(frozen=True, slots=True)
class _Drop:
    """How an attachment's stream ended, when the session might resume after it."""

    code: grpc.StatusCode
    details: str
    retriable: bool | None = None  # the server's talkwire-retriable trailer, if any

    @classmethod
    def of(cls, exc: grpc.aio.AioRpcError) -> _Drop:
        code = exc.code()
        return cls(
            code if code is not None else grpc.StatusCode.UNKNOWN,
            exc.details() or "",
            retriable_hint(exc.trailing_metadata()),
        )

    def ended(self) -> SessionEnded:
        """The typed error of a session that ends here."""
        return session_ended_from(self.code, self.details)


def _new_id() -> str:
    return uuid.uuid4().hex


class ChatClient:
    """A connection to a talkwire server for ``Converse`` sessions.

    ``token`` is sent as ``authorization: Bearer <token>`` metadata on every call.
    With ``credentials`` the channel uses TLS (or mTLS), otherwise plaintext.
    ``options`` are gRPC channel options merged over
    :data:`DEFAULT_CHANNEL_OPTIONS`. The remaining keyword arguments are the
    defaults of the sessions it opens (see :class:`ChatSession`).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        reconnect: ReconnectPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        ack_every: int = 16,
        ack_interval: float = 0.5,
        auto_ack: bool = True,
        max_buffered: int = 1024,
        close_timeout: float = 1.0,
        open_timeout: float | None = 30.0,
        on_connection_event: ConnectionHook | None = None,
    ) -> None:
        self.target = target
        self._credentials = credentials
        merged = dict(DEFAULT_CHANNEL_OPTIONS)
        merged.update(dict(options))
        self._options = list(merged.items())
        self._metadata = call_metadata(token, metadata)
        self.reconnect = reconnect if reconnect is not None else ReconnectPolicy()
        if ack_every < 1 or ack_interval < 0 or max_buffered < 1:
            raise ValueError("ack_every and max_buffered must be >= 1, ack_interval >= 0")
        if open_timeout is not None and open_timeout <= 0:
            raise ValueError("open_timeout must be > 0 (or None: wait forever)")
        self.open_timeout = open_timeout
        self.ack_every = ack_every
        self.ack_interval = ack_interval
        self.auto_ack = auto_ack
        self.max_buffered = max_buffered
        self.close_timeout = close_timeout
        self.on_connection_event = on_connection_event
        self._channel: grpc.aio.Channel | None = None
        self._stub: chat_pb2_grpc.ChatServiceAsyncStub | None = None
        self._sessions: set[ChatSession] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        self._get_stub()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _get_stub(self) -> chat_pb2_grpc.ChatServiceAsyncStub:
        if self._closed:
            raise SessionClosed("the ChatClient is closed")
        if self._stub is None:
            self._channel = open_channel(self.target, self._credentials, self._options)
            self._stub = chat_pb2_grpc.ChatServiceStub(self._channel)
        assert self._stub is not None  # noqa: S101 - for the type checker
        return self._stub

    async def open(
        self,
        *,
        channel: str = "",
        locale: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> ChatSession:
        """Open a new session; returns once the server answered ``opened``."""
        request = chat_pb2.Open(channel=channel, locale=locale, attributes=dict(attributes or {}))
        session = ChatSession(self, last_seq=0)
        await session._start(request)
        return session

    async def resume(self, session_id: str, resume_token: str, last_seq: int = 0) -> ChatSession:
        """Resume an existing session; frames with ``seq > last_seq`` are replayed."""
        request = chat_pb2.Open(session_id=session_id, resume_token=resume_token, last_seq=last_seq)
        session = ChatSession(self, last_seq=last_seq)
        await session._start(request)
        return session

    async def aclose(self) -> None:
        """Close every open session (acking what was delivered), then the channel."""
        if self._closed:
            return
        self._closed = True
        try:
            for session in list(self._sessions):
                await session.aclose()
        finally:
            if self._channel is not None:
                await self._channel.close()


class ChatSession:
    """One ``Converse`` session; create with :meth:`ChatClient.open` / :meth:`ChatClient.resume`.

    Attributes: ``session_id``, ``resume_token`` (persist both, plus
    ``last_seq``, to resume after a restart of your process), ``reconnects``
    (successful automatic resumes), ``duplicates`` (replayed frames dropped).
    """

    def __init__(self, client: ChatClient, *, last_seq: int) -> None:
        self._client = client
        self._stub = client._get_stub()
        self.session_id = ""
        self.resume_token = ""
        self.reconnects = 0
        self.duplicates = 0
        self.replayed = 0
        self._seq = SeqFilter(received=last_seq)
        self._delivered_seq = last_seq
        self._ack_enqueued = last_seq
        self._ack_deadline: float | None = None
        self._inbox: asyncio.Queue[chat_pb2.ConverseResponse | _End] = asyncio.Queue()
        self._space = asyncio.Event()
        self._outbound: collections.deque[chat_pb2.ConverseRequest] = collections.deque()
        self._outbound_ready = asyncio.Event()
        self._call: _Call | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._error: TalkwireError | None = None
        self._state = SessionState.CONNECTED

    # -- public properties -------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The highest durable seq delivered to you (what to resume from later)."""
        return self._delivered_seq

    @property
    def _received_seq(self) -> int:
        return self._seq.received

    @property
    def received_seq(self) -> int:
        """The highest durable seq received (delivered or still buffered)."""
        return self._received_seq

    @property
    def acked_seq(self) -> int:
        """The highest seq an ack was queued for."""
        return self._ack_enqueued

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def error(self) -> TalkwireError | None:
        """Why the session ended (``None`` while it is alive)."""
        return self._error

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start(self, request: chat_pb2.Open) -> None:
        try:
            call, opened = await self._connect(request)
        except grpc.aio.AioRpcError as exc:
            raise _Drop.of(exc).ended() from None
        self._on_opened(opened)
        self._client._sessions.add(self)
        self._task = asyncio.create_task(
            self._run(call), name=f"talkwire-session-{self.session_id}"
        )

    async def aclose(self) -> None:
        """Close the session: flush the ack of what was delivered, half-close, stop tasks.

        Idempotent. Waits up to ``close_timeout`` for the server to end the stream.
        """
        if self._closing:
            return
        self._closing = True
        self._client._sessions.discard(self)
        task = self._task
        try:
            if task is not None and not task.done() and self._call is not None:
                self._enqueue_ack()
                self._outbound_ready.set()  # the writer drains, then half-closes
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._client.close_timeout):
                        await asyncio.wait({task})
        finally:
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
                if not task.cancelled() and task.exception() is not None:
                    logger.debug("session task failed", exc_info=task.exception())
            if self._call is not None:
                self._call.cancel()
            self._finish(SessionClosed("session closed"))

    # -- sending -------------------------------------------------------------

    def _enqueue(self, request: chat_pb2.ConverseRequest) -> str:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise SessionClosed("session closed")
        if not request.id:
            request.id = _new_id()
        self._outbound.append(request)
        self._outbound_ready.set()
        return request.id

    async def send(self, text: str) -> str:
        """Send a user message; returns its frame id (the answers' ``in_reply_to``)."""
        return self._enqueue(chat_pb2.ConverseRequest(message=chat_pb2.UserMessage(text=text)))

    async def action(
        self, intent: str, parameters: Mapping[str, Any] | None = None, label: str = ""
    ) -> str:
        """Send a structured action (button / quick reply); returns its frame id."""
        frame = chat_pb2.UserAction(intent=intent, parameters=to_struct(parameters), label=label)
        return self._enqueue(chat_pb2.ConverseRequest(action=frame))

    async def subscribe(self, key: str) -> str:
        """Subscribe the session to a key such as ``order:1001``; returns the frame id."""
        return self._enqueue(chat_pb2.ConverseRequest(subscribe=chat_pb2.Subscribe(key=key)))

    async def unsubscribe(self, key: str) -> str:
        """Drop a subscription; returns the frame id."""
        return self._enqueue(chat_pb2.ConverseRequest(unsubscribe=chat_pb2.Unsubscribe(key=key)))

    async def ping(self, data: str = "") -> str:
        """Send a ping (answered by a transient ``pong``); returns the frame id."""
        return self._enqueue(chat_pb2.ConverseRequest(ping=chat_pb2.Ping(data=data)))

    async def ack(self, seq: int | None = None) -> None:
        """Ack now, up to ``seq`` (default: everything delivered). Needed only with auto_ack off."""
        target = self._delivered_seq if seq is None else min(seq, self._delivered_seq)
        if target > self._ack_enqueued:
            self._ack_enqueued = target
            self._ack_deadline = None
            self._enqueue(chat_pb2.ConverseRequest(ack=chat_pb2.Ack(seq=target)))

    def _enqueue_ack(self) -> None:
        self._ack_deadline = None
        if self._delivered_seq > self._ack_enqueued and self._error is None:
            self._ack_enqueued = self._delivered_seq
            self._outbound.append(
                chat_pb2.ConverseRequest(ack=chat_pb2.Ack(seq=self._ack_enqueued))
            )
            self._outbound_ready.set()

    # -- receiving -----------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> chat_pb2.ConverseResponse:
        if self._closing:
            raise StopAsyncIteration
        item = await self._inbox.get()
        self._space.set()
        if isinstance(item, _End):
            self._inbox.put_nowait(item)  # every later call ends the same way
            if isinstance(item.error, SessionClosed):
                raise StopAsyncIteration
            raise item.error
        if item.seq:
            self._delivered(item.seq)
        return item

    def _delivered(self, seq: int) -> None:
        self._delivered_seq = seq
        if not self._client.auto_ack or self._closing:
            return
        if seq - self._ack_enqueued >= self._client.ack_every:
            self._enqueue_ack()
        elif self._ack_deadline is None:
            self._ack_deadline = asyncio.get_running_loop().time() + self._client.ack_interval
            self._outbound_ready.set()  # let the writer arm its timer

    async def next_frame(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - the documented API
    ) -> chat_pb2.ConverseResponse:
        """The next frame. Raises ``TimeoutError``, the session's error, or ``SessionClosed``."""
        async with asyncio.timeout(timeout):
            try:
                return await self.__anext__()
            except StopAsyncIteration:
                raise SessionClosed("session closed") from None

    async def wait_for(
        self,
        predicate: Callable[[chat_pb2.ConverseResponse], bool],
        timeout: float | None = None,  # noqa: ASYNC109 - the documented API
    ) -> chat_pb2.ConverseResponse:
        """Consume frames until one satisfies ``predicate`` and return it.

        Frames that do not match are consumed (and acked) and dropped.
        """
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.next_frame()
                if predicate(frame):
                    return frame

    # -- the connection machinery ----------------------------------------------

    async def _connect(self, request: chat_pb2.Open) -> tuple[_Call, chat_pb2.Opened]:
        call = self._stub.Converse(metadata=self._client._metadata)
        try:
            async with asyncio.timeout(self._client.open_timeout):
                await call.write(chat_pb2.ConverseRequest(id=_new_id(), open=request))
                first = await call.read()
        except TimeoutError:
            call.cancel()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                f"no opened frame within open_timeout ({self._client.open_timeout:g}s)",
            ) from None
        except asyncio.InvalidStateError:
            # the call ended before our open went out: read the status
            call.cancel()
            code = await call.code()
            raise grpc.aio.AioRpcError(
                code, grpc.aio.Metadata(), grpc.aio.Metadata(), await call.details()
            ) from None
        except BaseException:
            call.cancel()
            raise
        if (
            not isinstance(first, chat_pb2.ConverseResponse)
            or first.WhichOneof("frame") != "opened"
        ):
            call.cancel()
            raise ProtocolError("the server did not answer open with opened")
        return call, first.opened

    def _on_opened(self, opened: chat_pb2.Opened) -> None:
        if opened.session_id:
            self.session_id = opened.session_id
            self._seq.session_id = opened.session_id
        if opened.resume_token:
            self.resume_token = opened.resume_token
        self.replayed = opened.replayed
        self._state = SessionState.CONNECTED

    def _resume_request(self) -> chat_pb2.Open:
        return chat_pb2.Open(
            session_id=self.session_id,
            resume_token=self.resume_token,
            last_seq=self._received_seq,
        )

    def _finish(self, error: TalkwireError) -> None:
        if self._error is None:
            self._error = error
            self._state = SessionState.CLOSED
            self._inbox.put_nowait(_End(error))

    async def _run(self, call: _Call) -> None:
        """The session's background task; however it ends, the consumer learns why."""
        try:
            await self._attachments(call)
        except Exception as exc:  # a bug or an unexpected gRPC error: end with its cause
            logger.exception("session %s: the stream task failed", self.session_id)
            self._finish(
                SessionEnded(grpc.StatusCode.UNKNOWN, f"the session's stream task failed: {exc!r}")
            )
        finally:
            if self._error is None:
                # Not one of the ends _attachments() reports: aclose(), a cancellation
                # from outside, or a bug. Never leave the consumer waiting on a dead task.
                self._finish(
                    SessionClosed("session closed")
                    if self._closing
                    else SessionEnded(grpc.StatusCode.CANCELLED, "the session's stream task ended")
                )

    async def _attachments(self, call: _Call) -> None:
        """Pump each attachment in turn; after a drop, resume as the reconnect policy says."""
        current: _Call | None = call
        while current is not None:
            end = await self._until_dropped(current)
            if isinstance(end, _Drop) and self._closing:
                end = SessionClosed("session closed")
            drop = self._resumable(end)
            current = None if drop is None else await self._reconnect(drop)

    async def _until_dropped(self, call: _Call) -> _Drop | TalkwireError:
        """Pump one attachment until it ends: how it dropped, or why the session is over."""
        try:
            await self._pump(call)
        except grpc.aio.AioRpcError as exc:
            return _Drop.of(exc)
        except ProtocolError as exc:
            return exc
        except asyncio.CancelledError:
            if self._cancelled_from_outside():
                raise
            # grpc raises CancelledError from read() when the *call* was cancelled
            # locally (not this task): a dropped stream like any other.
            return _Drop(grpc.StatusCode.CANCELLED, "the call was cancelled locally")
        except Exception as exc:  # an unexpected failure: treat it as a dropped stream
            logger.exception("session %s: the stream failed", self.session_id)
            return _Drop(grpc.StatusCode.UNAVAILABLE, f"the stream failed: {exc!r}")
        finally:
            self._call = None
            call.cancel()
        return SessionClosed("the server ended the session stream")

    def _cancelled_from_outside(self) -> bool:
        task = asyncio.current_task()
        return self._closing or (task is not None and task.cancelling() > 0)

    def _resumable(self, end: _Drop | TalkwireError) -> _Drop | None:
        """``end`` if the reconnect policy resumes after it; else end the session with it."""
        if isinstance(end, TalkwireError):
            self._finish(end)
            return None
        if not self._client.reconnect.resumes(end.code, end.retriable):
            self._finish(end.ended())
            return None
        return end

    async def _reconnect(self, drop: _Drop) -> _Call | None:
        """Resume after ``drop`` with backoff: the new call, or ``None`` once the session ended."""
        self._state = SessionState.RECONNECTING
        logger.info(
            "session %s dropped (%s: %s); resuming", self.session_id, drop.code.name, drop.details
        )
        await self._notify(ConnectionEventKind.DISCONNECTED, drop)
        backoff = Backoff(self._client.reconnect, asyncio.get_running_loop().time)
        while (delay := backoff.next_delay()) is not None:
            await self._notify(
                ConnectionEventKind.RETRYING, drop, attempt=backoff.attempts, delay=delay
            )
            await asyncio.sleep(delay)
            outcome = await self._try_resume(backoff.attempts)
            if not isinstance(outcome, _Drop | TalkwireError):
                return outcome
            retry = self._resumable(outcome)
            if retry is None:
                return None
            drop = retry
        await self._notify(ConnectionEventKind.GAVE_UP, drop, attempt=backoff.attempts)
        self._finish(ReconnectExhausted(drop.code, drop.details, attempts=backoff.attempts))
        return None

    async def _try_resume(self, attempt: int) -> _Call | _Drop | TalkwireError:
        """One resume attempt: the new call, how it failed, or a protocol error."""
        try:
            call, opened = await self._connect(self._resume_request())
        except grpc.aio.AioRpcError as exc:
            return _Drop.of(exc)
        except ProtocolError as exc:
            return exc
        self.reconnects += 1
        self._on_opened(opened)
        logger.info(
            "session %s resumed after seq %d (%d replayed)",
            self.session_id,
            self._received_seq,
            opened.replayed,
        )
        await self._notify(ConnectionEventKind.RESUMED, attempt=attempt, replayed=opened.replayed)
        return call

    async def _notify(
        self,
        kind: ConnectionEventKind,
        drop: _Drop | None = None,
        *,
        attempt: int = 0,
        delay: float = 0.0,
        replayed: int = 0,
    ) -> None:
        """Pass a :class:`ConnectionEvent` to the hook; a broken hook never kills the session."""
        hook = self._client.on_connection_event
        if hook is None:
            return
        event = ConnectionEvent(
            kind,
            self.session_id,
            code=None if drop is None else drop.code,
            details="" if drop is None else drop.details,
            attempt=attempt,
            delay=delay,
            replayed=replayed,
            last_seq=self._received_seq,
            reconnects=self.reconnects,
        )
        try:
            result = hook(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_connection_event hook failed")

    async def _pump(self, call: _Call) -> None:
        """Run one attachment: a writer task, and the reader here. Returns on a clean end."""
        self._call = call
        writer = asyncio.create_task(self._writer(call), name=f"talkwire-writer-{self.session_id}")
        try:
            while True:
                frame = await call.read()
                if frame is grpc.aio.EOF:
                    return  # the server ended the stream with OK
                if not isinstance(frame, chat_pb2.ConverseResponse):
                    # grpc hands over None for a message it could not deserialize
                    raise ProtocolError("the server sent a frame that is not a ConverseResponse")
                await self._on_frame(frame)
        finally:
            writer.cancel()
            await asyncio.wait({writer})
            if not writer.cancelled() and (error := writer.exception()) is not None:
                raise error

    async def _on_frame(self, frame: chat_pb2.ConverseResponse) -> None:
        verdict = self._seq.check(frame)
        if verdict is Verdict.IGNORE:
            logger.debug("ignoring an unexpected opened frame mid-stream")
            return
        if verdict is Verdict.DUPLICATE:
            self.duplicates += 1
            return
        while self._inbox.qsize() >= self._client.max_buffered:
            self._space.clear()
            await self._space.wait()
        self._seq.advance(frame)
        self._inbox.put_nowait(frame)

    async def _writer(self, call: _Call) -> None:
        """Write queued frames in order; fire the batched ack timer; half-close on aclose()."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._ack_deadline
            if deadline is not None and not self._closing:
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._outbound_ready.wait()
                except TimeoutError:
                    self._enqueue_ack()
            else:
                await self._outbound_ready.wait()
            if self._ack_deadline is not None and loop.time() >= self._ack_deadline:
                self._enqueue_ack()
            while self._outbound:
                request = self._outbound[0]
                try:
                    await call.write(request)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                    return  # the stream is gone; the frame stays queued for the next attachment
                if self._outbound and self._outbound[0] is request:
                    self._outbound.popleft()
            self._outbound_ready.clear()
            if self._closing:
                with contextlib.suppress(
                    grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError
                ):
                    await call.done_writing()
                return
