"""The benchmark client: raw grpc.aio stubs (no client library), the same for both servers.

Every function ``w_*`` is a client worker process body (see ``common.Workers``);
sessions are multiplexed over a few HTTP/2 connections per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

import grpc

from bench.common import Pipe
from talkwire.v1 import chat_pb2, chat_pb2_grpc

_ids = itertools.count(1)


def channels(target: str, n: int) -> list[grpc.aio.Channel]:
    """``n`` distinct TCP connections (a local subchannel pool each)."""
    return [
        grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("bench.channel", i),
            ],
        )
        for i in range(n)
    ]


class Session:
    __slots__ = ("call", "last_seq", "session_id", "token")

    def __init__(self) -> None:
        self.call: Any = None
        self.session_id = ""
        self.token = ""
        self.last_seq = 0

    async def open(self, stub: chat_pb2_grpc.ChatServiceStub, *, resume: bool = False) -> bool:
        self.call = stub.Converse()
        op = chat_pb2.Open(channel="bench")
        if resume:
            op.session_id, op.resume_token, op.last_seq = self.session_id, self.token, self.last_seq
        await self.call.write(chat_pb2.ConverseRequest(id="o", open=op))
        frame = await self.call.read()
        if frame is grpc.aio.EOF or frame.WhichOneof("frame") != "opened":
            return False
        self.session_id = frame.opened.session_id
        self.token = frame.opened.resume_token
        return True

    async def send_text(self, text: str) -> str:
        fid = str(next(_ids))
        await self.call.write(
            chat_pb2.ConverseRequest(id=fid, message=chat_pb2.UserMessage(text=text))
        )
        return fid

    async def read_reply(self) -> chat_pb2.ConverseResponse:
        while True:
            frame = await self.call.read()
            if frame is grpc.aio.EOF:
                raise ConnectionError("stream ended")
            if frame.seq:
                self.last_seq = frame.seq
            kind = frame.WhichOneof("frame")
            if kind == "reply":
                return frame
            if kind == "error":
                raise RuntimeError(f"turn error: {frame.error.code} {frame.error.message}")

    async def subscribe(self, key: str) -> None:
        await self.call.write(
            chat_pb2.ConverseRequest(id="s", subscribe=chat_pb2.Subscribe(key=key))
        )
        while True:
            frame = await self.call.read()
            if frame is grpc.aio.EOF:
                raise ConnectionError("stream ended while subscribing")
            if frame.seq:
                self.last_seq = frame.seq
            kind = frame.WhichOneof("frame")
            if kind == "subscription":
                return
            if kind == "error":
                raise RuntimeError(f"subscribe refused: {frame.error.code} {frame.error.message}")

    def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()


async def open_many(
    target_channels: list[grpc.aio.Channel],
    n: int,
    pipe: Pipe | None = None,
    concurrency: int = 200,
    start: int = 0,
) -> list[Session]:
    stubs = [chat_pb2_grpc.ChatServiceStub(c) for c in target_channels]
    sessions = [Session() for _ in range(n)]
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def one(i: int, s: Session) -> None:
        nonlocal done
        async with sem:
            if not await s.open(stubs[(start + i) % len(stubs)]):
                raise RuntimeError("open refused")
        done += 1
        if pipe is not None and done % 1000 == 0:
            pipe.send("progress", "opened", done)

    await asyncio.gather(*(one(i, s) for i, s in enumerate(sessions)))
    return sessions


# -- roundtrip ---------------------------------------------------------------------


async def w_latency(pipe: Pipe, target: str, turns: int, warmup: int) -> None:
    (ch,) = channels(target, 1)
    s = Session()
    assert await s.open(chat_pb2_grpc.ChatServiceStub(ch))
    for _ in range(warmup):
        await s.send_text("hello")
        await s.read_reply()
    pipe.send("ready")
    await pipe.recv()
    samples = []
    clock = time.perf_counter
    for i in range(turns):
        t0 = clock()
        await s.send_text("hello")
        await s.read_reply()
        samples.append((clock() - t0) * 1e3)
        if i % 1000 == 999:
            pipe.send("progress", "turns", i + 1)
    pipe.send("result", samples)
    s.cancel()
    await ch.close()


async def w_pingpong(pipe: Pipe, target: str, sessions: int, nchan: int, duration: float) -> None:
    chans = channels(target, nchan)
    ss = await open_many(chans, sessions)
    for s in ss:  # warm-up turn
        await s.send_text("w")
        await s.read_reply()
    pipe.send("ready")
    await pipe.recv()
    deadline = time.monotonic() + duration
    count = 0

    async def loop(s: Session) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await s.send_text("ping")
            await s.read_reply()
            count += 1

    t0 = time.monotonic()
    await asyncio.gather(*(loop(s) for s in ss))
    pipe.send("result", {"turns": count, "elapsed": time.monotonic() - t0})
    for s in ss:
        s.cancel()
    for c in chans:
        await c.close()


# -- idle ----------------------------------------------------------------------------


async def w_idle(pipe: Pipe, target: str, nchan: int) -> None:
    chans = channels(target, nchan)
    held: list[Session] = []
    while True:
        cmd = await pipe.recv()
        if cmd[0] == "open":
            held += await open_many(chans, cmd[1], pipe, start=len(held))
            pipe.send("opened", len(held))
        else:
            break
    for s in held:
        s.cancel()
    for c in chans:
        await c.close()
    pipe.send("closed")


# -- fanout / events -------------------------------------------------------------------


async def w_subscribers(
    pipe: Pipe, target: str, sessions: int, nchan: int, keys: list[str], rounds: int, timeout: float
) -> None:
    """Open ``sessions`` sessions subscribed to ``keys[i]`` (or ``keys[0]``), then time updates.

    Fan-out mode (``rounds > 0``): after every round each session got one update;
    report that round's latencies. Events mode (``rounds == 0``): collect until told to stop.
    """
    chans = channels(target, nchan)
    ss = await open_many(chans, sessions, pipe)
    sem = asyncio.Semaphore(200)

    async def sub(i: int, s: Session) -> None:
        async with sem:
            await s.subscribe(keys[i] if len(keys) > 1 else keys[0])

    await asyncio.gather(*(sub(i, s) for i, s in enumerate(ss)))
    pipe.send("ready", len(ss))

    lat: list[list[float]] = [[] for _ in range(max(rounds, 1))]
    events: list[tuple[str, float]] = []
    round_done = [asyncio.Event() for _ in range(max(rounds, 1))]

    async def reader(s: Session) -> None:
        got = 0
        while True:
            frame = await s.call.read()
            if frame is grpc.aio.EOF:
                return
            if frame.WhichOneof("frame") != "update":
                continue
            now = time.time()
            occ = frame.update.occurred_at
            d = now - (occ.seconds + occ.nanos * 1e-9)
            if rounds:
                lat[got].append(d)
                if len(lat[got]) == len(ss):
                    round_done[got].set()
                got += 1
                if got >= rounds:
                    return
            else:
                events.append((frame.update.event_id, d))

    tasks = [asyncio.create_task(reader(s)) for s in ss]
    if rounds:
        for r in range(rounds):
            try:
                async with asyncio.timeout(timeout):
                    await round_done[r].wait()
            except TimeoutError:
                pass
            pipe.send("round", {"lat": lat[r], "missing": len(ss) - len(lat[r])})
    await pipe.recv()  # stop
    if not rounds:
        pipe.send("result", events)
    for t in tasks:
        t.cancel()
    for s in ss:
        s.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*tasks, return_exceptions=True)
    for c in chans:
        await c.close()
    pipe.send("closed")


# -- storm -----------------------------------------------------------------------------


async def w_storm(pipe: Pipe, target: str, sessions: int, nchan: int, timeout: float) -> None:
    chans = channels(target, nchan)
    ss = await open_many(chans, sessions, pipe)
    pipe.send("ready", len(ss))
    cmd = await pipe.recv()
    t0 = cmd[1]
    # drop: every stream cancelled and every connection closed at once
    for s in ss:
        s.cancel()
    for c in chans:
        await c.close()
    chans = channels(target, nchan)
    stubs = [chat_pb2_grpc.ChatServiceStub(c) for c in chans]
    done: list[float] = []
    failed = 0
    errors: dict[str, int] = {}

    async def resume(i: int, s: Session) -> None:
        nonlocal failed
        try:
            async with asyncio.timeout(timeout):
                ok = await s.open(stubs[i % len(stubs)], resume=True)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            ok = False
            name = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "TIMEOUT"
            errors[name] = errors.get(name, 0) + 1
        if ok:
            done.append(time.time() - t0)
        else:
            failed += 1

    await asyncio.gather(*(resume(i, s) for i, s in enumerate(ss)))
    pipe.send("result", {"times": done, "failed": failed, "errors": errors})
    await pipe.recv()
    for s in ss:
        s.cancel()
    for c in chans:
        await c.close()
    pipe.send("closed")
