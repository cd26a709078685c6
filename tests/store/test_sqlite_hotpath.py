"""The SQLite hot path: raw sqlite3 statements, group commit, store.durability."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from talkwire.server.config import load_config
from talkwire.server.errors import ConfigError, NotFoundError
from talkwire.server.frames import encode_template
from talkwire.server.identity import Identity
from talkwire.server.sqlexec import SqliteExecutor
from talkwire.server.store import SessionStore
from talkwire.v1 import chat_pb2
from tests.support.server_proc import talkwire_binary

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


async def test_a_failing_write_in_a_batch_leaves_nothing_and_undoes_no_other(
    store: SessionStore,
) -> None:
    """Several writes share one commit; one raising after it wrote gets its error, its
    rows are gone, and every other write of the same batch is committed."""
    a, _ = await store.create_session(ALICE)
    b, _ = await store.create_session(ALICE)
    gate = threading.Event()
    entered = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait()

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO talkwire_outbox (session_id, seq, created_at, payload) "
            "VALUES (?, 99, 0, x'00')",
            (b.id,),
        )
        raise RuntimeError("the job failed after writing")

    writer = _writer(store)
    held = asyncio.ensure_future(writer.write_raw(hold))
    await asyncio.to_thread(entered.wait)  # the writer is busy: what follows forms one batch
    jobs = [
        asyncio.ensure_future(store.append(a.id, [_reply("one")])),
        asyncio.ensure_future(writer.write_raw(half_then_fail)),
        asyncio.ensure_future(store.append("no-such-session", [_reply("x")])),
        asyncio.ensure_future(store.append(b.id, [_reply("two")])),
        asyncio.ensure_future(store.subscribe(b.id, "order:1")),
    ]
    gate.set()
    await held
    results = await asyncio.gather(*jobs, return_exceptions=True)

    assert [f.seq for f in results[0]] == [1]  # type: ignore[union-attr]
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[2], NotFoundError)
    assert [f.seq for f in results[3]] == [1]  # type: ignore[union-attr]
    assert results[4] is True
    assert [f.seq for f in await store.frames_after(a.id, 0)] == [1]
    assert [f.seq for f in await store.frames_after(b.id, 0)] == [1]  # no seq 99
    assert await store.subscriptions(b.id) == ["order:1"]


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
