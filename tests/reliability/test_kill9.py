"""``kill -9`` of the server (SQLite file store), restarted on the same port and file.

* the plain version (issue 2's "Done when"): a ChatClient session gets replies,
  the server is killed, restarted, and the client library resumes and gets
  everything, including frames committed while it was detached;
* under load: sessions held by ChatClients, subscribed to keys that a steady
  Publish load targets; the server is killed at random moments and restarted;
  the history checker finds nothing lost, duplicated, reordered or gapped.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from talkwire.clients import AdminClient
from talkwire.clients.chat import ConnectionEventKind
from tests.reliability.conftest import (
    ADMIN,
    Producer,
    Reader,
    base_config,
    chat_client,
    open_subscribed,
    print_report,
    scale,
    sqlite_url,
    wait_caught_up,
)
from tests.support.history import History
from tests.support.server_proc import ServerProcess


async def test_kill9_plain_session_resumes_with_everything(tmp_path: Path) -> None:
    history = History()
    server = ServerProcess(base_config(sqlite_url(tmp_path / "s.db")), workdir=tmp_path)
    await server.start()
    try:
        events = []
        async with chat_client(server.target, on_connection_event=events.append) as client:
            session = await client.open(channel="web")
            sid = session.session_id
            history.session(sid)
            for i in range(5):
                await session.send(f"before {i}")
            for _ in range(5):
                history.record_frame(sid, await session.next_frame(timeout=10))

            await server.kill()
            # Sent while the server is down: queued, written after the resume.
            for i in range(5):
                await session.send(f"during {i}")
            await server.start()
            replies = [await session.next_frame(timeout=30) for _ in range(5)]
            for frame in replies:
                history.record_frame(sid, frame)
            assert [f.reply.text for f in replies] == [f"during {i}" for i in range(5)]
            assert session.reconnects >= 1
            assert any(e.kind == ConnectionEventKind.RESUMED for e in events)
            last_seq, token = session.last_seq, session.resume_token
            assert last_seq == 10

        # Frames committed while no client is attached survive a kill -9 too.
        async with AdminClient(server.target, token=ADMIN) as admin:
            for i in range(5):
                await admin.publish(session_id=sid, event_id=f"detached-{i}", text=f"d{i}")
                history.produced(f"detached-{i}", "")
        history.allow(sid, [""])
        await server.kill()
        await server.start()
        async with chat_client(server.target) as client:
            resumed = await client.resume(sid, token, last_seq)
            assert resumed.replayed == 5
            for _ in range(5):
                frame = await resumed.next_frame(timeout=10)
                history.record_frame(sid, frame)
            assert resumed.last_seq == 15
        report = history.check()
        print_report(report, "kill9-plain")
        report.assert_clean()
    finally:
        await server.kill()


async def test_kill9_under_publish_load(tmp_path: Path) -> None:
    sessions = scale(100, 400)
    n_keys = scale(10, 40)
    kills = scale(3, 10)
    history = History()
    server = ServerProcess(
        base_config(sqlite_url(tmp_path / "s.db"), queue_size=4096), workdir=tmp_path
    )
    await server.start()
    keys = [f"order:{i}" for i in range(n_keys)]
    clients = [chat_client(server.target) for _ in range(max(1, sessions // 50))]
    readers: list[Reader] = []
    producer: Producer | None = None
    rng = random.Random(7)
    try:
        for client in clients:
            await client.__aenter__()
        readers = list(
            await asyncio.gather(
                *(
                    open_subscribed(clients[i % len(clients)], history, [keys[i % n_keys]])
                    for i in range(sessions)
                )
            )
        )
        producer = Producer(history, lambda: [server.target], keys, interval=0.02)
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            await server.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await server.start()
        await asyncio.sleep(1.0)
        await producer.stop()
        report = await wait_caught_up(history, timeout=60)
        print_report(report, "kill9-load")
        assert not producer.failures, producer.failures[:5]
        assert producer.published > 0
        assert not [r.error for r in readers if r.error], [r.error for r in readers if r.error][:5]
        assert sum(r.session.reconnects for r in readers) >= sessions  # everyone resumed
        report.assert_clean()
        print(
            f"kill9-load: published={producer.published} retries={producer.retries} "
            f"kills={kills} reconnects={sum(r.session.reconnects for r in readers)} "
            f"duplicates_dropped_by_client={sum(r.session.duplicates for r in readers)}"
        )
    finally:
        if producer is not None:
            await producer.stop()
        for r in readers:
            await r.stop()
        for client in clients:
            await client.aclose()
        await server.kill()
