"""``talkwire.v1.AgentService``: the agent desk (queue, accept, attend, transfer).

Every call needs the ``agent`` role; a queue listed in ``handoff.queues`` also
needs its claims (an agent neither sees nor accepts what it may not serve).

``Attend`` is an adapter onto the session machinery, not a second copy of it:
it is a feed of the *user's* session (the same durable frames with the same
seqs: replay after ``last_seq``, then live, gap-filled from the store, woken
across replicas by the bus), plus the agent's input, which becomes durable
frames of that session through the handoff steps. An agent that reconnects
resumes with ``last_seq`` like a client does; while the stream is open it keeps
the agent's claim alive (``handoff.agent_timeout``). A second ``Attend`` of the
same session on this replica supersedes the first (``ABORTED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from talkwire.server.auth import Authenticator
from talkwire.server.config import ServerConfig
from talkwire.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Status,
    TalkwireError,
    UnavailableError,
    status_for,
)
from talkwire.server.frames import StoredFrame, jsonable, now_timestamp
from talkwire.server.handoff.desk import HandoffDesk
from talkwire.server.handoff.frames import authored_reply
from talkwire.server.handoff.settings import AGENT_ROLE
from talkwire.server.handoff.store import HandoffRecord
from talkwire.server.hub import Feed, SessionHub, superseded_status
from talkwire.server.identity import Identity
from talkwire.server.store import SessionStore
from talkwire.server.turns import QuickReply
from talkwire.v1 import agent_pb2, agent_pb2_grpc, chat_pb2

__all__ = ["AgentService"]

log = logging.getLogger(__name__)

_R = TypeVar("_R")
_MAX_QUICK_REPLIES = 10

_STATES = {
    1: chat_pb2.HANDOFF_STATE_QUEUED,
    2: chat_pb2.HANDOFF_STATE_ACCEPTED,
}


def _queued_session(
    rec: HandoffRecord, claims: dict[str, Any], position: int, head_seq: int
) -> agent_pb2.QueuedSession:
    msg = agent_pb2.QueuedSession(
        session_id=rec.session_id,
        queue=rec.queue,
        reason=rec.reason,
        position=position,
        subject=rec.subject,
        state=_STATES.get(rec.state, chat_pb2.HANDOFF_STATE_ENDED),
        agent=rec.agent or "",
        head_seq=head_seq,
    )
    msg.waiting_since.CopyFrom(now_timestamp(rec.queued_at))
    msg.claims.update(jsonable(claims))
    ctx = rec.context
    msg.context.slots.update(jsonable(dict(ctx.get("slots") or {})))
    msg.context.results.update(jsonable(dict(ctx.get("results") or {})))
    for turn in ctx.get("turns") or ():
        item = msg.context.turns.add(role=str(turn.get("role", "")), text=str(turn.get("text", "")))
        item.at.CopyFrom(now_timestamp(float(turn.get("at") or 0.0)))
    return msg


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """The agent servicer; errors become statuses in one place (:meth:`_call`)."""

    def __init__(
        self,
        *,
        store: SessionStore,
        hub: SessionHub,
        authenticator: Authenticator,
        desk: HandoffDesk,
        config: ServerConfig,
    ) -> None:
        self._store = store
        self._hub = hub
        self._auth = authenticator
        self._desk = desk
        self._config = config
        self._attending: dict[str, Feed] = {}

    def _agent(
        self, context: grpc.aio.ServicerContext[Any, Any], *, or_admin: bool = False
    ) -> Identity:
        identity = self._auth.authenticate(context.invocation_metadata() or ())
        if AGENT_ROLE in identity.roles or (or_admin and identity.is_admin):
            return identity
        raise PermissionDeniedError(
            "the agent (or admin) role is required" if or_admin else "the agent role is required"
        )

    async def _call(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        body: Callable[[Identity], Awaitable[_R]],
        *,
        or_admin: bool = False,
    ) -> _R:
        try:
            return await body(self._agent(context, or_admin=or_admin))
        except Exception as exc:
            status = status_for(exc)
            if status.code == grpc.StatusCode.INTERNAL:
                log.exception("agent call failed")
            await context.abort(status.code, status.message)
            raise AssertionError("unreachable") from exc

    async def _describe(self, rec: HandoffRecord, position: int = 0) -> agent_pb2.QueuedSession:
        session = await self._store.get_session(rec.session_id)
        claims = {} if session is None else dict(session.identity.claims)
        head = 0 if session is None else session.head_seq
        return _queued_session(rec, claims, position, head)

    # -- unary calls -----------------------------------------------------------

    async def ListQueue(
        self, request: agent_pb2.ListQueueRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ListQueueResponse:
        async def body(agent: Identity) -> agent_pb2.ListQueueResponse:
            settings = self._desk.settings
            if request.queue and not settings.may_serve(agent, request.queue):
                raise PermissionDeniedError(f"not allowed to serve queue {request.queue!r}")
            waiting = await self._desk.handoffs.waiting([request.queue] if request.queue else None)
            out = agent_pb2.ListQueueResponse()
            for rec, position in waiting:
                if settings.may_serve(agent, rec.queue):
                    out.sessions.append(await self._describe(rec, position))
            return out

        return await self._call(context, body)

    async def Accept(
        self, request: agent_pb2.AcceptRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.AcceptResponse:
        async def body(agent: Identity) -> agent_pb2.AcceptResponse:
            _check_session_id(request.session_id)
            step = await self._desk.accept(request.session_id, agent)
            return agent_pb2.AcceptResponse(session=await self._describe(step.record))

        return await self._call(context, body)

    async def Transfer(
        self, request: agent_pb2.TransferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.TransferResponse:
        async def body(agent: Identity) -> agent_pb2.TransferResponse:
            _check_session_id(request.session_id)
            step = await self._desk.transfer(
                request.session_id, agent, request.queue, request.reason
            )
            self._end_attend(request.session_id)
            return agent_pb2.TransferResponse(
                session=await self._describe(step.record, step.position)
            )

        return await self._call(context, body)

    async def RequestHandoff(
        self,
        request: agent_pb2.RequestHandoffRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> agent_pb2.RequestHandoffResponse:
        async def body(_: Identity) -> agent_pb2.RequestHandoffResponse:
            _check_session_id(request.session_id)
            step = await self._desk.queue(
                request.session_id, queue=request.queue, reason=request.reason
            )
            return agent_pb2.RequestHandoffResponse(
                session=await self._describe(step.record, step.position)
            )

        return await self._call(context, body, or_admin=True)  # a back office may ask too

    def _end_attend(self, session_id: str) -> None:
        feed = self._attending.get(session_id)
        if feed is not None:
            feed.close()

    # -- the Attend stream -------------------------------------------------------

    async def Attend(  # type: ignore[override]  # grpc.aio: a handler may write, not yield
        self,
        request_iterator: AsyncIterator[agent_pb2.AttendRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        try:
            agent = self._agent(context)
            if self._hub.draining:
                raise _draining()
            first = await _first_frame(request_iterator)
            feed, replay, opened = await self._open(agent, first)
        except Exception as exc:  # noqa: BLE001 - becomes the stream's status
            _finish(context, _logged(exc))
            return
        try:
            await context.write(opened)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._write_loop(feed, replay, context))
                tg.create_task(self._read_loop(agent, feed, request_iterator))
                tg.create_task(self._keep_alive(agent, feed))
                tg.create_task(_until_ended(feed))
        except* _Ended:
            pass
        except* (TalkwireError, grpc.aio.AioRpcError) as group:
            feed.terminate(status_for(group.exceptions[0]))
        finally:
            self._hub.unwatch(feed)
            if self._attending.get(feed.session_id) is feed:
                del self._attending[feed.session_id]
        _finish(context, feed.status)

    async def _open(
        self, agent: Identity, first: agent_pb2.AttendRequest
    ) -> tuple[Feed, list[StoredFrame], agent_pb2.AttendResponse]:
        op = first.open
        _check_session_id(op.session_id)
        await self._desk.handoffs.seen(op.session_id, agent.subject)  # held by this agent?
        feed = self._hub.watch(op.session_id, after_seq=op.last_seq)
        try:
            record = await self._store.get_session(op.session_id)
            if record is None or not record.active:
                raise NotFoundError(f"session {op.session_id} is closed")
            replay = await self._store.replay(record, op.last_seq)
            rec = await self._desk.handoffs.get(op.session_id)
            assert rec is not None  # noqa: S101 - seen() found it
        except BaseException:
            self._hub.unwatch(feed)
            raise
        old = self._attending.get(op.session_id)
        if old is not None:
            old.terminate(superseded_status())
        self._attending[op.session_id] = feed
        head = replay[-1].seq if replay else max(record.head_seq, op.last_seq)
        opened = agent_pb2.AttendResponse(in_reply_to=first.id)
        opened.attended.CopyFrom(
            agent_pb2.Attended(
                session_id=record.id,
                replayed=len(replay),
                head_seq=head,
                session=_queued_session(rec, dict(record.identity.claims), 0, head),
            )
        )
        return feed, replay, opened

    async def _write_loop(
        self,
        feed: Feed,
        replay: list[StoredFrame],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        try:
            async for payload in feed.payloads(replay):
                if payload[:1] != _DURABLE:  # a transient AttendResponse (pong, error)
                    response = agent_pb2.AttendResponse.FromString(payload)
                else:
                    frame = chat_pb2.ConverseResponse.FromString(payload)
                    response = agent_pb2.AttendResponse(
                        session_frame=frame, in_reply_to=frame.in_reply_to
                    )
                await context.write(response)
        except (TalkwireError, grpc.aio.AioRpcError) as exc:
            feed.terminate(status_for(exc))

    async def _read_loop(
        self, agent: Identity, feed: Feed, requests: AsyncIterator[agent_pb2.AttendRequest]
    ) -> None:
        try:
            async for request in requests:
                if feed.ended.is_set():
                    return
                try:
                    if await self._on_frame(agent, feed, request):
                        return
                except TalkwireError as exc:
                    _send_error(feed, request.id, exc)
        except grpc.aio.AioRpcError as exc:
            feed.terminate(status_for(exc))
            return
        feed.close()

    async def _on_frame(
        self, agent: Identity, feed: Feed, request: agent_pb2.AttendRequest
    ) -> bool:
        """Handle one agent frame; True when the stream is done (released or closed)."""
        sid = feed.session_id
        kind = request.WhichOneof("frame")
        if len(request.id) > 128:
            raise InvalidArgumentError("frame id longer than 128 characters")
        if kind == "message":
            template = self._agent_reply(agent, request)
            frames = await self._desk.handoffs.agent_append(sid, agent.subject, [template])
            self._hub.deliver({sid: frames})
        elif kind == "ack":
            if request.ack.seq <= feed.sent_seq:
                await self._desk.handoffs.seen(sid, agent.subject, pin_seq=request.ack.seq)
        elif kind == "release":
            await self._desk.release(sid, agent.subject, request.release.reason)
            feed.close()
            return True
        elif kind == "close":
            await self._desk.close(sid, agent.subject, request.close.reason)
            feed.close()
            return True
        elif kind == "ping":
            pong = agent_pb2.AttendResponse(in_reply_to=request.id)
            pong.pong.data = request.ping.data
            feed.send_transient(pong.SerializeToString())
        elif kind == "open":
            raise InvalidArgumentError("the stream is already open")
        else:
            raise InvalidArgumentError("empty or unknown frame")
        return False

    def _agent_reply(self, agent: Identity, request: agent_pb2.AttendRequest) -> bytes:
        msg = request.message
        if not msg.text.strip():
            raise InvalidArgumentError("message.text is empty")
        if len(msg.text) > self._config.max_text_chars:
            raise InvalidArgumentError(
                f"message.text longer than {self._config.max_text_chars} characters"
            )
        if len(msg.quick_replies) > _MAX_QUICK_REPLIES:
            raise InvalidArgumentError(f"at most {_MAX_QUICK_REPLIES} quick replies")
        quick = []
        for qr in msg.quick_replies:
            if not qr.label or not qr.intent:
                raise InvalidArgumentError("a quick reply needs a label and an intent")
            quick.append(QuickReply(qr.label, qr.intent, json_format.MessageToDict(qr.parameters)))
        return authored_reply(
            "agent",
            msg.text,
            author_id=agent.subject,
            display_name=str(agent.claims.get("name") or agent.subject),
            quick_replies=quick,
            in_reply_to=request.id,
        )

    async def _keep_alive(self, agent: Identity, feed: Feed) -> None:
        """Refresh the agent's claim; end the stream when the session left this agent."""
        interval = max(0.5, self._desk.settings.agent_timeout / 3)
        while not feed.ended.is_set():
            await asyncio.sleep(interval)
            try:
                await self._desk.handoffs.seen(feed.session_id, agent.subject)
            except TalkwireError as exc:
                if exc.code == grpc.StatusCode.UNAVAILABLE:
                    continue  # the store is away: try again, the timeout is generous
                feed.terminate(status_for(exc))
                return


_DURABLE = b"\x08"  # a durable frame starts with its seq (ConverseResponse field 1, varint)


class _Ended(Exception):
    """Raised inside the stream's TaskGroup to stop its tasks."""


async def _until_ended(feed: Feed) -> None:
    await feed.ended.wait()
    raise _Ended


def _draining() -> TalkwireError:
    return UnavailableError("server is shutting down; connect to another server")


async def _first_frame(requests: AsyncIterator[agent_pb2.AttendRequest]) -> agent_pb2.AttendRequest:
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        raise InvalidArgumentError("the stream ended before an open frame") from None
    if first.WhichOneof("frame") != "open":
        raise InvalidArgumentError("the first frame must be open")
    return first


def _check_session_id(session_id: str) -> None:
    if not session_id or len(session_id) > 64:
        raise InvalidArgumentError("session_id: 1 to 64 characters")


def _send_error(feed: Feed, frame_id: str, exc: TalkwireError) -> None:
    response = agent_pb2.AttendResponse(in_reply_to=frame_id)
    response.error.code = exc.code.name
    response.error.message = exc.message
    response.error.retriable = exc.retriable
    feed.send_transient(response.SerializeToString())


def _logged(exc: BaseException) -> Status:
    status = status_for(exc)
    if status.code == grpc.StatusCode.INTERNAL:
        log.error("Attend failed", exc_info=exc)
    return status


def _finish(context: grpc.aio.ServicerContext[Any, Any], status: Status | None) -> None:
    if status is None or status.code == grpc.StatusCode.OK:
        return
    context.set_code(status.code)
    context.set_details(status.message)
    with contextlib.suppress(Exception):
        context.set_trailing_metadata((("talkwire-retriable", "1" if status.retriable else "0"),))
