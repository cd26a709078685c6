"""SIGTERM of one of two server processes sharing a PostgreSQL store.

Sessions are attached to process A and receive a steady Publish load (published
on A: cross-process live wake-up is issue 8). A gets SIGTERM: every stream must
end with ``UNAVAILABLE`` within the grace period, A must exit cleanly, the
producer fails over to B (retrying the same event ids: the shared store
deduplicates), and every session resumes on B from its saved
``session_id``/``resume_token``/``last_seq`` -- with nothing lost and no
duplicates.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from talkwire.clients.chat import ConnectionEvent, ConnectionEventKind
from tests.reliability.conftest import (
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

GRACE = 2.0


async def test_sigterm_streams_end_unavailable_and_resume_on_the_other_process(
    tmp_path: Path, pg_database: str
) -> None:
    sessions = scale(60, 300)
    n_keys = scale(6, 30)
    history = History()
    config = base_config(pg_database, grace_period=GRACE, queue_size=4096)
    a = ServerProcess(
        {**config, "server": {**config["server"], "replica": "a"}}, workdir=tmp_path, name="a"
    )
    b = ServerProcess(
        {**config, "server": {**config["server"], "replica": "b"}}, workdir=tmp_path, name="b"
    )
    await a.start()
    await b.start()
    keys = [f"ticket:{i}" for i in range(n_keys)]
    drops: dict[str, tuple[float, grpc.StatusCode | None]] = {}

    def on_event(event: ConnectionEvent) -> None:
        if event.kind == ConnectionEventKind.DISCONNECTED:
            drops.setdefault(event.session_id, (time.monotonic(), event.code))

    client_a = chat_client(a.target, on_connection_event=on_event)
    client_b = chat_client(b.target)
    on_a = {"alive": True}
    producer: Producer | None = None
    readers: list[Reader] = []
    moved: list[Reader] = []
    try:
        await client_a.__aenter__()
        await client_b.__aenter__()
        readers = list(
            await asyncio.gather(
                *(open_subscribed(client_a, history, [keys[i % n_keys]]) for i in range(sessions))
            )
        )
        producer = Producer(
            history, lambda: [a.target] if on_a["alive"] else [b.target], keys, interval=0.02
        )
        await asyncio.sleep(scale(2.0, 10.0))

        terminated = time.monotonic()
        on_a["alive"] = False
        rc = await a.terminate(timeout=GRACE + 10)
        exited = time.monotonic() - terminated
        assert rc == 0, a.log_tail()
        assert exited < GRACE + 5, f"A took {exited:.1f}s to exit"

        async with asyncio.timeout(10):
            while len(drops) < sessions:
                await asyncio.sleep(0.05)
        codes = {code for _, code in drops.values()}
        assert codes == {grpc.StatusCode.UNAVAILABLE}, codes
        slowest = max(at for at, _ in drops.values()) - terminated
        assert slowest <= GRACE + 2.0, f"a stream ended {slowest:.1f}s after SIGTERM"

        # Resume each session on B from what the application saw.
        for r in readers:
            await r.stop()
            sid, token, last = r.sid, r.session.resume_token, r.session.last_seq
            await r.session.aclose()
            resumed = await client_b.resume(sid, token, last)
            moved.append(Reader(resumed, history))
        await asyncio.sleep(scale(1.0, 5.0))
        await producer.stop()
        report = await wait_caught_up(history, timeout=60)
        print_report(report, "sigterm-failover")
        print(
            f"sigterm-failover: published={producer.published} retries={producer.retries} "
            f"exit={exited:.2f}s last-stream-end={slowest:.2f}s grace={GRACE}s"
        )
        assert not producer.failures, producer.failures[:5]
        assert not [r.error for r in moved if r.error]
        report.assert_clean()
    finally:
        if producer is not None:
            await producer.stop()
        for r in readers + moved:
            await r.stop()
        await client_a.aclose()
        await client_b.aclose()
        await a.kill()
        await b.kill()
