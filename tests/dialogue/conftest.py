"""Fixtures for the dialogue tests: a recording TurnContext and the REAL demo connectors.

The demo CRM is the SQLite database created by ``create_demo_crm`` in
``tmp_path``; the ERP is the demo REST server on loopback. Only the
TurnContext (the seam to the session core) is an in-test object.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from talkwire.server.dialogue import DialogueEngine, demo_bot_path, load_bot
from talkwire.server.errors import PermissionDeniedError
from talkwire.server.identity import Identity
from talkwire.server.turns import QuickReply, Turn

ALICE = Identity("alice", {"customer_id": "c-100"})
BOB = Identity("bob", {"customer_id": "c-200"})


@dataclass
class Frame:
    kind: str  # reply | prompt | error
    text: str
    quick_replies: tuple[QuickReply, ...] = ()
    data: Mapping[str, Any] | None = None
    intent: str = ""
    slot: str = ""
    code: grpc.StatusCode | None = None
    retriable: bool = False


@dataclass
class RecordingContext:
    """A TurnContext that records frames and subscriptions; state persists across turns."""

    identity: Identity = ALICE
    session_id: str = "s-1"
    locale: str = "en"
    state: MutableMapping[str, Any] = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    denied_prefixes: tuple[str, ...] = ()

    def reply(
        self,
        text: str,
        *,
        quick_replies: Sequence[QuickReply] = (),
        data: Mapping[str, Any] | None = None,
        intent: str = "",
    ) -> None:
        self.frames.append(Frame("reply", text, tuple(quick_replies), data, intent))

    def prompt(
        self,
        slot: str,
        text: str,
        *,
        quick_replies: Sequence[QuickReply] = (),
        intent: str = "",
    ) -> None:
        self.frames.append(Frame("prompt", text, tuple(quick_replies), None, intent, slot))

    def error(self, code: grpc.StatusCode, message: str, *, retriable: bool = False) -> None:
        self.frames.append(Frame("error", message, code=code, retriable=retriable))

    async def subscribe(self, key: str) -> None:
        if key.startswith(self.denied_prefixes):
            raise PermissionDeniedError(f"not allowed: {key}")
        if key not in self.subscriptions:
            self.subscriptions.append(key)

    async def unsubscribe(self, key: str) -> None:
        if key in self.subscriptions:
            self.subscriptions.remove(key)

    @property
    def last(self) -> Frame:
        return self.frames[-1]


class Conversation:
    """Drives an engine turn by turn, the way the session core does (one at a time)."""

    def __init__(self, engine: DialogueEngine, ctx: RecordingContext) -> None:
        self.engine = engine
        self.ctx = ctx
        self._n = 0

    async def say(self, text: str) -> Frame:
        self._n += 1
        before = len(self.ctx.frames)
        await self.engine.handle(Turn(frame_id=f"f{self._n}", text=text), self.ctx)
        assert len(self.ctx.frames) == before + 1, self.ctx.frames[before:]
        return self.ctx.last

    async def press(self, intent: str, **parameters: Any) -> Frame:
        self._n += 1
        before = len(self.ctx.frames)
        turn = Turn(frame_id=f"f{self._n}", intent=intent, parameters=parameters)
        await self.engine.handle(turn, self.ctx)
        assert len(self.ctx.frames) == before + 1, self.ctx.frames[before:]
        return self.ctx.last


@pytest.fixture
def crm_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'crm.db'}"


@pytest.fixture
def crm_db(crm_url: str) -> Path:
    return Path(crm_url.split("///", 1)[1])


@pytest.fixture
async def erp_url(crm_url: str) -> AsyncIterator[str]:
    """The demo REST ERP on loopback, serving the same demo database as the CRM."""
    from talkwire.server.demo.crm import create_demo_crm
    from talkwire.server.demo.erp import serve_demo_erp

    created = create_demo_crm(crm_url)
    if inspect.isawaitable(created):
        await created
    async with serve_demo_erp(crm_url=crm_url) as base_url:
        yield base_url


@pytest.fixture
async def registry(crm_url: str, erp_url: str) -> AsyncIterator[Any]:
    from talkwire.connectors.registry import ConnectorRegistry
    from talkwire.server.demo.connectors import demo_connector_sections

    async with ConnectorRegistry(demo_connector_sections(crm_url, erp_url)) as reg:
        yield reg


@pytest.fixture
def bot() -> Any:
    return load_bot(demo_bot_path())


@pytest.fixture
def engine(bot: Any, registry: Any) -> DialogueEngine:
    return DialogueEngine(bot, registry)


@pytest.fixture
def alice(engine: DialogueEngine) -> Conversation:
    return Conversation(engine, RecordingContext(identity=ALICE))


@pytest.fixture
def bob(engine: DialogueEngine) -> Conversation:
    return Conversation(engine, RecordingContext(identity=BOB, session_id="s-2"))
