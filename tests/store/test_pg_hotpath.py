"""The PostgreSQL hot path: asyncpg statements, one-statement appends, dead connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from talkwire.server.errors import NotFoundError, UnavailableError
from talkwire.server.frames import encode_template, with_seq
from talkwire.server.identity import Identity
from talkwire.server.outbound.record import EventRecorder, SinkRoute
from talkwire.server.store import FanoutEvent, SessionStore
from talkwire.v1 import chat_pb2
from tests.support.broker import free_port
from tests.support.databases import PG_DSN, temp_database

pytestmark = pytest.mark.postgres

ALICE = Identity("alice", {"customer_id": "c-100"})


def _reply(text: str) -> bytes:
    frame = chat_pb2.ConverseResponse()
    frame.reply.text = text
    return encode_template(frame)


@pytest.fixture
async def pg_url(tmp_path: Path) -> AsyncIterator[str]:
    async with temp_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[SessionStore]:
    routes = [SinkRoute("crm", frozenset({"frame.appended"})), SinkRoute("all")]
    async with SessionStore(pg_url, events=EventRecorder(routes)) as s:
        yield s


async def _db(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))


async def test_the_hot_paths_run_on_asyncpg(store: SessionStore) -> None:
    assert store.pg is not None
    assert store.sqlite is None


@pytest.mark.parametrize("head", [0, 126, 127, 16382, 16383, 2**21 - 2, 2**35, 2**62])
async def test_append_prepends_the_seq_the_client_decodes(
    store: SessionStore, pg_url: str, head: int
) -> None:
    """The seq is prepended in SQL: the stored and delivered bytes are ``with_seq``'s, at
    every varint length."""
    record, _ = await store.create_session(ALICE)
    conn = await _db(pg_url)
    try:
        await conn.execute(
            "UPDATE talkwire_sessions SET head_seq = $1 WHERE id = $2", head, record.id
        )
    finally:
        await conn.close()
    templates = [_reply("one"), _reply("two")]
    frames = await store.append(record.id, templates)
    assert [f.seq for f in frames] == [head + 1, head + 2]
    assert [f.payload for f in frames] == [
        with_seq(head + 1 + i, t) for i, t in enumerate(templates)
    ]
    decoded = [chat_pb2.ConverseResponse.FromString(f.payload) for f in frames]
    assert [(m.seq, m.reply.text) for m in decoded] == [(head + 1, "one"), (head + 2, "two")]
    assert await store.frames_after(record.id, head) == frames


async def test_append_writes_events_in_order_with_their_pending_rows(
    store: SessionStore, pg_url: str
) -> None:
    record, _ = await store.create_session(ALICE)
    generation = store.events.generation
    frames = await store.append(
        record.id, [_reply("a"), _reply("b")], dialogue={"n": 1}, turn=b"turn-bytes"
    )
    assert store.events.generation > generation
    conn = await _db(pg_url)
    try:
        events = await conn.fetch(
            "SELECT id, kind, seq, body FROM talkwire_conversation_events "
            "WHERE session_id = $1 ORDER BY id",
            record.id,
        )
        pending = await conn.fetch(
            "SELECT sink, event_id FROM talkwire_outbound_pending WHERE session_id = $1 "
            "ORDER BY event_id, sink",
            record.id,
        )
    finally:
        await conn.close()
    appended = [(e["kind"], e["seq"], bytes(e["body"])) for e in events[1:]]
    assert [e["kind"] for e in events[:1]] == ["session.opened"]
    assert appended == [
        ("turn.received", 0, b"turn-bytes"),
        ("frame.appended", 1, frames[0].payload),
        ("frame.appended", 2, frames[1].payload),
    ]
    ids = {e["kind"] + str(e["seq"]): e["id"] for e in events}
    assert [(p["sink"], p["event_id"]) for p in pending] == [
        ("all", ids["session.opened0"]),
        ("all", ids["turn.received0"]),
        ("all", ids["frame.appended1"]),
        ("crm", ids["frame.appended1"]),
        ("all", ids["frame.appended2"]),
        ("crm", ids["frame.appended2"]),
    ]
    found = await store.get_session(record.id)
    assert found is not None
    assert found.dialogue == {"n": 1}
    assert found.head_seq == 2


async def test_a_dialogue_only_save_and_a_closed_session(store: SessionStore) -> None:
    record, _ = await store.create_session(ALICE)
    assert await store.append(record.id, [], dialogue={"slot": "x"}) == []
    found = await store.get_session(record.id)
    assert found is not None
    assert found.dialogue == {"slot": "x"}
    assert found.head_seq == 0
    await store.close_session(record.id)
    with pytest.raises(NotFoundError):
        await store.append(record.id, [_reply("late")])


async def test_killed_connections_are_replaced_without_an_error(
    store: SessionStore, pg_url: str
) -> None:
    """``pg_terminate_backend`` of every pooled connection between two operations: the
    next ones run on fresh connections. A one-statement write sent on a connection the
    client has not yet seen die cannot tell whether it ran, so it may be UNAVAILABLE
    (retriable) -- never written twice."""
    record, _ = await store.create_session(ALICE)
    await store.subscribe(record.id, "order:1")
    await store.append(record.id, [_reply("before")])
    dbname = pg_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_DSN)
    try:
        killed = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            dbname,
        )
    finally:
        await admin.close()
    assert killed
    for _ in range(3):  # a gateway retries an UNAVAILABLE turn
        try:
            frames = await store.append(record.id, [_reply("after")])
            break
        except UnavailableError:
            continue
    assert [f.seq for f in frames] == [2]
    assert [f.seq for f in await store.frames_after(record.id, 0)] == [1, 2]
    result = await store.fanout([FanoutEvent("e1", _reply("pushed"), keys=("order:1",))])
    assert [f.seq for f in result.frames[record.id]] == [3]
    await store.ack(record.id, 3)
    assert await store.frames_after(record.id, 0) == []


async def test_an_unreachable_database_is_unavailable() -> None:
    """Nothing listens on the port: every hot operation is ``UNAVAILABLE``, not a crash."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test"
    store = SessionStore(url)  # not started: the schema step would fail the same way
    try:
        with pytest.raises(UnavailableError):
            await store.append("s", [_reply("x")])
        with pytest.raises(UnavailableError):
            await store.frames_after("s", 0)
        with pytest.raises(UnavailableError):
            await store.ack("s", 1)
        with pytest.raises(UnavailableError):
            await store.fanout([FanoutEvent("e1", _reply("x"), session_id="s")])
    finally:
        await store.aclose()


async def test_append_with_events_off_writes_frames_only(pg_url: str) -> None:
    async with SessionStore(pg_url, events=EventRecorder(enabled=False)) as store:
        record, _ = await store.create_session(ALICE)
        frames = await store.append(record.id, [_reply("x")], turn=b"t")
        assert [f.seq for f in frames] == [1]
        assert await store.frames_after(record.id, 0) == frames
    conn = await _db(pg_url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM talkwire_conversation_events")
    finally:
        await conn.close()
    assert count == 0


async def test_concurrent_fanouts_and_appends_keep_seqs_gap_free(store: SessionStore) -> None:
    """Fan-outs to overlapping sessions and appends at once: every frame gets its own seq,
    each session's seqs are 1..N without a gap, no write fails (locks in id order)."""
    sessions = [(await store.create_session(ALICE))[0] for _ in range(6)]
    for i, s in enumerate(sessions):
        await store.subscribe(s.id, "all")
        await store.subscribe(s.id, f"half:{i % 2}")
    jobs = [
        store.fanout([FanoutEvent(f"e{j}", _reply(f"e{j}"), keys=("all", f"half:{j % 2}"))])
        for j in range(12)
    ]
    jobs += [store.append(s.id, [_reply("a"), _reply("b")]) for s in sessions for _ in range(2)]
    await asyncio.gather(*jobs)
    for s in sessions:
        seqs = [f.seq for f in await store.frames_after(s.id, 0)]
        assert seqs == list(range(1, 12 + 4 + 1))
