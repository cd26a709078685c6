"""Building a store with an outbound section, and driving a small conversation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.frames import encode_template
from talkwire.server.identity import Identity
from talkwire.server.outbound.service import OutboundService, recorder_for
from talkwire.server.outbound.settings import OutboundSettings
from talkwire.server.store import FanoutEvent, SessionStore
from talkwire.v1 import chat_pb2
from tests.support.history import OutboundHistory


@asynccontextmanager
async def outbound_store(
    url: str, section: Mapping[str, Any], connectors: Any = None
) -> AsyncIterator[tuple[SessionStore, OutboundService]]:
    settings = OutboundSettings.from_config(section)
    async with SessionStore(url, events=recorder_for(settings)) as store:
        registry = connectors if connectors is not None else ConnectorRegistry({})
        async with OutboundService(settings, store, registry) as service:
            yield store, service


def user_message(text: str, frame_id: str = "f1") -> bytes:
    req = chat_pb2.ConverseRequest(id=frame_id)
    req.message.text = text
    return req.SerializeToString()


def reply(text: str, frame_id: str = "f1") -> bytes:
    frame = chat_pb2.ConverseResponse(in_reply_to=frame_id)
    frame.reply.text = text
    return encode_template(frame)


async def converse(store: SessionStore, turns: int, *, subject: str = "alice") -> str:
    """Open a session and run ``turns`` turns (one user message, one reply each)."""
    record, _ = await store.create_session(Identity(subject), channel="web")
    for i in range(turns):
        fid = f"f{i}"
        await store.append(record.id, [reply(f"answer {i}", fid)], turn=user_message(f"q{i}", fid))
    return record.id


async def expected_history(service: OutboundService, session_ids: list[str]) -> OutboundHistory:
    """What the store committed, as the history checker's expectation."""
    history = OutboundHistory()
    for sid in session_ids:
        for e in await service.outbox.session_events(sid):
            history.expected(sid, f"{sid}:{e.id}", e.id, e.kind, e.seq)
    return history


def update_event(event_id: str, key: str, text: str) -> FanoutEvent:
    frame = chat_pb2.ConverseResponse()
    frame.update.event_id = event_id
    frame.update.key = key
    frame.update.text = text
    return FanoutEvent(event_id, encode_template(frame), keys=(key,))
