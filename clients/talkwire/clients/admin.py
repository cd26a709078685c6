"""Async client for ``talkwire.v1.AdminService`` (every call needs the admin role).

Usage::

    async with AdminClient("127.0.0.1:50051", token=admin_token) as admin:
        for session in (await admin.list_sessions(subject="alice")).sessions:
            print(session.session_id)
        result = await admin.invoke_connector("crm", "get_order", {"order_id": 1001})

Every failed RPC raises :class:`~talkwire.clients.errors.RpcError` (``.code``,
``.details``). Unary calls use ``timeout`` seconds as their deadline
(``None``: no deadline); ``watch`` has none.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from talkwire.clients.channel import ServiceClient
from talkwire.clients.convert import from_value, to_struct
from talkwire.clients.errors import rpc_error_from
from talkwire.v1 import admin_pb2, admin_pb2_grpc, chat_pb2, conversation_pb2, events_pb2

__all__ = ["AdminClient", "change_event"]

_OPS = {
    "create": events_pb2.CHANGE_OP_CREATE,
    "update": events_pb2.CHANGE_OP_UPDATE,
    "delete": events_pb2.CHANGE_OP_DELETE,
    "snapshot": events_pb2.CHANGE_OP_SNAPSHOT,
}


def change_event(
    *,
    id: str = "",
    source: str = "",
    type: str = "",
    keys: Sequence[str] = (),
    op: str | events_pb2.ChangeOp.ValueType = events_pb2.CHANGE_OP_UNSPECIFIED,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    text: str = "",
    occurred_at: dt.datetime | None = None,
    attributes: Mapping[str, str] | None = None,
) -> events_pb2.ChangeEvent:
    """Build a :class:`ChangeEvent`; ``data`` is an alias of ``after``; ``op`` may be a name."""
    if data is not None and after is not None:
        raise ValueError("pass either data or after, not both")
    if isinstance(op, str):
        try:
            op = _OPS[op.lower()]
        except KeyError:
            raise ValueError(f"unknown op {op!r}; expected one of {sorted(_OPS)}") from None
    event = events_pb2.ChangeEvent(
        id=id,
        source=source,
        type=type,
        keys=list(keys),
        op=op,
        text=text,
        attributes=dict(attributes or {}),
    )
    if before is not None:
        event.before.CopyFrom(to_struct(before))
    payload = after if after is not None else data
    if payload is not None:
        event.after.CopyFrom(to_struct(payload))
    if occurred_at is not None:
        ts = Timestamp()
        ts.FromDatetime(occurred_at if occurred_at.tzinfo else occurred_at.replace(tzinfo=dt.UTC))
        event.occurred_at.CopyFrom(ts)
    return event


class AdminClient(ServiceClient["admin_pb2_grpc.AdminServiceAsyncStub"]):
    """Typed wrapper over ``AdminService``; an async context manager owning its channel."""

    _service = "AdminClient"

    def _make_stub(self, channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceAsyncStub:
        return admin_pb2_grpc.AdminServiceStub(channel)

    # -- sessions --------------------------------------------------------------

    async def list_sessions(
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
        try:
            return await self._get_stub().ListSessions(
                request, metadata=self._metadata, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None

    async def iter_sessions(
        self,
        *,
        subject: str = "",
        key: str = "",
        include_closed: bool = False,
        page_size: int = 0,
    ) -> AsyncIterator[admin_pb2.Session]:
        """Every matching session, following page tokens."""
        token = ""
        while True:
            page = await self.list_sessions(
                subject=subject,
                key=key,
                include_closed=include_closed,
                page_size=page_size,
                page_token=token,
            )
            for session in page.sessions:
                yield session
            token = page.next_page_token
            if not token:
                return

    async def get_session(self, session_id: str) -> admin_pb2.Session:
        try:
            response = await self._get_stub().GetSession(
                admin_pb2.GetSessionRequest(session_id=session_id),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None
        return response.session

    async def close_session(self, session_id: str, reason: str = "") -> admin_pb2.Session:
        try:
            response = await self._get_stub().CloseSession(
                admin_pb2.CloseSessionRequest(session_id=session_id, reason=reason),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None
        return response.session

    # -- publish / watch ---------------------------------------------------------

    async def publish(
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
        """Push an update into one session (``session_id=``) or every subscriber of ``key=``.

        Pass a ready ``event``, or build one from ``text``/``data``/``type``/
        ``source``/``event_id`` (an empty id lets the server assign one; a
        repeated id is deduplicated and reported as ``duplicate``).
        """
        if (session_id is None) == (key is None):
            raise ValueError("pass exactly one of session_id= or key=")
        if event is None:
            event = change_event(id=event_id, source=source, type=type, text=text, data=data)
        elif text or data is not None or type or source or event_id:
            raise ValueError("pass either event= or text/data/type/source/event_id")
        request = admin_pb2.PublishRequest(event=event)
        if session_id is not None:
            request.session_id = session_id
        else:
            assert key is not None  # noqa: S101 - checked above
            request.key = key
        try:
            return await self._get_stub().Publish(
                request, metadata=self._metadata, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None

    async def watch(
        self, session_id: str, after_seq: int = 0
    ) -> AsyncIterator[chat_pb2.ConverseResponse]:
        """A session's durable frames with ``seq > after_seq``: the retained ones, then live.

        Ends when the server ends the stream; a non-OK status raises ``RpcError``.
        Closing the iterator (``aclose()`` or leaving ``async for``) cancels the call.
        """
        call = self._get_stub().Watch(
            admin_pb2.WatchRequest(session_id=session_id, after_seq=after_seq),
            metadata=self._metadata,
        )
        try:
            async for response in call:
                yield response.frame
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None
        finally:
            call.cancel()

    # -- connectors ----------------------------------------------------------------

    async def list_connectors(self) -> list[admin_pb2.ConnectorInfo]:
        try:
            response = await self._get_stub().ListConnectors(
                admin_pb2.ListConnectorsRequest(), metadata=self._metadata, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None
        return list(response.connectors)

    async def invoke_connector(
        self,
        connector: str,
        operation: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        subject: str | None = None,
        claims: Mapping[str, Any] | None = None,
        idempotency_key: str = "",
    ) -> Any:
        """Invoke a connector operation; returns the result as a plain Python value.

        ``subject``/``claims`` act as another identity (defaults to the caller's).
        """
        request = admin_pb2.InvokeConnectorRequest(
            connector=connector,
            operation=operation,
            parameters=to_struct(parameters),
            subject=subject or "",
            idempotency_key=idempotency_key,
        )
        if claims is not None:
            request.claims.CopyFrom(to_struct(claims))
        try:
            response = await self._get_stub().InvokeConnector(
                request, metadata=self._metadata, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None
        return from_value(response.result)

    # -- outbound --------------------------------------------------------------

    async def get_transcript(
        self, session_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.GetTranscriptResponse:
        """One page of a session's transcript (user turns and durable frames, in order)."""
        request = admin_pb2.GetTranscriptRequest(
            session_id=session_id, page_size=page_size, page_token=page_token
        )
        try:
            return await self._get_stub().GetTranscript(
                request, metadata=self._metadata, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None

    async def iter_transcript(
        self, session_id: str, *, page_size: int = 0
    ) -> AsyncIterator[conversation_pb2.ConversationEvent]:
        """Every transcript event of a session, following page tokens."""
        token = ""
        while True:
            page = await self.get_transcript(session_id, page_size=page_size, page_token=token)
            for event in page.events:
                yield event
            token = page.next_page_token
            if not token:
                return

    async def outbound_status(self) -> admin_pb2.GetOutboundStatusResponse:
        """Outbox depth, oldest pending age and per-sink counters."""
        try:
            return await self._get_stub().GetOutboundStatus(
                admin_pb2.GetOutboundStatusRequest(), metadata=self._metadata, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None

    async def redrive_outbound(self, sink: str = "") -> int:
        """Queue dead-lettered deliveries again (of one sink, or all); returns how many."""
        try:
            response = await self._get_stub().RedriveOutbound(
                admin_pb2.RedriveOutboundRequest(sink=sink),
                metadata=self._metadata,
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error_from(exc) from None
        return response.requeued
