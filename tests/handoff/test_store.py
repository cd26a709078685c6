"""The handoff steps on SQLite, PostgreSQL and MariaDB: one transaction each, race-free accept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from talkwire.server import schema
from talkwire.server.errors import (
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
)
from talkwire.server.frames import encode_template
from talkwire.server.handoff import HandoffStore
from talkwire.server.identity import Identity
from talkwire.server.store import Retention, SessionStore
from talkwire.v1 import chat_pb2
from tests.store.test_store import BACKENDS, Clock
from tests.support.databases import temp_database

ALICE = Identity("alice", {"customer_id": "c-100"})
ANN = Identity("ann", {"name": "Ann"}, frozenset({"agent"}))
BEN = Identity("ben", {}, frozenset({"agent"}))


def _anyone(queue: str) -> bool:
    return True


@pytest.fixture(params=BACKENDS)
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SessionStore, HandoffStore, Clock]]:
    clock = Clock()
    async with (
        temp_database(request.param, tmp_path) as url,
        SessionStore(url, clock=clock) as store,
    ):
        yield store, HandoffStore(store, clock=clock), clock


def _kinds(store_frames: list) -> list[str]:  # type: ignore[type-arg]
    out = []
    for f in store_frames:
        frame = chat_pb2.ConverseResponse.FromString(f.payload)
        out.append(f"{frame.seq}:{frame.WhichOneof('frame')}")
    return out


def _update() -> bytes:
    frame = chat_pb2.ConverseResponse()
    frame.update.text = "x"
    return encode_template(frame)


async def test_steps_write_state_and_frame_together(
    stores: tuple[SessionStore, HandoffStore, Clock],
) -> None:
    store, handoffs, _ = stores
    record, _ = await store.create_session(ALICE)
    sid = record.id
    await store.append(sid, [_update()])
    step = await handoffs.queue(sid, queue="billing", reason="why", context={"turns": []})
    assert (step.record.state, step.position) == (schema.HANDOFF_QUEUED, 1)
    assert [f.seq for f in step.frames[sid]] == [2]
    with pytest.raises(FailedPreconditionError):
        await handoffs.queue(sid, queue="billing", reason="again", context={})
    step = await handoffs.accept(sid, ANN, may_serve=_anyone)
    assert (step.record.state, step.record.agent, step.record.agent_name) == (
        schema.HANDOFF_AGENT,
        "ann",
        "Ann",
    )
    with pytest.raises(PermissionDeniedError):
        await handoffs.release(sid, "ben")
    step = await handoffs.transfer(sid, "ann", queue="general")
    assert (step.record.state, step.record.queue, step.record.agent) == (
        schema.HANDOFF_QUEUED,
        "general",
        None,
    )
    await handoffs.accept(sid, BEN, may_serve=_anyone)
    step = await handoffs.release(sid, "ben")
    assert step.record.state == schema.HANDOFF_BOT
    with pytest.raises(FailedPreconditionError):
        await handoffs.release(sid, "ben")
    frames = await store.frames_after(sid, 0)
    assert _kinds(frames) == [
        "1:update",
        "2:handoff",
        "3:handoff",
        "4:handoff",
        "5:handoff",
        "6:handoff",
    ]
    # Queued again later: the same row, a new round.
    step = await handoffs.queue(sid, queue="billing", reason="again", context={})
    assert step.record.state == schema.HANDOFF_QUEUED


async def test_accept_race_has_one_winner(
    stores: tuple[SessionStore, HandoffStore, Clock],
) -> None:
    store, handoffs, _ = stores
    record, _ = await store.create_session(ALICE)
    await handoffs.queue(record.id, queue="q", reason="", context={})
    agents = [Identity(f"agent{i}", {}, frozenset({"agent"})) for i in range(6)]
    outcomes = await asyncio.gather(
        *(handoffs.accept(record.id, a, may_serve=_anyone) for a in agents),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    losers = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(o, FailedPreconditionError) for o in losers), losers
    accepted = [
        f
        for f in await store.frames_after(record.id, 0)
        if chat_pb2.ConverseResponse.FromString(f.payload).handoff.state
        == chat_pb2.HANDOFF_STATE_ACCEPTED
    ]
    assert len(accepted) == 1


async def test_refusals_are_precise(stores: tuple[SessionStore, HandoffStore, Clock]) -> None:
    store, handoffs, _ = stores
    record, _ = await store.create_session(ALICE)
    with pytest.raises(NotFoundError):
        await handoffs.accept("missing", ANN, may_serve=_anyone)
    with pytest.raises(FailedPreconditionError):
        await handoffs.accept(record.id, ANN, may_serve=_anyone)  # with the bot
    await handoffs.queue(record.id, queue="billing", reason="", context={})
    with pytest.raises(PermissionDeniedError):
        await handoffs.accept(record.id, ANN, may_serve=lambda q: q != "billing")
    with pytest.raises(FailedPreconditionError):
        await handoffs.agent_append(record.id, "ann", [_update()])  # not accepted yet
    with pytest.raises(NotFoundError):
        await handoffs.queue("missing", queue="q", reason="", context={})


async def test_user_acks_keep_what_the_agent_still_needs(
    stores: tuple[SessionStore, HandoffStore, Clock],
) -> None:
    store, handoffs, _ = stores
    record, _ = await store.create_session(ALICE)
    sid = record.id
    await store.append(sid, [_update(), _update()])
    await handoffs.queue(sid, queue="q", reason="", context={})  # seq 3, pin at floor 0
    await handoffs.accept(sid, ANN, may_serve=_anyone)  # seq 4
    await store.ack(sid, 4)
    assert [f.seq for f in await store.frames_after(sid, 0)] == [1, 2, 3, 4]
    await handoffs.seen(sid, "ann", pin_seq=2)  # the agent has 1..2
    await store.ack(sid, 4)
    assert [f.seq for f in await store.frames_after(sid, 0)] == [3, 4]
    await handoffs.release(sid, "ann")  # seq 5; no pin any more
    await store.ack(sid, 5)
    assert await store.frames_after(sid, 0) == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_retention_keeps_what_the_agent_still_needs(backend: str, tmp_path: Path) -> None:
    async with (
        temp_database(backend, tmp_path) as url,
        SessionStore(url, retention=Retention(max_frames=2, max_age=1e9)) as store,
    ):
        handoffs = HandoffStore(store)
        record, _ = await store.create_session(ALICE)
        sid = record.id
        await store.append(sid, [_update(), _update()])
        await handoffs.queue(sid, queue="q", reason="", context={})  # seq 3, pin 0
        await handoffs.accept(sid, ANN, may_serve=_anyone)  # seq 4
        await store.append(sid, [_update(), _update()])  # seq 5, 6
        await store.prune()  # over the window, but the agent has seen nothing yet
        assert [f.seq for f in await store.frames_after(sid, 0)] == [1, 2, 3, 4, 5, 6]
        await handoffs.seen(sid, "ann", pin_seq=3)
        await store.prune()  # the window (newest 2) is capped at the agent's pin
        assert [f.seq for f in await store.frames_after(sid, 0)] == [4, 5, 6]
        await handoffs.release(sid, "ann")  # seq 7; no pin any more
        await store.prune()
        assert [f.seq for f in await store.frames_after(sid, 0)] == [6, 7]


async def test_requeue_after_the_agent_stayed_away(
    stores: tuple[SessionStore, HandoffStore, Clock],
) -> None:
    store, handoffs, clock = stores
    first, _ = await store.create_session(ALICE)
    second, _ = await store.create_session(ALICE)
    for rec in (first, second):
        await handoffs.queue(rec.id, queue="q", reason="", context={})
        clock.now += 1
    await handoffs.accept(first.id, ANN, may_serve=_anyone)
    await handoffs.accept(second.id, BEN, may_serve=_anyone)
    clock.now += 50
    await handoffs.seen(second.id, "ben")  # Ben is still there
    clock.now += 80
    step = await handoffs.requeue_stale(100)
    assert step is not None
    assert list(step.frames) == [first.id]
    frame = chat_pb2.ConverseResponse.FromString(step.frames[first.id][0].payload)
    assert (frame.handoff.state, frame.handoff.position) == (chat_pb2.HANDOFF_STATE_QUEUED, 1)
    waiting = await handoffs.waiting()
    assert [(r.session_id, pos) for r, pos in waiting] == [(first.id, 1)]
    with pytest.raises(FailedPreconditionError):
        await handoffs.agent_append(first.id, "ann", [_update()])
    assert await handoffs.requeue_stale(100) is None


async def test_close_closes_the_session(stores: tuple[SessionStore, HandoffStore, Clock]) -> None:
    store, handoffs, _ = stores
    record, _ = await store.create_session(ALICE)
    await store.subscribe(record.id, "order:1")
    await handoffs.queue(record.id, queue="q", reason="", context={})
    await handoffs.accept(record.id, ANN, may_serve=_anyone)
    step = await handoffs.close(record.id, "ann", reason="solved")
    frame = chat_pb2.ConverseResponse.FromString(step.frames[record.id][0].payload)
    assert frame.handoff.closed
    closed = await store.get_session(record.id)
    assert closed is not None and closed.state == schema.CLOSED
    assert await store.subscriptions(record.id) == []
    assert await handoffs.waiting() == []


async def test_closing_a_held_session_releases_it(
    stores: tuple[SessionStore, HandoffStore, Clock],
) -> None:
    store, handoffs, _ = stores
    record, _ = await store.create_session(ALICE)
    await handoffs.queue(record.id, queue="billing", reason="why", context={})
    await handoffs.accept(record.id, ANN, may_serve=_anyone)
    assert await store.close_session(record.id)
    current = await handoffs.get(record.id)
    assert current is not None and current.state == schema.HANDOFF_BOT
    with pytest.raises(FailedPreconditionError):  # the agent no longer holds it
        await handoffs.agent_append(record.id, "ann", [_update()])
    assert await handoffs.waiting() == []
