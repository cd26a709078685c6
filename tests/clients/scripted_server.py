"""A scripted ChatService / AdminService on a real grpc.aio server on 127.0.0.1.

The servicer speaks the Converse protocol the real server implements: it
assigns per-session gap-free seqs, keeps every durable frame, supports resume
with ``last_seq`` (optionally re-sending some already-seen frames, to exercise
client dedup), supersedes older attachments, records acks, and can be told to
abort a stream mid-way or be stopped and restarted on the same port (its state
lives in this object, not in the grpc server).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from talkwire.clients.convert import from_struct, to_struct, to_value
from talkwire.v1 import admin_pb2, admin_pb2_grpc, chat_pb2, chat_pb2_grpc

TOKEN = "test-token"
ADMIN_TOKEN = "admin-token"


@dataclass
class _Abort:
    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str], ...] = ()


_END = object()


@dataclass
class ScriptedSession:
    session_id: str
    token: str
    frames: list[chat_pb2.ConverseResponse] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    subscriptions: set[str] = field(default_factory=set)
    attachment: asyncio.Queue[object] | None = None
    closed: bool = False

    @property
    def head(self) -> int:
        return len(self.frames)


class ScriptedChat(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self) -> None:
        self.sessions: dict[str, ScriptedSession] = {}
        self.opens: list[chat_pb2.Open] = []
        self.received: list[chat_pb2.ConverseRequest] = []
        self.changed = asyncio.Condition()
        # knobs
        self.replay_overlap = 0  # re-send this many already-seen frames on resume
        self.resume_gate = asyncio.Event()  # resumes wait for this
        self.resume_gate.set()
        self.abort_after_writes: tuple[int, grpc.StatusCode] | None = None

    # -- helpers for tests ---------------------------------------------------

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(20), self.changed:
            await self.changed.wait_for(predicate)

    def append(self, session: ScriptedSession, frame: chat_pb2.ConverseResponse) -> int:
        frame.seq = session.head + 1
        session.frames.append(frame)
        if session.attachment is not None:
            session.attachment.put_nowait(frame)
        return frame.seq

    async def push(self, session_id: str, text: str, key: str = "") -> int:
        session = self.sessions[session_id]
        seq = self.append(
            session,
            chat_pb2.ConverseResponse(
                update=chat_pb2.Update(event_id=uuid.uuid4().hex, key=key, text=text)
            ),
        )
        await self.notify()
        return seq

    def kick(
        self,
        session_id: str,
        code: grpc.StatusCode,
        details: str = "kicked",
        trailers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """End the live attachment with ``code``, ``details`` and trailing metadata."""
        attachment = self.sessions[session_id].attachment
        assert attachment is not None
        attachment.put_nowait(_Abort(code, details, trailers))

    def attached(self, session_id: str) -> bool:
        session = self.sessions.get(session_id)
        return session is not None and session.attachment is not None

    # -- the protocol --------------------------------------------------------

    async def Converse(  # type: ignore[override]
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[chat_pb2.ConverseRequest, chat_pb2.ConverseResponse],
    ) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or bad token")
        first = await context.read()
        if not isinstance(first, chat_pb2.ConverseRequest) or not first.HasField("open"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first frame must be open")
        assert isinstance(first, chat_pb2.ConverseRequest)
        request = first.open
        self.opens.append(request)
        if request.session_id:
            found = self.sessions.get(request.session_id)
            if found is None or found.closed:
                await context.abort(grpc.StatusCode.NOT_FOUND, "unknown session")
            assert found is not None
            if request.resume_token != found.token:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "wrong resume token")
            if request.last_seq > found.head:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, "last_seq beyond head")
            await self.resume_gate.wait()
            session = found
            start = max(0, request.last_seq - self.replay_overlap)
            resumed = True
        else:
            session = ScriptedSession(uuid.uuid4().hex, uuid.uuid4().hex)
            self.sessions[session.session_id] = session
            start = 0
            resumed = False
        if session.attachment is not None:
            session.attachment.put_nowait(_Abort(grpc.StatusCode.ABORTED, "superseded"))
        queue: asyncio.Queue[object] = asyncio.Queue()
        replay = list(session.frames[start:]) if resumed else []
        for frame in replay:  # queued before any live frame can be appended
            queue.put_nowait(frame)
        session.attachment = queue
        opened = chat_pb2.Opened(
            session_id=session.session_id,
            resume_token=session.token,
            resumed=resumed,
            replayed=len(replay),
            head_seq=session.head,
        )
        reader = asyncio.create_task(self._read_loop(context, session, queue))
        writes = 0
        try:
            await context.write(chat_pb2.ConverseResponse(in_reply_to=first.id, opened=opened))
            await self.notify()
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, _Abort):
                    await context.abort(item.code, item.details, item.trailers)
                assert isinstance(item, chat_pb2.ConverseResponse)
                await context.write(item)
                if item.seq:
                    writes += 1
                if self.abort_after_writes is not None and writes >= self.abort_after_writes[0]:
                    code = self.abort_after_writes[1]
                    self.abort_after_writes = None
                    await context.abort(code, "scripted abort")
        finally:
            if session.attachment is queue:
                session.attachment = None
            # not awaited: a read pending on a finished RPC may not wake up promptly
            reader.cancel()
            await self.notify()

    async def _read_loop(
        self,
        context: grpc.aio.ServicerContext[chat_pb2.ConverseRequest, chat_pb2.ConverseResponse],
        session: ScriptedSession,
        queue: asyncio.Queue[object],
    ) -> None:
        while True:
            request = await context.read()
            if not isinstance(request, chat_pb2.ConverseRequest):
                queue.put_nowait(_END)
                return
            self.received.append(request)
            kind = request.WhichOneof("frame")
            if kind == "message":
                text = request.message.text
                quick: list[chat_pb2.QuickReply] = []
                if text == "menu":
                    quick = [
                        chat_pb2.QuickReply(
                            label="Track order",
                            intent="track_order",
                            parameters=to_struct({"order_id": 1001}),
                        ),
                        chat_pb2.QuickReply(label="Talk to a human", intent="handoff"),
                    ]
                self.append(
                    session,
                    chat_pb2.ConverseResponse(
                        in_reply_to=request.id,
                        reply=chat_pb2.Reply(text=f"echo: {text}", quick_replies=quick),
                    ),
                )
            elif kind == "action":
                params = json.dumps(from_struct(request.action.parameters), sort_keys=True)
                self.append(
                    session,
                    chat_pb2.ConverseResponse(
                        in_reply_to=request.id,
                        reply=chat_pb2.Reply(text=f"did {request.action.intent} {params}"),
                    ),
                )
            elif kind == "ack":
                session.acks.append(request.ack.seq)
            elif kind in ("subscribe", "unsubscribe"):
                key = getattr(request, kind).key
                active = kind == "subscribe"
                (session.subscriptions.add if active else session.subscriptions.discard)(key)
                self.append(
                    session,
                    chat_pb2.ConverseResponse(
                        in_reply_to=request.id,
                        subscription=chat_pb2.SubscriptionChanged(key=key, active=active),
                    ),
                )
            elif kind == "ping":
                queue.put_nowait(
                    chat_pb2.ConverseResponse(
                        in_reply_to=request.id, pong=chat_pb2.Pong(data=request.ping.data)
                    )
                )
            await self.notify()


class ScriptedAdmin(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, chat: ScriptedChat) -> None:
        self.chat = chat
        self.published: list[admin_pb2.PublishRequest] = []
        self.seen_event_ids: set[str] = set()

    async def _auth(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {ADMIN_TOKEN}":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "admin role required")

    def _session(self, s: ScriptedSession) -> admin_pb2.Session:
        return admin_pb2.Session(
            session_id=s.session_id,
            subject="alice",
            channel="web",
            state=admin_pb2.SESSION_STATE_CLOSED if s.closed else admin_pb2.SESSION_STATE_ACTIVE,
            head_seq=s.head,
            acked_seq=max(s.acks, default=0),
            attached=s.attachment is not None,
            subscriptions=sorted(s.subscriptions),
        )

    async def ListSessions(  # type: ignore[override]
        self, request: admin_pb2.ListSessionsRequest, context: Any
    ) -> admin_pb2.ListSessionsResponse:
        await self._auth(context)
        rows = [
            self._session(s)
            for s in self.chat.sessions.values()
            if (request.include_closed or not s.closed)
            and (not request.key or request.key in s.subscriptions)
            and (not request.subject or request.subject == "alice")
        ]
        rows.sort(key=lambda r: r.session_id)
        offset = int(request.page_token or 0)
        size = request.page_size or 100
        page = rows[offset : offset + size]
        next_token = str(offset + size) if offset + size < len(rows) else ""
        return admin_pb2.ListSessionsResponse(sessions=page, next_page_token=next_token)

    async def GetSession(  # type: ignore[override]
        self, request: admin_pb2.GetSessionRequest, context: Any
    ) -> admin_pb2.GetSessionResponse:
        await self._auth(context)
        s = self.chat.sessions.get(request.session_id)
        if s is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id}")
        assert s is not None
        return admin_pb2.GetSessionResponse(session=self._session(s))

    async def CloseSession(  # type: ignore[override]
        self, request: admin_pb2.CloseSessionRequest, context: Any
    ) -> admin_pb2.CloseSessionResponse:
        await self._auth(context)
        s = self.chat.sessions.get(request.session_id)
        if s is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id}")
        assert s is not None
        s.closed = True
        if s.attachment is not None:
            s.attachment.put_nowait(_Abort(grpc.StatusCode.NOT_FOUND, "session closed"))
        return admin_pb2.CloseSessionResponse(session=self._session(s))

    async def Publish(  # type: ignore[override]
        self, request: admin_pb2.PublishRequest, context: Any
    ) -> admin_pb2.PublishResponse:
        await self._auth(context)
        self.published.append(request)
        event_id = request.event.id or uuid.uuid4().hex
        if event_id in self.seen_event_ids:
            return admin_pb2.PublishResponse(event_id=event_id, duplicate=True)
        self.seen_event_ids.add(event_id)
        target = request.WhichOneof("target")
        if target == "session_id":
            targets = [self.chat.sessions[request.session_id]]
        else:
            targets = [s for s in self.chat.sessions.values() if request.key in s.subscriptions]
        for s in targets:
            self.chat.append(
                s,
                chat_pb2.ConverseResponse(
                    update=chat_pb2.Update(
                        event_id=event_id,
                        key=request.key,
                        text=request.event.text,
                        data=request.event.after,
                    )
                ),
            )
        await self.chat.notify()
        return admin_pb2.PublishResponse(event_id=event_id, delivered=len(targets))

    async def Watch(  # type: ignore[override]
        self, request: admin_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[admin_pb2.WatchResponse]:
        await self._auth(context)
        s = self.chat.sessions.get(request.session_id)
        if s is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no session")
        assert s is not None
        for frame in s.frames[request.after_seq :]:
            yield admin_pb2.WatchResponse(session_id=s.session_id, frame=frame)

    async def ListConnectors(  # type: ignore[override]
        self, request: admin_pb2.ListConnectorsRequest, context: Any
    ) -> admin_pb2.ListConnectorsResponse:
        await self._auth(context)
        op = admin_pb2.OperationInfo(
            name="get_order",
            description="Look up an order",
            parameters=[admin_pb2.ParameterInfo(name="order_id", type="int", required=True)],
        )
        return admin_pb2.ListConnectorsResponse(
            connectors=[admin_pb2.ConnectorInfo(name="crm", type="sql", operations=[op])]
        )

    async def InvokeConnector(  # type: ignore[override]
        self, request: admin_pb2.InvokeConnectorRequest, context: Any
    ) -> admin_pb2.InvokeConnectorResponse:
        await self._auth(context)
        if request.connector != "crm":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no connector {request.connector}")
        result = {
            "operation": request.operation,
            "parameters": from_struct(request.parameters),
            "subject": request.subject,
            "claims": from_struct(request.claims),
            "rows": [{"id": 1001, "status": "shipped"}],
        }
        return admin_pb2.InvokeConnectorResponse(result=to_value(result))


class ServerHarness:
    """A grpc.aio server around the scripted servicers; can stop and restart on its port."""

    def __init__(self) -> None:
        self.chat = ScriptedChat()
        self.admin = ScriptedAdmin(self.chat)
        self.port = 0
        self.server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        chat_pb2_grpc.add_ChatServiceServicer_to_server(self.chat, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(self.admin, server)
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert port, "could not bind"
        self.port = port
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None
