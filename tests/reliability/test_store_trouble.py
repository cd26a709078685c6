"""Store trouble: PostgreSQL connections killed mid-transaction while publishing.

A killer loop runs ``pg_terminate_backend`` on every connection of the
server's database while a steady Publish load runs and sessions receive. Each
publish must either succeed or fail with ``UNAVAILABLE`` (the producer then
retries the same event id), never half-applied: the history shows no gap,
duplicate or loss, and the stored state is consistent (for every session the
outbox holds exactly the seqs ``floor_seq+1 .. head_seq`` not yet acked).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.reliability.conftest import (
    PG_ADMIN_DSN,
    Producer,
    Reader,
    base_config,
    chat_client,
    open_subscribed,
    print_report,
    scale,
    wait_caught_up,
)
from tests.support.history import History
from tests.support.server_proc import ServerProcess

pytestmark = pytest.mark.postgres


async def _killer(dbname: str, stop: asyncio.Event, killed: list[int]) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                dbname,
            )
            killed.append(len(rows))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    await stop.wait()
    finally:
        await conn.close()


async def test_pg_terminate_backend_during_publish_load(tmp_path: Path, pg_database: str) -> None:
    sessions = scale(40, 200)
    n_keys = scale(5, 20)
    dbname = pg_database.rsplit("/", 1)[1]
    history = History()
    server = ServerProcess(base_config(pg_database, queue_size=4096), workdir=tmp_path)
    await server.start()
    keys = [f"invoice:{i}" for i in range(n_keys)]
    client = chat_client(server.target)
    readers: list[Reader] = []
    producer: Producer | None = None
    stop = asyncio.Event()
    killed: list[int] = []
    try:
        await client.__aenter__()
        readers = list(
            await asyncio.gather(
                *(open_subscribed(client, history, [keys[i % n_keys]]) for i in range(sessions))
            )
        )
        producer = Producer(history, lambda: [server.target], keys, interval=0.01)
        killer = asyncio.create_task(_killer(dbname, stop, killed))
        await asyncio.sleep(scale(5.0, 60.0))
        stop.set()
        await killer
        await asyncio.sleep(0.5)
        await producer.stop()
        report = await wait_caught_up(history, timeout=60)
        print_report(report, "store-trouble")
        print(
            f"store-trouble: published={producer.published} retries={producer.retries} "
            f"backends-killed={sum(killed)} reconnects={sum(r.session.reconnects for r in readers)}"
        )
        assert not producer.failures, producer.failures[:5]
        assert sum(killed) > 0
        assert not [r.error for r in readers if r.error], [r.error for r in readers if r.error][:5]
        report.assert_clean()
        await _assert_store_consistent(dbname)
    finally:
        stop.set()
        if producer is not None:
            await producer.stop()
        for r in readers:
            await r.stop()
        await client.aclose()
        await server.kill()


async def _assert_store_consistent(dbname: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{dbname}")
    try:
        rows = await conn.fetch(
            "SELECT s.id, s.head_seq, s.floor_seq, s.acked_seq, "
            "count(o.seq) AS n, min(o.seq) AS lo, max(o.seq) AS hi "
            "FROM talkwire_sessions s LEFT JOIN talkwire_outbox o ON o.session_id = s.id "
            "GROUP BY s.id, s.head_seq, s.floor_seq, s.acked_seq"
        )
    finally:
        await conn.close()
    bad = []
    for r in rows:
        base = max(r["floor_seq"], r["acked_seq"])
        if r["n"] != r["head_seq"] - base or (
            r["n"] and (r["lo"], r["hi"]) != (base + 1, r["head_seq"])
        ):
            bad.append(dict(r))
    assert not bad, bad[:5]
