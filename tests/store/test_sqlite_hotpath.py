"""The SQLite hot path: raw sqlite3 statements, group commit, store.durability."""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from talkwire.server.config import load_config
from talkwire.server.errors import ConfigError, NotFoundError
from talkwire.server.frames import encode_template
from talkwire.server.identity import Identity
from talkwire.server.sqlexec import SqliteExecutor
from talkwire.server.store import SessionStore
from talkwire.v1 import chat_pb2
from tests.support.server_proc import talkwire_binary
from tests.support.waiting import eventually

ALICE = Identity("alice", {"customer_id": "c-100"})


def _reply(text: str) -> bytes:
    frame = chat_pb2.ConverseResponse()
    frame.reply.text = text
    return encode_template(frame)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    async with SessionStore(f"sqlite+aiosqlite:///{tmp_path / 's.db'}") as s:
        yield s


def _writer(store: SessionStore) -> SqliteExecutor:
    assert store.sqlite is not None
    return store.sqlite


@pytest.fixture(params=["process", "power"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """``process``: raw writes commit on the event loop; ``power``: on the writer thread."""
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    async with SessionStore(url, durability=request.param) as s:
        yield s


def _half_then_fail(session_id: str) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO talkwire_outbox (session_id, seq, created_at, payload) "
            "VALUES (?, 99, 0, x'00')",
            (session_id,),
        )
        raise RuntimeError("the job failed after writing")

    return job


async def test_a_failing_write_in_a_batch_leaves_nothing_and_undoes_no_other(
    any_store: SessionStore,
) -> None:
    """Several writes share one commit; one raising after it wrote gets its error, its
    rows are gone, and every other write of the same batch is committed."""
    store = any_store
    a, _ = await store.create_session(ALICE)
    b, _ = await store.create_session(ALICE)
    writer = _writer(store)
    seen: list[int] = []

    def probe(conn: sqlite3.Connection) -> None:
        # a.id's frame is written by this transaction and not committed yet: the
        # writes submitted together form one batch.
        other = sqlite3.connect(str(store.url).split("///", 1)[1])
        try:
            sql = "SELECT count(*) FROM talkwire_outbox WHERE session_id = ?"
            seen.append(conn.execute(sql, (a.id,)).fetchone()[0])
            seen.append(other.execute(sql, (a.id,)).fetchone()[0])
        finally:
            other.close()

    if writer.on_loop:
        # Submitted in one loop tick: the first commits at once (on the loop), the
        # others share the next batch.
        first = asyncio.ensure_future(writer.write_raw(lambda conn: None))
    else:
        # The writer thread is busy with a first write: what follows forms one batch.
        gate, entered = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            entered.set()
            gate.wait()

        first = asyncio.ensure_future(writer.write_raw(hold))
        await asyncio.to_thread(entered.wait)
    jobs = [
        asyncio.ensure_future(store.append(a.id, [_reply("one")])),
        asyncio.ensure_future(writer.write_raw(probe)),
        asyncio.ensure_future(writer.write_raw(_half_then_fail(b.id))),
        asyncio.ensure_future(store.append("no-such-session", [_reply("x")])),
        asyncio.ensure_future(store.append(b.id, [_reply("two")])),
    ]
    if not writer.on_loop:
        await asyncio.sleep(0)  # every job is queued behind the held one
        gate.set()
    results = await asyncio.gather(*jobs, return_exceptions=True)
    await first

    assert [f.seq for f in results[0]] == [1]  # type: ignore[union-attr]
    assert seen[1] == 0  # not visible outside the batch before its commit
    assert isinstance(results[2], RuntimeError)
    assert isinstance(results[3], NotFoundError)
    assert [f.seq for f in results[4]] == [1]  # type: ignore[union-attr]
    assert [f.seq for f in await store.frames_after(a.id, 0)] == [1]
    assert [f.seq for f in await store.frames_after(b.id, 0)] == [1]  # no seq 99


async def test_a_batch_mixing_raw_and_sqlalchemy_writes_keeps_their_order(
    any_store: SessionStore,
) -> None:
    """Cold-path (SQLAlchemy) writes among hot-path writes submitted together: they run
    in submission order (a batch holding a SQLAlchemy write runs on the writer thread);
    a failing one is undone alone."""
    store = any_store
    a, _ = await store.create_session(ALICE)
    b, _ = await store.create_session(ALICE)
    jobs = [
        asyncio.ensure_future(store.append(a.id, [_reply("one")])),
        asyncio.ensure_future(store.subscribe(b.id, "order:1")),
        asyncio.ensure_future(_writer(store).write_raw(_half_then_fail(b.id))),
        asyncio.ensure_future(store.append(b.id, [_reply("two")])),
        asyncio.ensure_future(store.subscribe(b.id, "order:1")),  # already there
    ]
    results = await asyncio.gather(*jobs, return_exceptions=True)

    assert [f.seq for f in results[0]] == [1]  # type: ignore[union-attr]
    assert results[1] is True
    assert isinstance(results[2], RuntimeError)
    assert [f.seq for f in results[3]] == [1]  # type: ignore[union-attr]
    assert results[4] is False
    assert await store.subscriptions(b.id) == ["order:1"]
    assert [f.seq for f in await store.frames_after(b.id, 0)] == [1]


@pytest.mark.parametrize(("durability", "on_loop"), [("process", True), ("power", False)])
async def test_hot_writes_commit_on_the_loop_unless_durability_is_power(
    tmp_path: Path, durability: str, on_loop: bool
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    async with SessionStore(url, durability=durability) as store:
        session, _ = await store.create_session(ALICE)
        where = await _writer(store).write_raw(lambda conn: threading.get_ident())
        assert (where == threading.get_ident()) is on_loop
        frames = await store.append(session.id, [_reply("hi")])
        assert [f.seq for f in await store.frames_after(session.id, 0)] == [f.seq for f in frames]


async def test_the_wal_is_checkpointed_into_the_database_while_the_store_runs(
    tmp_path: Path,
) -> None:
    """The loop's connection does not checkpoint; the checkpointer thread does: the
    database file receives the writes while the store stays open."""
    db = tmp_path / "s.db"
    async with SessionStore(f"sqlite+aiosqlite:///{db}") as store:
        session, _ = await store.create_session(ALICE)
        await store.append(session.id, [_reply("warm up")])
        before = db.stat().st_size
        for i in range(300):
            await store.append(session.id, [_reply(f"turn {i}" * 20) for _ in range(4)])
        await eventually(lambda: db.stat().st_size > before, message="a WAL checkpoint")
        assert len(await store.frames_after(session.id, 0)) == 1201


async def test_an_on_loop_batch_waits_for_another_process_holding_the_write_lock(
    store: SessionStore, tmp_path: Path
) -> None:
    """Another connection holds the write lock: the loop does not block on it, the
    batch moves to the writer thread, which waits for the lock and commits."""
    session, _ = await store.create_session(ALICE)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(store.append(session.id, [_reply("later")]))
        ticks = 0
        while not pending.done() and ticks < 20:  # the loop keeps running meanwhile
            await asyncio.sleep(0)
            ticks += 1
        assert not pending.done()
        other.execute("COMMIT")
        frames = await pending
    finally:
        other.close()
    assert [f.seq for f in frames] == [1]


async def test_raw_append_and_ack_keep_the_outbox_and_events_consistent(
    store: SessionStore,
) -> None:
    session, _ = await store.create_session(ALICE)
    await store.append(session.id, [_reply("a"), _reply("b")], dialogue={"k": 1}, turn=b"t")
    await store.append(session.id, [_reply("c")])
    await store.ack(session.id, 2)
    await store.ack(session.id, 1)  # an old ack changes nothing

    frames = await store.frames_after(session.id, 0)
    assert [f.seq for f in frames] == [3]
    assert chat_pb2.ConverseResponse.FromString(frames[0].payload).seq == 3
    record = await store.get_session(session.id)
    assert record is not None
    assert (record.head_seq, record.acked_seq, record.floor_seq) == (3, 2, 2)
    assert record.dialogue == {"k": 1}

    def events(conn: sqlite3.Connection) -> list[tuple[str, int]]:
        rows = conn.execute(
            "SELECT kind, seq FROM talkwire_conversation_events WHERE session_id = ? ORDER BY id",
            (session.id,),
        )
        return [(str(k), int(s)) for k, s in rows]

    assert await _writer(store).write_raw(events) == [
        ("session.opened", 0),
        ("turn.received", 0),
        ("frame.appended", 1),
        ("frame.appended", 2),
        ("frame.appended", 3),
    ]


@pytest.mark.parametrize(("durability", "level"), [("process", 1), ("power", 2)])
async def test_durability_sets_synchronous(tmp_path: Path, durability: str, level: int) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    async with SessionStore(url, durability=durability) as store:
        writer = _writer(store)
        pragma = "PRAGMA synchronous"
        assert await writer.write_raw(lambda c: c.execute(pragma).fetchone()[0]) == level
        assert await writer.read_raw(lambda c: c.execute(pragma).fetchone()[0]) == level
        journal = await writer.write_raw(lambda c: c.execute("PRAGMA journal_mode").fetchone())
        assert journal[0] == "wal"


def test_durability_is_read_from_the_store_section(tmp_path: Path) -> None:
    env = {"TALKWIRE_STORE__DURABILITY": "power"}
    assert load_config(env=env).store.durability == "power"
    assert load_config(env={}).store.durability == "process"
    with pytest.raises(ConfigError, match=r"store\.durability"):
        load_config(env={"TALKWIRE_STORE__DURABILITY": "disk"})


def test_bad_durability_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "talkwire.yaml"
    config.write_text("store: {durability: disk}\n")
    done = subprocess.run(
        [talkwire_binary(), "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("talkwire: store.durability")


async def test_the_dialogue_state_reads_back_as_json_would_write_it(store: SessionStore) -> None:
    """The fast encoder of the dialogue state: what it cannot encode as the stdlib does
    (big ints, non-str keys, odd strings) still reads back as ``json.dumps`` wrote it;
    what the stdlib refuses is still refused."""
    session, _ = await store.create_session(ALICE)
    state: dict[Any, Any] = {"big": 2**70, 7: "seven", "text": "ünï \ud800", "at": 1.5, "l": [1]}
    await store.append(session.id, [], dialogue=state)
    record = await store.get_session(session.id)
    assert record is not None
    assert record.dialogue == json.loads(json.dumps(state))
    with pytest.raises(TypeError):
        await store.append(session.id, [], dialogue={"when": datetime.datetime.now(datetime.UTC)})


async def test_touch_marks_the_session_active_and_sets_or_keeps_its_replica(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    async with SessionStore(url, clock=lambda: now[0]) as store:
        session, _ = await store.create_session(ALICE, replica="a")
        now[0] = 1010.0
        await store.touch(session.id)
        record = await store.get_session(session.id)
        assert record is not None
        assert (record.last_active_at, record.replica) == (1010.0, "a")
        now[0] = 1020.0
        await store.touch(session.id, replica=None)
        record = await store.get_session(session.id)
        assert record is not None
        assert (record.last_active_at, record.replica) == (1020.0, None)


async def test_a_resume_replays_a_few_or_many_missing_frames_in_order(
    store: SessionStore,
) -> None:
    """Few missing frames are read on the loop's connection, many on a reader thread:
    the same frames either way."""
    session, _ = await store.create_session(ALICE)
    for i in range(50):
        await store.append(session.id, [_reply(f"r{i}")])
    record = await store.get_session(session.id)
    assert record is not None
    assert [f.seq for f in await store.replay(record, 45)] == [46, 47, 48, 49, 50]
    assert [f.seq for f in await store.replay(record, 2)] == list(range(3, 51))
