"""The MariaDB turn path: asyncmy statements, events in order, dead connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncmy
import pytest

from talkwire.server.errors import NotFoundError, UnavailableError
from talkwire.server.frames import encode_template
from talkwire.server.handoff import HandoffStore
from talkwire.server.identity import Identity
from talkwire.server.outbound.record import EventRecorder, SinkRoute
from talkwire.server.store import FanoutEvent, SessionStore
from talkwire.v1 import chat_pb2
from tests.support.broker import free_port
from tests.support.databases import MARIADB, temp_database

pytestmark = pytest.mark.mariadb

ALICE = Identity("alice", {"customer_id": "c-100"})


def _reply(text: str) -> bytes:
    frame = chat_pb2.ConverseResponse()
    frame.reply.text = text
    return encode_template(frame)


@pytest.fixture
async def my_url(tmp_path: Path) -> AsyncIterator[str]:
    async with temp_database("mariadb", tmp_path) as url:
        yield url


@pytest.fixture
async def store(my_url: str) -> AsyncIterator[SessionStore]:
    routes = [SinkRoute("crm", frozenset({"frame.appended"})), SinkRoute("all")]
    async with SessionStore(my_url, events=EventRecorder(routes)) as s:
        yield s


async def _query(db: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncmy.connect(**MARIADB, db=db, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())
    finally:
        conn.close()


async def test_the_turn_runs_on_asyncmy(store: SessionStore) -> None:
    assert store.my is not None
    assert store.pg is None
    assert store.sqlite is None


async def test_append_writes_frames_events_and_pending_rows_in_order(
    store: SessionStore, my_url: str
) -> None:
    record, _ = await store.create_session(ALICE)
    frames = await store.append(
        record.id, [_reply("a"), _reply("b")], dialogue={"n": 1}, turn=b"turn-bytes"
    )
    assert [f.seq for f in frames] == [1, 2]
    assert [chat_pb2.ConverseResponse.FromString(f.payload).seq for f in frames] == [1, 2]
    assert await store.frames_after(record.id, 0) == frames
    db = my_url.rsplit("/", 1)[1]
    events = await _query(
        db,
        "SELECT id, kind, seq, body FROM talkwire_conversation_events "
        "WHERE session_id = %s ORDER BY id",
        record.id,
    )
    assert [(k, s, bytes(b)) for _, k, s, b in events[1:]] == [
        ("turn.received", 0, b"turn-bytes"),
        ("frame.appended", 1, frames[0].payload),
        ("frame.appended", 2, frames[1].payload),
    ]
    pending = await _query(
        db,
        "SELECT sink, event_id FROM talkwire_outbound_pending WHERE session_id = %s "
        "ORDER BY event_id, sink",
        record.id,
    )
    ids = [e[0] for e in events]
    assert [tuple(p) for p in pending] == [
        ("all", ids[0]),
        ("all", ids[1]),
        ("all", ids[2]),
        ("crm", ids[2]),
        ("all", ids[3]),
        ("crm", ids[3]),
    ]
    found = await store.get_session(record.id)
    assert found is not None
    assert (found.head_seq, found.dialogue) == (2, {"n": 1})
    await store.ack(record.id, 1)
    assert [f.seq for f in await store.frames_after(record.id, 0)] == [2]
    assert await HandoffStore(store).get(record.id) is None
    await store.close_session(record.id)
    with pytest.raises(NotFoundError):
        await store.append(record.id, [_reply("late")])


async def test_killed_connections_are_replaced_without_an_error(
    store: SessionStore, my_url: str
) -> None:
    record, _ = await store.create_session(ALICE)
    await store.append(record.id, [_reply("before")])
    db = my_url.rsplit("/", 1)[1]
    ids = await _query(
        "information_schema",
        "SELECT id FROM information_schema.processlist WHERE db = %s",
        db,
    )
    assert ids
    for (pid,) in ids:
        await _query("information_schema", f"KILL {int(pid)}")
    frames = await store.append(record.id, [_reply("after")])
    assert [f.seq for f in frames] == [2]
    assert [f.seq for f in await store.frames_after(record.id, 0)] == [1, 2]


async def test_an_unreachable_database_is_unavailable() -> None:
    store = SessionStore(f"mysql+asyncmy://root@127.0.0.1:{free_port()}/test")
    try:
        with pytest.raises(UnavailableError):
            await store.append("s", [_reply("x")])
        with pytest.raises(UnavailableError):
            await store.frames_after("s", 0)
        with pytest.raises(UnavailableError):
            await store.ack("s", 1)
    finally:
        await store.aclose()


async def test_resume_and_a_fanout_past_one_chunk(store: SessionStore) -> None:
    """More subscribers than one ``IN`` list / ``CASE`` chunk: every one gets its frame
    with the next seq; a resume claims the session and records the replica."""
    sessions = [(await store.create_session(ALICE))[0] for _ in range(1100)]
    for s in sessions:
        await store.subscribe(s.id, "news")
    first = sessions[0]
    await store.append(first.id, [_reply("own")])
    result = await store.fanout([FanoutEvent("e1", _reply("hello"), keys=("news",))])
    assert result.delivered == {"e1": 1100}
    assert {sid: [f.seq for f in fs] for sid, fs in result.frames.items()} == {
        s.id: [2 if s.id == first.id else 1] for s in sessions
    }
    again = await store.fanout([FanoutEvent("e1", _reply("hello"), keys=("news",))])
    assert again.duplicates == ["e1"]
    claimed = await store.claim_session(first.id, lambda r: r or first, replica="r-1")
    assert claimed.id == first.id
    found = await store.get_session(first.id)
    assert found is not None
    assert (found.replica, found.head_seq) == ("r-1", 2)
