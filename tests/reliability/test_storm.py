"""A reconnect storm: every session drops and resumes at the same moment; zero failed streams.

Sessions are opened; then every client goes away at once
(channels closed), an update is committed into each session while it is
detached, and all sessions resume concurrently through the client library
(``ChatClient.resume`` does not retry its first attempt, so any refused or
failed stream counts). Each must get exactly its missing frame.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from talkwire.clients import AdminClient
from talkwire.clients.chat import ChatSession
from tests.reliability.conftest import (
    ADMIN,
    base_config,
    chat_client,
    print_report,
    scale,
    sqlite_url,
)
from tests.support.history import History
from tests.support.server_proc import ServerProcess


async def test_reconnect_storm_has_zero_failed_streams(tmp_path: Path) -> None:
    n = scale(1000, 5000)
    per_client = 250
    history = History()
    server = ServerProcess(base_config(sqlite_url(tmp_path / "s.db")), workdir=tmp_path)
    await server.start()
    try:
        saved: list[tuple[str, str, int]] = []
        clients = [chat_client(server.target) for _ in range(n // per_client)]
        sem = asyncio.Semaphore(200)

        async def open_one(i: int) -> ChatSession:
            async with sem:
                session = await clients[i % len(clients)].open(channel="storm")
                history.session(session.session_id)
                history.allow(session.session_id, [""])
                return session

        sessions = await asyncio.gather(*(open_one(i) for i in range(n)))
        saved = [(s.session_id, s.resume_token, s.last_seq) for s in sessions]
        for c in clients:  # everyone drops at once
            await c.aclose()

        async with AdminClient(server.target, token=ADMIN, timeout=30) as admin:
            for j in range(0, n, 200):
                await asyncio.gather(
                    *(
                        admin.publish(session_id=sid, event_id=f"storm-{sid}", text="while away")
                        for sid, _, _ in saved[j : j + 200]
                    )
                )
        for sid, _, _ in saved:
            history.produced(f"storm-{sid}", "")

        new_clients = [chat_client(server.target) for _ in range(n // per_client)]
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                new_clients[i % len(new_clients)].resume(sid, token, last)
                for i, (sid, token, last) in enumerate(saved)
            ),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        elapsed = time.monotonic() - started
        resumed = [r for r in results if isinstance(r, ChatSession)]
        for session in resumed:
            frame = await session.next_frame(timeout=60)
            history.record_frame(session.session_id, frame)
        report = history.check()
        print_report(report, "reconnect-storm")
        print(f"reconnect-storm: {n} resumes in {elapsed:.2f}s, failed={len(failed)}")
        assert not failed, failed[:5]
        assert all(s.replayed == 1 for s in resumed)
        report.assert_clean()
        for c in new_clients:
            await c.aclose()
    finally:
        await server.kill()
