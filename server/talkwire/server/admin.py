"""``talkwire.v1.AdminService``: sessions, Publish, Watch and connectors for internal callers.

Every call needs an identity with the ``admin`` role.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from redis.exceptions import RedisError

from talkwire.connectors.base import CallContext
from talkwire.connectors.caller import caller_scope
from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.auth import Authenticator
from talkwire.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    TalkwireError,
    status_for,
)
from talkwire.server.frames import jsonable, now_timestamp
from talkwire.server.hub import SessionHub
from talkwire.server.identity import Identity
from talkwire.server.outbound.service import OutboundService
from talkwire.server.outbound.settings import OutboundSettings
from talkwire.server.store import FanoutResult, SessionRecord, SessionStore
from talkwire.v1 import admin_pb2, admin_pb2_grpc, chat_pb2, events_pb2

__all__ = ["AdminService", "Publisher"]

log = logging.getLogger(__name__)

_R = TypeVar("_R")
_MAX_PAGE = 1000


class Publisher(Protocol):
    """Routes an admin-published event (the EventRouter implements it)."""

    async def publish(
        self,
        event: events_pb2.ChangeEvent,
        *,
        session_id: str | None = None,
        key: str | None = None,
    ) -> FanoutResult: ...


def session_message(
    record: SessionRecord, *, attached: bool, subs: list[str], where: str | None = None
) -> admin_pb2.Session:
    """The wire form of a session row.

    ``where`` is the replica holding the live attachment according to the
    attachment registry ("" when nobody holds it); ``None`` when there is no
    registry (one replica), then the ``sessions.replica`` column is used.
    """
    replica = (record.replica or "") if where is None else where
    msg = admin_pb2.Session(
        session_id=record.id,
        subject=record.subject,
        channel=record.channel,
        locale=record.locale,
        attributes=dict(record.attributes),
        state=record.state,  # type: ignore[arg-type]
        head_seq=record.head_seq,
        acked_seq=record.acked_seq,
        attached=attached or bool(replica),
        subscriptions=subs,
        replica=replica,
    )
    msg.created_at.CopyFrom(now_timestamp(record.created_at))
    msg.last_active_at.CopyFrom(now_timestamp(record.last_active_at))
    return msg


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """The admin servicer; translate errors to statuses in one place (:meth:`_call`)."""

    def __init__(
        self,
        *,
        store: SessionStore,
        hub: SessionHub,
        authenticator: Authenticator,
        publisher: Publisher,
        connectors: ConnectorRegistry,
        outbound: OutboundService | None = None,
    ) -> None:
        self._store = store
        self._outbound = outbound or OutboundService(
            OutboundSettings.from_config({}), store, connectors
        )
        self._hub = hub
        self._auth = authenticator
        self._publisher = publisher
        self._connectors = connectors

    def _admin(self, context: grpc.aio.ServicerContext[Any, Any]) -> Identity:
        identity = self._auth.authenticate(context.invocation_metadata() or ())
        if not identity.is_admin:
            raise PermissionDeniedError("the admin role is required")
        return identity

    async def _call(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        body: Callable[[Identity], Awaitable[_R]],
    ) -> _R:
        try:
            return await body(self._admin(context))
        except Exception as exc:
            status = status_for(exc)
            if status.code == grpc.StatusCode.INTERNAL:
                log.exception("admin call failed")
            await context.abort(status.code, status.message)
            raise AssertionError("unreachable") from exc

    async def _where(self, session_ids: list[str]) -> dict[str, str] | None:
        """Where each session is attached, from the registry (None: no registry, or Redis down)."""
        try:
            return await self._hub.attached_where(session_ids)
        except (RedisError, OSError) as exc:
            log.warning("attachment registry unavailable (%r); showing sessions.replica", exc)
            return None

    def _message(
        self, record: SessionRecord, subs: list[str], where: dict[str, str] | None
    ) -> admin_pb2.Session:
        return session_message(
            record,
            attached=self._hub.is_attached(record.id),
            subs=subs,
            where=None if where is None else where.get(record.id, ""),
        )

    async def _session(self, session_id: str) -> admin_pb2.Session:
        record = await self._store.get_session(session_id)
        if record is None:
            raise NotFoundError(f"session {session_id} not found")
        subs = await self._store.subscriptions(session_id)
        return self._message(record, subs, await self._where([session_id]))

    async def ListSessions(
        self,
        request: admin_pb2.ListSessionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.ListSessionsResponse:
        async def body(_: Identity) -> admin_pb2.ListSessionsResponse:
            size = min(request.page_size or 100, _MAX_PAGE)
            records = await self._store.list_sessions(
                subject=request.subject or None,
                key=request.key or None,
                include_closed=request.include_closed,
                after_id=request.page_token,
                limit=size,
            )
            out = admin_pb2.ListSessionsResponse()
            where = await self._where([r.id for r in records])
            for record in records:
                subs = await self._store.subscriptions(record.id)
                out.sessions.append(self._message(record, subs, where))
            if len(records) == size:
                out.next_page_token = records[-1].id
            return out

        return await self._call(context, body)

    async def GetSession(
        self, request: admin_pb2.GetSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetSessionResponse:
        async def body(_: Identity) -> admin_pb2.GetSessionResponse:
            return admin_pb2.GetSessionResponse(session=await self._session(request.session_id))

        return await self._call(context, body)

    async def CloseSession(
        self, request: admin_pb2.CloseSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.CloseSessionResponse:
        async def body(_: Identity) -> admin_pb2.CloseSessionResponse:
            if not await self._store.close_session(request.session_id):
                raise NotFoundError(f"session {request.session_id} not found or already closed")
            self._hub.close_session(request.session_id, request.reason or "closed by an admin")
            return admin_pb2.CloseSessionResponse(session=await self._session(request.session_id))

        return await self._call(context, body)

    async def Publish(
        self, request: admin_pb2.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.PublishResponse:
        async def body(_: Identity) -> admin_pb2.PublishResponse:
            target = request.WhichOneof("target")
            if target is None:
                raise InvalidArgumentError("publish needs a session_id or a key")
            event = events_pb2.ChangeEvent()
            event.CopyFrom(request.event)
            result = await self._publisher.publish(
                event,
                session_id=request.session_id if target == "session_id" else None,
                key=request.key if target == "key" else None,
            )
            event_id = (
                event.id or next(iter(result.delivered), "") or next(iter(result.duplicates), "")
            )
            return admin_pb2.PublishResponse(
                event_id=event_id,
                delivered=sum(result.delivered.values()),
                duplicate=bool(result.duplicates),
            )

        return await self._call(context, body)

    async def Watch(
        self, request: admin_pb2.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[admin_pb2.WatchResponse]:
        try:
            self._admin(context)
            record = await self._store.get_session(request.session_id)
            if record is None:
                raise NotFoundError(f"session {request.session_id} not found")
            feed = self._hub.watch(record.id, after_seq=request.after_seq)
            replay = await self._store.replay(record, request.after_seq)
        except TalkwireError as exc:
            await context.abort(exc.code, exc.message)
            return
        try:
            async for payload in feed.payloads(replay):
                frame = chat_pb2.ConverseResponse.FromString(payload)
                yield admin_pb2.WatchResponse(session_id=record.id, frame=frame)
        finally:
            self._hub.unwatch(feed)
        if feed.status is not None:
            await context.abort(feed.status.code, feed.status.message)

    async def ListConnectors(
        self,
        request: admin_pb2.ListConnectorsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.ListConnectorsResponse:
        async def body(_: Identity) -> admin_pb2.ListConnectorsResponse:
            out = admin_pb2.ListConnectorsResponse()
            for name in self._connectors.list():
                connector = self._connectors.get(name)
                info = out.connectors.add(name=connector.name, type=connector.type)
                for op in connector.operations.values():
                    op_info = info.operations.add(
                        name=op.name, description=op.description, write=op.write, result=op.result
                    )
                    for p in op.parameters:
                        op_info.parameters.add(
                            name=p.name, type=p.type, required=p.required, description=p.description
                        )
            return out

        return await self._call(context, body)

    async def GetTranscript(
        self, request: admin_pb2.GetTranscriptRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetTranscriptResponse:
        async def body(_: Identity) -> admin_pb2.GetTranscriptResponse:
            if await self._store.get_session(request.session_id) is None:
                raise NotFoundError(f"session {request.session_id} not found")
            size = min(request.page_size or 100, _MAX_PAGE)
            after = _page_after(request.page_token)
            events = await self._outbound.transcript(request.session_id, after=after, limit=size)
            token = str(events[-1].position) if len(events) == size else ""
            return admin_pb2.GetTranscriptResponse(events=events, next_page_token=token)

        return await self._call(context, body)

    async def GetOutboundStatus(
        self,
        request: admin_pb2.GetOutboundStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.GetOutboundStatusResponse:
        async def body(_: Identity) -> admin_pb2.GetOutboundStatusResponse:
            sinks = await self._outbound.status()
            return admin_pb2.GetOutboundStatusResponse(
                sinks=[
                    admin_pb2.OutboundSinkStatus(
                        name=s.name,
                        type=s.type,
                        pending=s.pending,
                        oldest_pending_seconds=s.oldest_pending_seconds,
                        dead_lettered=s.dead_lettered,
                        delivered=s.delivered,
                        retried=s.retried,
                        failed=s.failed,
                        breaker=s.breaker,
                    )
                    for s in sinks
                ],
                outbox_depth=sum(s.pending for s in sinks),
                oldest_pending_seconds=max((s.oldest_pending_seconds for s in sinks), default=0.0),
            )

        return await self._call(context, body)

    async def RedriveOutbound(
        self,
        request: admin_pb2.RedriveOutboundRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.RedriveOutboundResponse:
        async def body(_: Identity) -> admin_pb2.RedriveOutboundResponse:
            if request.sink and request.sink not in self._outbound.sink_names():
                raise NotFoundError(f"no outbound sink {request.sink!r}")
            return admin_pb2.RedriveOutboundResponse(
                requeued=await self._outbound.redrive(request.sink)
            )

        return await self._call(context, body)

    async def InvokeConnector(
        self,
        request: admin_pb2.InvokeConnectorRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.InvokeConnectorResponse:
        async def body(identity: Identity) -> admin_pb2.InvokeConnectorResponse:
            claims = json_format.MessageToDict(request.claims) if request.claims.fields else None
            subject = request.subject or identity.subject
            if claims is None:
                claims = dict(identity.claims) if subject == identity.subject else {}
            ctx = CallContext(
                subject=subject,
                claims=caller_scope(subject, claims),
                deadline=_deadline(context),
                idempotency_key=request.idempotency_key or None,
            )
            params = json_format.MessageToDict(request.parameters)
            result = await self._connectors.invoke(
                request.connector, request.operation, params, ctx
            )
            out = admin_pb2.InvokeConnectorResponse()
            out.result.CopyFrom(_to_value(result))
            out.completed_at.CopyFrom(now_timestamp())
            return out

        return await self._call(context, body)


def _page_after(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit():
        raise InvalidArgumentError("page_token is not one this server returned")
    return int(token)


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _to_value(value: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    json_format.ParseDict(jsonable(value), out)
    return out
