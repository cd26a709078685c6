"""The SessionStore on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from talkwire.server import schema
from talkwire.server.errors import AlreadyExistsError, NotFoundError, OutOfRangeError
from talkwire.server.frames import encode_template
from talkwire.server.identity import Identity
from talkwire.server.store import FanoutEvent, Retention, SessionStore
from talkwire.v1 import chat_pb2
from tests.support.databases import temp_database

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]

ALICE = Identity("alice", {"customer_id": "c-100"})


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    clock = Clock()
    async with (
        temp_database(request.param, tmp_path) as url,
        SessionStore(url, retention=Retention(max_frames=5, max_age=100), clock=clock) as s,
    ):
        s.test_clock = clock  # type: ignore[attr-defined]
        yield s


def _update(text: str) -> bytes:
    frame = chat_pb2.ConverseResponse()
    frame.update.text = text
    return encode_template(frame)


def _texts(frames: list) -> list[tuple[int, str]]:  # type: ignore[type-arg]
    out = []
    for f in frames:
        msg = chat_pb2.ConverseResponse.FromString(f.payload)
        assert msg.seq == f.seq
        out.append((f.seq, msg.update.text))
    return out


async def test_session_roundtrip_and_token(store: SessionStore) -> None:
    record, token = await store.create_session(ALICE, channel="web", attributes={"a": "b"})
    found = await store.get_session(record.id)
    assert found is not None
    assert found.identity == ALICE
    assert found.channel == "web"
    assert found.attributes == {"a": "b"}
    assert found.token_matches(token)
    assert not found.token_matches("nope")
    assert await store.get_session("missing") is None


async def test_append_allocates_gap_free_seqs_under_concurrency(store: SessionStore) -> None:
    record, _ = await store.create_session(ALICE)
    batches = await asyncio.gather(
        *(store.append(record.id, [_update(f"{i}-{j}") for j in range(3)]) for i in range(10))
    )
    seqs = sorted(f.seq for batch in batches for f in batch)
    assert seqs == list(range(1, 31))
    for batch in batches:  # each batch got consecutive seqs
        assert [f.seq for f in batch] == list(range(batch[0].seq, batch[0].seq + 3))
    stored = await store.frames_after(record.id, 0)
    assert [f.seq for f in stored] == list(range(1, 31))


async def test_append_to_unknown_session_fails(store: SessionStore) -> None:
    with pytest.raises(NotFoundError):
        await store.append("missing", [_update("x")])


async def test_dialogue_state_is_saved_with_the_frames(store: SessionStore) -> None:
    record, _ = await store.create_session(ALICE)
    await store.append(record.id, [_update("x")], dialogue={"slot": {"order_id": 1001}})
    found = await store.get_session(record.id)
    assert found is not None
    assert found.dialogue == {"slot": {"order_id": 1001}}


async def test_fanout_reaches_subscribers_once_and_dedups(store: SessionStore) -> None:
    a, _ = await store.create_session(ALICE)
    b, _ = await store.create_session(ALICE)
    c, _ = await store.create_session(ALICE)
    await store.subscribe(a.id, "order:1")
    await store.subscribe(b.id, "order:1")
    await store.subscribe(b.id, "customer:c-100")
    result = await store.fanout(
        [
            FanoutEvent("e1", _update("shipped"), keys=("order:1", "customer:c-100")),
            FanoutEvent("e2", _update("nobody"), keys=("order:999",)),
            FanoutEvent("e3", _update("direct"), session_id=c.id),
        ]
    )
    assert result.delivered == {"e1": 2, "e2": 0, "e3": 1}
    assert _texts(result.frames[a.id]) == [(1, "shipped")]
    assert _texts(result.frames[b.id]) == [(1, "shipped")]  # two keys, one frame
    assert _texts(result.frames[c.id]) == [(1, "direct")]
    again = await store.fanout(
        [
            FanoutEvent("e1", _update("shipped"), keys=("order:1",)),
            FanoutEvent("e4", _update("x"), keys=("order:1",)),
            FanoutEvent("e4", _update("x"), keys=("order:1",)),
        ]
    )
    assert sorted(again.duplicates) == ["e1", "e4"]
    assert _texts(again.frames[a.id]) == [(2, "x")]
    assert _texts(await store.frames_after(a.id, 0)) == [(1, "shipped"), (2, "x")]


async def test_fanout_records_each_frame_of_a_batch_in_its_sessions_transcript(
    store: SessionStore,
) -> None:
    a, _ = await store.create_session(ALICE)
    b, _ = await store.create_session(ALICE)
    await store.subscribe(a.id, "order:1")
    await store.subscribe(b.id, "order:2")
    await store.fanout(
        [
            FanoutEvent("e1", _update("a1"), keys=("order:1",)),
            FanoutEvent("e2", _update("b1"), keys=("order:2",)),
            FanoutEvent("e3", _update("a2"), keys=("order:1",)),
            FanoutEvent("e4", _update("both"), keys=("order:1", "order:2")),
        ]
    )
    events = schema.conversation_events
    query = (
        sa.select(events.c.session_id, events.c.seq, events.c.body)
        .where(events.c.kind == "frame.appended")
        .order_by(events.c.id)
    )
    rows = await store.executor.read(lambda conn: list(conn.execute(query)))
    transcript: dict[str, list[tuple[int, str]]] = {}
    for session_id, seq, body in rows:
        frame = chat_pb2.ConverseResponse.FromString(body)
        assert frame.seq == seq
        transcript.setdefault(session_id, []).append((seq, frame.update.text))
    assert transcript == {
        a.id: [(1, "a1"), (2, "a2"), (3, "both")],
        b.id: [(1, "b1"), (2, "both")],
    }
    assert transcript[a.id] == _texts(await store.frames_after(a.id, 0))
    assert transcript[b.id] == _texts(await store.frames_after(b.id, 0))


async def test_fanout_skips_closed_sessions(store: SessionStore) -> None:
    a, _ = await store.create_session(ALICE)
    await store.subscribe(a.id, "k")
    assert await store.close_session(a.id)
    assert not await store.close_session(a.id)
    result = await store.fanout([FanoutEvent("e", _update("x"), keys=("k",))])
    assert result.frames == {}
    assert result.delivered == {"e": 0}
    assert await store.subscriptions(a.id) == []


async def test_replay_and_retention_window(store: SessionStore) -> None:
    record, _ = await store.create_session(ALICE)
    await store.append(record.id, [_update(str(i)) for i in range(8)])
    session = await store.get_session(record.id)
    assert session is not None
    assert [f.seq for f in await store.replay(session, 6)] == [7, 8]
    assert await store.prune() == 3  # keep the newest 5
    session = await store.get_session(record.id)
    assert session is not None
    assert session.floor_seq == 3
    assert [f.seq for f in await store.replay(session, 3)] == [4, 5, 6, 7, 8]
    with pytest.raises(OutOfRangeError, match="no longer retained"):
        await store.replay(session, 2)
    with pytest.raises(OutOfRangeError, match="ahead"):
        await store.replay(session, 9)


async def test_prune_by_age(store: SessionStore) -> None:
    record, _ = await store.create_session(ALICE)
    await store.append(record.id, [_update("old")])
    store.test_clock.now += 200  # type: ignore[attr-defined]
    await store.append(record.id, [_update("new")])
    assert await store.prune() == 1
    assert [f.seq for f in await store.frames_after(record.id, 0)] == [2]


async def test_ack_drops_acked_frames(store: SessionStore) -> None:
    record, _ = await store.create_session(ALICE)
    await store.append(record.id, [_update(str(i)) for i in range(4)])
    await store.ack(record.id, 3)
    await store.ack(record.id, 2)  # an older ack changes nothing
    await store.ack(record.id, 99)  # an ack beyond the head is ignored
    assert [f.seq for f in await store.frames_after(record.id, 0)] == [4]
    session = await store.get_session(record.id)
    assert session is not None
    assert session.acked_seq == 3
    assert session.floor_seq == 3


async def test_expire_idle_keeps_attached_sessions(store: SessionStore) -> None:
    idle, _ = await store.create_session(ALICE)
    attached, _ = await store.create_session(ALICE)
    await store.subscribe(idle.id, "k")
    store.test_clock.now += 1000  # type: ignore[attr-defined]
    fresh, _ = await store.create_session(ALICE)
    expired = await store.expire_idle(500, keep=[attached.id])
    assert expired == [idle.id]
    assert await store.subscribers(["k"]) == {}
    listed = {r.id for r in await store.list_sessions()}
    assert listed == {attached.id, fresh.id}


async def test_subscriptions_and_lookup(store: SessionStore) -> None:
    a, _ = await store.create_session(ALICE)
    assert await store.subscribe(a.id, "order:1")
    assert not await store.subscribe(a.id, "order:1")
    assert await store.subscribers(["order:1", "order:2"]) == {"order:1": [a.id]}
    assert [r.id for r in await store.list_sessions(key="order:1")] == [a.id]
    assert await store.unsubscribe(a.id, "order:1")
    assert await store.subscriptions(a.id) == []


async def test_dead_letters_and_delivery_replay_guard(store: SessionStore) -> None:
    await store.dead_letter(source="orders", reason="bad json", payload=b"{", partition=0, offset=7)
    letters = await store.dead_letters()
    assert [(d["source"], d["reason"], d["offset"]) for d in letters] == [("orders", "bad json", 7)]
    assert not await store.seen_delivery("d-1")
    assert await store.seen_delivery("d-1")


async def test_fanout_claims_its_delivery_id_in_the_same_transaction(store: SessionStore) -> None:
    a, _ = await store.create_session(ALICE)
    await store.subscribe(a.id, "order:1")

    async def deliver(event_id: str) -> str:
        try:
            await store.fanout(
                [FanoutEvent(event_id, _update(event_id), keys=("order:1",))], delivery_id="d-9"
            )
        except AlreadyExistsError:
            return "refused"
        return "routed"

    # concurrent requests under one delivery id: exactly one is routed
    outcomes = await asyncio.gather(*(deliver(f"e{i}") for i in range(8)))
    assert sorted(outcomes) == ["refused"] * 7 + ["routed"]
    assert len(await store.frames_after(a.id, 0)) == 1
    assert not await store.delivery_recorded("d-10")
    await store.fanout([], delivery_id="d-10")  # an event the filters dropped still claims it
    assert await store.delivery_recorded("d-10")
    with pytest.raises(AlreadyExistsError):
        await store.fanout(
            [FanoutEvent("e-x", _update("x"), keys=("order:1",))], delivery_id="d-10"
        )
    assert len(await store.frames_after(a.id, 0)) == 1


async def test_turns_move_last_active_at_at_most_once_a_second(store: SessionStore) -> None:
    clock = store.test_clock  # type: ignore[attr-defined]
    session, _ = await store.create_session(ALICE)

    async def turn_at(t: float, dialogue: dict[str, str] | None = None) -> float:
        clock.now = t
        await store.append(session.id, [_update(f"at {t}")], dialogue=dialogue)
        record = await store.get_session(session.id)
        assert record is not None
        return record.last_active_at

    start = clock.now
    assert await turn_at(start + 0.5) == start + 0.5
    assert await turn_at(start + 1.2, {"step": "b"}) == start + 0.5  # 0.7 s after: kept
    assert await turn_at(start + 1.6, {"step": "c"}) == start + 1.6
    assert await turn_at(start + 1.7) == start + 1.6
    record = await store.get_session(session.id)
    assert record is not None and record.dialogue == {"step": "c"} and record.head_seq == 4
    # A session that stopped after its last turn is idle from then on (to the second),
    # and a detach writes the exact time.
    clock.now = start + 50
    await store.touch(session.id, replica=None)
    assert await store.expire_idle(49.0) == []
    clock.now = start + 100
    assert await store.expire_idle(49.0) == [session.id]
