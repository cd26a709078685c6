"""A test bot with handoff rules, agent tokens, and an Attend stream driver."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc

from talkwire.server.config import Config
from talkwire.v1 import agent_pb2, agent_pb2_grpc, chat_pb2
from tests.conftest import TOKENS, make_config
from tests.support.grpcx import metadata_for

AGENT_TOKENS = {
    # Ann and Ben serve billing; Gus serves only queues without a requirement.
    "ann-token": {
        "subject": "ann",
        "claims": {"team": "billing", "name": "Ann"},
        "roles": ["agent"],
    },
    "ben-token": {
        "subject": "ben",
        "claims": {"team": "billing", "name": "Ben"},
        "roles": ["agent"],
    },
    "gus-token": {"subject": "gus", "claims": {"team": "general"}, "roles": ["agent"]},
}

BOT: dict[str, Any] = {
    "name": "handoff-test",
    "fallback": {"reply": "Sorry, I did not get that."},
    "handoff": {"after_fallbacks": 2, "queue": "general", "reason": "the bot did not understand"},
    "intents": {
        "greet": {"examples": ["hello there", "hi"], "reply": "Hi! How can I help?"},
        "human": {
            "examples": ["talk to a person", "human agent please", "speak to someone"],
            "reply": "Connecting you to a person.",
            "handoff": {"queue": "billing", "reason": "asked for a person"},
        },
    },
}


def handoff_config(tmp_path: Path, **sections: Any) -> Config:
    raw: dict[str, Any] = {
        "server": {"handler": "dialogue"},
        "auth": {"kind": "static", "tokens": {**TOKENS, **AGENT_TOKENS}},
        "bot": BOT,
        "handoff": {"queues": {"billing": {"require": {"team": "billing"}}}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return make_config(tmp_path, **raw)


def agent_stub(channel: grpc.aio.Channel) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(channel)


async def rpc_code(call: Any) -> grpc.StatusCode:
    """The status code of a unary call that is expected to fail."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


class Attend:
    """One AgentService.Attend call driven frame by frame."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.call = agent_stub(channel).Attend(metadata=metadata_for(token))

    async def send(self, frame: agent_pb2.AttendRequest) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.call.write(frame)

    async def open(self, session_id: str, last_seq: int = 0) -> agent_pb2.Attended:
        await self.send(
            agent_pb2.AttendRequest(
                id="open", open=agent_pb2.AttendOpen(session_id=session_id, last_seq=last_seq)
            )
        )
        frame = await self.recv()
        assert frame.WhichOneof("frame") == "attended", frame
        return frame.attended

    async def recv(self, timeout: float = 15.0) -> agent_pb2.AttendResponse:
        async with asyncio.timeout(timeout):
            try:
                frame = await self.call.read()
            except grpc.aio.AioRpcError as exc:
                raise EOFError(f"stream ended: {exc.code()} {exc.details()}") from exc
        if frame is grpc.aio.EOF:
            raise EOFError(f"stream ended: {await self.call.code()} {await self.call.details()}")
        assert isinstance(frame, agent_pb2.AttendResponse)
        return frame

    async def session_frame(self) -> chat_pb2.ConverseResponse:
        frame = await self.recv()
        assert frame.WhichOneof("frame") == "session_frame", frame
        return frame.session_frame

    async def say(self, text: str, frame_id: str = "") -> None:
        await self.send(
            agent_pb2.AttendRequest(
                id=frame_id or text[:32], message=agent_pb2.AgentMessage(text=text)
            )
        )

    async def status(self, timeout: float = 15.0) -> grpc.StatusCode:
        async with asyncio.timeout(timeout):
            try:
                while await self.call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            code = await self.call.code()
        assert isinstance(code, grpc.StatusCode)
        return code

    def cancel(self) -> None:
        self.call.cancel()


def kind(frame: chat_pb2.ConverseResponse) -> str:
    """``handoff:QUEUED``, ``reply:agent``, ``reply:user``, ``reply:bot``, ... for assertions."""
    which = frame.WhichOneof("frame") or ""
    if which == "handoff":
        return "handoff:" + chat_pb2.HandoffState.Name(frame.handoff.state).removeprefix(
            "HANDOFF_STATE_"
        )
    if which == "reply":
        return "reply:" + (frame.reply.author.role or "bot")
    return which
