"""Blocking clients for code that is not asyncio (scripts, Django or Flask apps, batch jobs).

::

    from talkwire.clients.sync import SyncAdminClient, SyncChatClient

    with SyncAdminClient("127.0.0.1:50051", token=ADMIN_TOKEN) as admin:
        for session in admin.iter_sessions(key="order:1001"):
            print(session.session_id)
        admin.publish(key="order:1001", text="Your order left the warehouse")

    with SyncChatClient("127.0.0.1:50051", token=TOKEN) as client:
        with client.open(channel="batch") as session:
            session.send("where is my order 1001")
            for frame in session:  # blocks; each durable frame once, in order
                if frame.in_reply_to and frame.WhichOneof("frame") == "reply":
                    break

The rules are the async clients' own, not a copy: a dropped session stream is
resumed by :meth:`ReconnectPolicy.resumes <talkwire.clients.reconnect.ReconnectPolicy.resumes>`
(status plus the server's ``talkwire-retriable`` trailer; authentication
failures never), waiting as :class:`~talkwire.clients.reconnect.Backoff` says;
frames pass the :class:`~talkwire.clients.dedup.SeqFilter` (replays dropped, a
gap is a :class:`~talkwire.clients.errors.ProtocolError`); errors are the same
typed tree (:mod:`talkwire.clients.errors`).

Differences that follow from blocking I/O:

* A :class:`SyncChatSession` reads only while you iterate: nothing is
  buffered, so every frame received is delivered, and the ack (every
  ``ack_every`` frames, and on ``close()``) covers what you have seen.
* Reconnects happen inside ``next()``: iteration blocks through the backoff and
  the resume, then goes on with the replayed frames.
* Iterate from one thread; ``send``/``action``/``subscribe``/``ping`` may be
  called from any thread. A frame sent while disconnected waits and goes out
  right after the resume; a frame handed to a stream that then broke may or may
  not have reached the server (at most once, as in the async client).
* Pass ``channel=`` (any ``grpc.Channel``, e.g. ``grpc_testing``'s) to inject
  the transport; the client then does not close it.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

import grpc

from talkwire.clients.admin import change_event
from talkwire.clients.channel import call_metadata
from talkwire.clients.convert import from_value, to_struct
from talkwire.clients.dedup import SeqFilter, Verdict
from talkwire.clients.errors import (
    ProtocolError,
    ReconnectExhausted,
    RpcError,
    SessionClosed,
    TalkwireError,
    session_ended_from,
)
from talkwire.clients.reconnect import (
    Backoff,
    ConnectionEvent,
    ConnectionEventKind,
    ReconnectPolicy,
    retriable_hint,
)
from talkwire.v1 import admin_pb2, admin_pb2_grpc, chat_pb2, chat_pb2_grpc, events_pb2

__all__ = ["SyncAdminClient", "SyncChatClient", "SyncChatSession", "SyncConnectionHook"]

SyncConnectionHook = Callable[[ConnectionEvent], None]

_DEFAULT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)


class _ResponseCall(Protocol):
    """What a sync stream-stream call is: an iterator of responses and a ``grpc.Call``."""

    def __iter__(self) -> Iterator[chat_pb2.ConverseResponse]: ...
    def __next__(self) -> chat_pb2.ConverseResponse: ...
    def cancel(self) -> bool: ...


def _code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details_of(exc: grpc.RpcError) -> str:
    return (exc.details() if isinstance(exc, grpc.Call) else "") or ""


def _rpc_error(exc: grpc.RpcError) -> RpcError:
    return RpcError(_code_of(exc), _details_of(exc))


class _Transport:
    """A channel this client made (and closes) or one it was given (and leaves open)."""

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: Sequence[tuple[str, Any]],
        channel: grpc.Channel | None,
    ) -> None:
        if channel is None and not target:
            raise ValueError("pass a target (host:port) or a channel")
        self._owned = channel is None
        if channel is not None:
            self.channel = channel
        elif credentials is not None:
            self.channel = grpc.secure_channel(target, credentials, options=list(options))
        else:
            self.channel = grpc.insecure_channel(target, options=list(options))
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._owned:
                self.channel.close()


# -- admin ---------------------------------------------------------------------------


class SyncAdminClient:
    """Blocking ``AdminService`` calls (the admin role is needed); a context manager.

    Every failed call raises :class:`~talkwire.clients.errors.RpcError`. Unary
    calls use ``timeout`` seconds as their deadline; ``watch`` has none.
    """

    def __init__(
        self,
        target: str = "",
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = 30.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._transport = _Transport(target, credentials, options, channel)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._transport.channel)
        self._metadata = call_metadata(token, metadata)
        self.timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (if this client made it). Idempotent."""
        self._transport.close()

    def _unary(self, method: Any, request: Any) -> Any:
        if self._transport.closed:
            raise SessionClosed("the SyncAdminClient is closed")
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None

    def list_sessions(
        self,
        *,
        subject: str = "",
        key: str = "",
        include_closed: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> admin_pb2.ListSessionsResponse:
        """One page of sessions (``next_page_token`` is empty on the last page)."""
        request = admin_pb2.ListSessionsRequest(
            subject=subject,
            key=key,
            include_closed=include_closed,
            page_size=page_size,
            page_token=page_token,
        )
        response: admin_pb2.ListSessionsResponse = self._unary(self._stub.ListSessions, request)
        return response

    def iter_sessions(
        self, *, subject: str = "", key: str = "", include_closed: bool = False, page_size: int = 0
    ) -> Iterator[admin_pb2.Session]:
        """Every matching session, following page tokens."""
        token = ""
        while True:
            page = self.list_sessions(
                subject=subject,
                key=key,
                include_closed=include_closed,
                page_size=page_size,
                page_token=token,
            )
            yield from page.sessions
            token = page.next_page_token
            if not token:
                return

    def get_session(self, session_id: str) -> admin_pb2.Session:
        request = admin_pb2.GetSessionRequest(session_id=session_id)
        response: admin_pb2.GetSessionResponse = self._unary(self._stub.GetSession, request)
        return response.session

    def close_session(self, session_id: str, reason: str = "") -> admin_pb2.Session:
        request = admin_pb2.CloseSessionRequest(session_id=session_id, reason=reason)
        response: admin_pb2.CloseSessionResponse = self._unary(self._stub.CloseSession, request)
        return response.session

    def publish(
        self,
        *,
        session_id: str | None = None,
        key: str | None = None,
        event: events_pb2.ChangeEvent | None = None,
        text: str = "",
        data: Mapping[str, Any] | None = None,
        type: str = "",
        source: str = "",
        event_id: str = "",
    ) -> admin_pb2.PublishResponse:
        """Push an update into one session or every subscriber of ``key`` (as ``AdminClient``)."""
        if (session_id is None) == (key is None):
            raise ValueError("pass exactly one of session_id= or key=")
        if event is None:
            event = change_event(id=event_id, source=source, type=type, text=text, data=data)
        elif text or data is not None or type or source or event_id:
            raise ValueError("pass either event= or text/data/type/source/event_id")
        request = admin_pb2.PublishRequest(event=event)
        if session_id is not None:
            request.session_id = session_id
        elif key is not None:
            request.key = key
        response: admin_pb2.PublishResponse = self._unary(self._stub.Publish, request)
        return response

    def watch(self, session_id: str, after_seq: int = 0) -> Iterator[chat_pb2.ConverseResponse]:
        """A session's durable frames with ``seq > after_seq``: the retained ones, then live.

        Ends when the server ends the stream; a non-OK status raises ``RpcError``.
        Closing the generator (or leaving the ``for`` loop) cancels the call.
        """
        call = self._stub.Watch(
            admin_pb2.WatchRequest(session_id=session_id, after_seq=after_seq),
            metadata=self._metadata,
        )
        try:
            for response in call:
                yield response.frame
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
        finally:
            call.cancel()

    def list_connectors(self) -> list[admin_pb2.ConnectorInfo]:
        request = admin_pb2.ListConnectorsRequest()
        response: admin_pb2.ListConnectorsResponse = self._unary(self._stub.ListConnectors, request)
        return list(response.connectors)

    def invoke_connector(
        self,
        connector: str,
        operation: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        subject: str | None = None,
        claims: Mapping[str, Any] | None = None,
        idempotency_key: str = "",
    ) -> Any:
        """Invoke a connector operation; returns the result as a plain Python value."""
        request = admin_pb2.InvokeConnectorRequest(
            connector=connector,
            operation=operation,
            parameters=to_struct(parameters),
            subject=subject or "",
            idempotency_key=idempotency_key,
        )
        if claims is not None:
            request.claims.CopyFrom(to_struct(claims))
        response: admin_pb2.InvokeConnectorResponse = self._unary(
            self._stub.InvokeConnector, request
        )
        return from_value(response.result)


# -- chat ------------------------------------------------------------------------------


class _Outbox:
    """The request iterator of one attachment: the open frame, then frames as they are put.

    ``half_close()`` ends it after what was put; ``finish()`` ends it at once and
    hands back what it had not yet taken, so those frames go out on the next attachment.
    """

    def __init__(self, first: chat_pb2.ConverseRequest) -> None:
        self._items: collections.deque[chat_pb2.ConverseRequest] = collections.deque([first])
        self._cond = threading.Condition()
        self._finished = False

    def put(self, request: chat_pb2.ConverseRequest) -> bool:
        with self._cond:
            if self._finished:
                return False
            self._items.append(request)
            self._cond.notify()
            return True

    def half_close(self) -> None:
        """End the iterator once what was put so far is taken."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def finish(self) -> list[chat_pb2.ConverseRequest]:
        with self._cond:
            self._finished = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left

    def __iter__(self) -> Iterator[chat_pb2.ConverseRequest]:
        while True:
            with self._cond:
                while not self._items and not self._finished:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
            yield item


class _Drop(Exception):
    """An attachment ended with a non-OK status (internal to this module)."""

    def __init__(self, code: grpc.StatusCode, details: str, retriable: bool | None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.retriable = retriable

    @classmethod
    def of(cls, exc: grpc.RpcError) -> _Drop:
        trailers = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
        return cls(_code_of(exc), _details_of(exc), retriable_hint(trailers))


def _new_id() -> str:
    return uuid.uuid4().hex


class SyncChatClient:
    """Blocking ``Converse`` sessions; the keyword arguments are those of ``ChatClient``.

    ``sleep`` and ``clock`` (``time.sleep`` / ``time.monotonic``) are the
    reconnect backoff's; ``on_connection_event`` is called with each
    :class:`~talkwire.clients.reconnect.ConnectionEvent` (a failing hook is ignored).
    """

    def __init__(
        self,
        target: str = "",
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        reconnect: ReconnectPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        ack_every: int = 16,
        open_timeout: float | None = 30.0,
        close_timeout: float = 1.0,
        on_connection_event: SyncConnectionHook | None = None,
        channel: grpc.Channel | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        merged = dict(_DEFAULT_OPTIONS)
        merged.update(dict(options))
        self._transport = _Transport(target, credentials, list(merged.items()), channel)
        self._stub = chat_pb2_grpc.ChatServiceStub(self._transport.channel)
        self._metadata = call_metadata(token, metadata)
        if ack_every < 1:
            raise ValueError("ack_every must be >= 1")
        if open_timeout is not None and open_timeout <= 0:
            raise ValueError("open_timeout must be > 0 (or None: wait forever)")
        self.reconnect = reconnect if reconnect is not None else ReconnectPolicy()
        self.ack_every = ack_every
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.on_connection_event = on_connection_event
        self.sleep = sleep
        self.clock = clock
        self._sessions: set[SyncChatSession] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(
        self, *, channel: str = "", locale: str = "", attributes: Mapping[str, str] | None = None
    ) -> SyncChatSession:
        """Open a new session; returns once the server answered ``opened`` (never retried)."""
        request = chat_pb2.Open(channel=channel, locale=locale, attributes=dict(attributes or {}))
        return self._start(request, last_seq=0)

    def resume(self, session_id: str, resume_token: str, last_seq: int = 0) -> SyncChatSession:
        """Resume a session; frames with ``seq > last_seq`` are replayed (never retried)."""
        request = chat_pb2.Open(session_id=session_id, resume_token=resume_token, last_seq=last_seq)
        return self._start(request, last_seq=last_seq)

    def _start(self, request: chat_pb2.Open, *, last_seq: int) -> SyncChatSession:
        if self._transport.closed:
            raise SessionClosed("the SyncChatClient is closed")
        session = SyncChatSession(self, last_seq=last_seq)
        try:
            session._attach(request)
        except _Drop as drop:
            raise session_ended_from(drop.code, drop.details) from None
        self._sessions.add(session)
        return session

    def _call(self, outbox: _Outbox) -> _ResponseCall:
        call: _ResponseCall = self._stub.Converse(iter(outbox), metadata=self._metadata)
        return call

    def close(self) -> None:
        """Close every open session (acking what was delivered), then the channel."""
        try:
            for session in list(self._sessions):
                session.close()
        finally:
            self._transport.close()


class SyncChatSession:
    """One blocking ``Converse`` session: iterate it for frames; send from any thread.

    Attributes as on ``ChatSession``: ``session_id``, ``resume_token``,
    ``last_seq``, ``reconnects``, ``duplicates``, ``replayed``, ``error``.
    """

    def __init__(self, client: SyncChatClient, *, last_seq: int) -> None:
        self._client = client
        self.session_id = ""
        self.resume_token = ""
        self.reconnects = 0
        self.duplicates = 0
        self.replayed = 0
        self._seq = SeqFilter(received=last_seq)
        self._acked = last_seq
        self._lock = threading.Lock()
        self._pending: list[chat_pb2.ConverseRequest] = []  # sent while disconnected
        self._outbox: _Outbox | None = None
        self._call: _ResponseCall | None = None
        self._error: TalkwireError | None = None
        self._closing = False

    @property
    def last_seq(self) -> int:
        """The highest durable seq delivered to you (what to resume from later)."""
        return self._seq.received

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def error(self) -> TalkwireError | None:
        """Why the session ended (``None`` while it is alive)."""
        return self._error

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------

    def _enqueue(self, request: chat_pb2.ConverseRequest) -> str:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise SessionClosed("session closed")
        if not request.id:
            request.id = _new_id()
        with self._lock:
            if self._outbox is None or not self._outbox.put(request):
                self._pending.append(request)
        return request.id

    def send(self, text: str) -> str:
        """Send a user message; returns its frame id (the answers' ``in_reply_to``)."""
        return self._enqueue(chat_pb2.ConverseRequest(message=chat_pb2.UserMessage(text=text)))

    def action(
        self, intent: str, parameters: Mapping[str, Any] | None = None, label: str = ""
    ) -> str:
        """Send a structured action (button / quick reply); returns its frame id."""
        frame = chat_pb2.UserAction(intent=intent, parameters=to_struct(parameters), label=label)
        return self._enqueue(chat_pb2.ConverseRequest(action=frame))

    def subscribe(self, key: str) -> str:
        return self._enqueue(chat_pb2.ConverseRequest(subscribe=chat_pb2.Subscribe(key=key)))

    def unsubscribe(self, key: str) -> str:
        return self._enqueue(chat_pb2.ConverseRequest(unsubscribe=chat_pb2.Unsubscribe(key=key)))

    def ping(self, data: str = "") -> str:
        return self._enqueue(chat_pb2.ConverseRequest(ping=chat_pb2.Ping(data=data)))

    def ack(self) -> None:
        """Ack everything delivered so far (done by itself every ``ack_every`` frames)."""
        if self._seq.received > self._acked and self._error is None and not self._closing:
            self._acked = self._seq.received
            self._enqueue(chat_pb2.ConverseRequest(ack=chat_pb2.Ack(seq=self._acked)))

    # -- receiving -------------------------------------------------------------

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> chat_pb2.ConverseResponse:
        while True:
            if self._error is not None:
                if isinstance(self._error, SessionClosed):
                    raise StopIteration
                raise self._error
            call = self._call
            if call is None:
                self._finish(SessionClosed("session closed"))
                continue
            try:
                frame = next(call)
            except StopIteration:
                self._end_attachment()
                self._finish(SessionClosed("the server ended the session stream"))
                continue
            except grpc.RpcError as exc:
                self._end_attachment()
                self._recover(_Drop.of(exc))
                continue
            if self._accept(frame):
                return frame

    def _accept(self, frame: chat_pb2.ConverseResponse) -> bool:
        try:
            verdict = self._seq.check(frame)
        except ProtocolError as exc:
            self._end_attachment()
            self._finish(exc)
            raise
        if verdict is Verdict.DUPLICATE:
            self.duplicates += 1
            return False
        if verdict is Verdict.IGNORE:
            return False
        self._seq.advance(frame)
        if self._seq.received - self._acked >= self._client.ack_every:
            self.ack()
        return True

    def next_frame(self) -> chat_pb2.ConverseResponse:
        """The next frame; raises the session's error, or ``SessionClosed`` once it ended."""
        try:
            return next(self)
        except StopIteration:
            raise SessionClosed("session closed") from None

    def wait_for(
        self, predicate: Callable[[chat_pb2.ConverseResponse], bool]
    ) -> chat_pb2.ConverseResponse:
        """Consume frames until one satisfies ``predicate``; return it."""
        while True:
            frame = self.next_frame()
            if predicate(frame):
                return frame

    # -- attachments -----------------------------------------------------------

    def _attach(self, request: chat_pb2.Open) -> None:
        """Start a call with ``request``; wait (``open_timeout``) for ``opened``. Raises _Drop."""
        outbox = _Outbox(chat_pb2.ConverseRequest(id=_new_id(), open=request))
        call = self._client._call(outbox)
        timer: threading.Timer | None = None
        expired = threading.Event()
        if self._client.open_timeout is not None:

            def expire() -> None:
                expired.set()
                call.cancel()

            timer = threading.Timer(self._client.open_timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            first = next(call)
        except StopIteration:
            outbox.finish()
            raise ProtocolError("the server ended the stream before opened") from None
        except grpc.RpcError as exc:
            outbox.finish()
            if expired.is_set():
                raise _Drop(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no opened frame within open_timeout ({self._client.open_timeout:g}s)",
                    None,
                ) from None
            raise _Drop.of(exc) from None
        finally:
            if timer is not None:
                timer.cancel()
        if first.WhichOneof("frame") != "opened":
            outbox.finish()
            call.cancel()
            raise ProtocolError("the server did not answer open with opened")
        opened = first.opened
        self.session_id = opened.session_id or self.session_id
        self.resume_token = opened.resume_token or self.resume_token
        self._seq.session_id = self.session_id
        self.replayed = opened.replayed
        with self._lock:
            self._call, self._outbox = call, outbox
            pending, self._pending = self._pending, []
            for item in pending:
                outbox.put(item)

    def _end_attachment(self) -> None:
        with self._lock:
            outbox, self._outbox = self._outbox, None
            call, self._call = self._call, None
            if outbox is not None:
                left = [r for r in outbox.finish() if not r.HasField("open")]
                self._pending[:0] = left
        if call is not None:
            call.cancel()

    def _recover(self, drop: _Drop) -> None:
        """Resume after ``drop`` as the policy says; or end the session (``_finish``)."""
        policy = self._client.reconnect
        if self._closing:
            self._finish(SessionClosed("session closed"))
            return
        if not policy.resumes(drop.code, drop.retriable):
            self._finish(session_ended_from(drop.code, drop.details))
            return
        self._notify(ConnectionEventKind.DISCONNECTED, drop)
        backoff = Backoff(policy, self._client.clock)
        while (delay := backoff.next_delay()) is not None:
            self._notify(ConnectionEventKind.RETRYING, drop, attempt=backoff.attempts, delay=delay)
            self._client.sleep(delay)
            request = chat_pb2.Open(
                session_id=self.session_id,
                resume_token=self.resume_token,
                last_seq=self._seq.received,
            )
            try:
                self._attach(request)
            except _Drop as again:
                if not policy.resumes(again.code, again.retriable):
                    self._finish(session_ended_from(again.code, again.details))
                    return
                drop = again
                continue
            except ProtocolError as exc:
                self._finish(exc)
                return
            self.reconnects += 1
            self._notify(
                ConnectionEventKind.RESUMED, attempt=backoff.attempts, replayed=self.replayed
            )
            return
        self._notify(ConnectionEventKind.GAVE_UP, drop, attempt=backoff.attempts)
        self._finish(ReconnectExhausted(drop.code, drop.details, attempts=backoff.attempts))

    def _notify(
        self,
        kind: ConnectionEventKind,
        drop: _Drop | None = None,
        *,
        attempt: int = 0,
        delay: float = 0.0,
        replayed: int = 0,
    ) -> None:
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
            last_seq=self._seq.received,
            reconnects=self.reconnects,
        )
        try:
            hook(event)
        except Exception:  # noqa: BLE001 - a broken hook never kills the session
            return

    def _finish(self, error: TalkwireError) -> None:
        if self._error is None:
            self._error = error

    def close(self) -> None:
        """Ack what was delivered, half-close, wait ``close_timeout`` for the end. Idempotent."""
        if self._closing:
            return
        self.ack()
        self._closing = True
        self._client._sessions.discard(self)
        with self._lock:
            outbox, call = self._outbox, self._call
        if outbox is not None and call is not None:
            outbox.half_close()  # the ack goes out, then the server sees the end and ends too
            timer = threading.Timer(self._client.close_timeout, call.cancel)
            timer.daemon = True
            timer.start()
            try:
                for _ in call:
                    pass  # undelivered frames are not acked: a later resume replays them
            except grpc.RpcError:
                pass
            finally:
                timer.cancel()
        self._end_attachment()
        self._finish(SessionClosed("session closed"))
