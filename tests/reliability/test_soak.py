"""Soak: open and cancel streams in a loop; tasks, fds and memory return near baseline.

Against a ``talkwire serve`` subprocess, clients cancel mid-read (right after
``opened``), mid-write (while writing frames), mid-turn (right after sending a
message) and via the client library (``ChatSession.aclose``). After the loop
and a settle period: the server's open fds (``/proc/<pid>/fd``) and RSS, the
test process's asyncio task count and fds, and the server's attached sessions
(admin ``ListSessions``) return near their baseline. The bounds are generous
counts, not timing thresholds (grpc.aio has had leaks around cancelled streams).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import grpc

from talkwire.clients import AdminClient, RpcError
from talkwire.v1 import chat_pb2
from tests.reliability.conftest import ADMIN, ALICE, base_config, chat_client, scale, sqlite_url
from tests.support.grpcx import Stream, message
from tests.support.server_proc import ServerProcess


async def _one_cycle(channel: grpc.aio.Channel, target: str, mode: int, rng: random.Random) -> None:
    if mode == 3:
        async with chat_client(target) as client:
            session = await client.open()
            await session.send("hello")
            if rng.random() < 0.5:
                await session.next_frame(timeout=10)
            await session.aclose()
        return
    s = Stream(channel, ALICE)
    await s.open()
    if mode == 0:  # mid-read
        s.cancel()
    elif mode == 1:  # mid-write
        for i in range(rng.randint(1, 20)):
            await s.send(chat_pb2.ConverseRequest(ping=chat_pb2.Ping(data=str(i) * 100)))
        s.cancel()
    else:  # mid-turn
        await s.send(message("a turn", "t"))
        await asyncio.sleep(rng.uniform(0, 0.01))
        s.cancel()


STORE_ERRORS: list[str] = []


async def _attached(admin: AdminClient) -> int:
    try:
        return sum(1 for _ in [s async for s in admin.iter_sessions(page_size=1000) if s.attached])
    except RpcError as exc:  # seen once: UNAVAILABLE "database is locked" (see the report)
        STORE_ERRORS.append(str(exc))
        return -1


async def test_soak_open_cancel_loop_returns_to_baseline(tmp_path: Path) -> None:
    duration = scale(15.0, 300.0)
    server = ServerProcess(base_config(sqlite_url(tmp_path / "s.db")), workdir=tmp_path)
    await server.start()
    rng = random.Random(3)
    try:
        async with (
            grpc.aio.insecure_channel(server.target) as channel,
            AdminClient(server.target, token=ADMIN) as admin,
        ):
            for i in range(40):  # warm up (lazy imports, pools, caches)
                await _one_cycle(channel, server.target, i % 4, rng)
            await asyncio.sleep(1.0)
            base_fds, base_rss = server.open_fds(), server.rss_kib()
            base_tasks = len(asyncio.all_tasks())
            base_local_fds = len(os.listdir("/proc/self/fd"))

            cycles = 0
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                await asyncio.gather(
                    *(_one_cycle(channel, server.target, rng.randrange(4), rng) for _ in range(20))
                )
                cycles += 20

            left = -1
            for _ in range(100):
                left = await _attached(admin)
                if not left:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)
            fds, rss = server.open_fds(), server.rss_kib()
            tasks = len(asyncio.all_tasks())
            local_fds = len(os.listdir("/proc/self/fd"))
            print(
                f"soak: cycles={cycles} server fds {base_fds}->{fds} rss {base_rss}->{rss} KiB; "
                f"test tasks {base_tasks}->{tasks} fds {base_local_fds}->{local_fds}"
            )
            assert left == 0, f"{left} sessions still marked attached after the soak"
            assert fds <= base_fds + 10
            assert rss <= base_rss + 64 * 1024
            assert tasks <= base_tasks + 5
            assert local_fds <= base_local_fds + 10
            # and it still serves
            s = Stream(channel, ALICE)
            await s.open()
            await s.send(message("still here", "x"))
            assert (await s.recv()).reply.text == "still here"
            s.cancel()
    finally:
        await server.kill()
