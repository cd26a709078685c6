"""web: the WebSocket gateway against the gRPC path of the same server, in the same run.

Round trip: one session, sequential message -> reply turns, over gRPC ``Converse``
and over the gateway's WebSocket (proto3 JSON). Idle memory: server RSS per open
idle session, gRPC streams (multiplexed over 4 channels) vs one WebSocket per
session, each on a fresh server; then 5,000 idle WebSocket sessions held at once.
The clients run in this process (asyncio); the server is ``talkwire serve``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench.client import Session, channels, open_many
from bench.common import free_port, progress, server, summary
from bench.report import Result, Row

_SETTLE = 1.0  # seconds for the server's RSS to settle after the opens


def _web_extra() -> tuple[dict[str, Any], int]:
    port = free_port()
    return {"web": {"listen": f"127.0.0.1:{port}"}}, port


async def _grpc_rtt(target: str, turns: int, warmup: int) -> list[float]:
    (chan,) = channels(target, 1)
    s = Session()
    from talkwire.v1 import chat_pb2_grpc

    assert await s.open(chat_pb2_grpc.ChatServiceStub(chan))
    samples = []
    for i in range(turns + warmup):
        t0 = time.perf_counter()
        await s.send_text(f"hello {i}")
        await s.read_reply()
        if i >= warmup:
            samples.append((time.perf_counter() - t0) * 1000)
    s.cancel()
    await chan.close()
    return samples


async def _ws_open(url: str) -> ClientConnection:
    ws = await connect(url, subprotocols=["talkwire.v1.json"], max_queue=4)  # type: ignore[list-item]
    await ws.send(json.dumps({"id": "o", "open": {"channel": "bench"}}))
    opened = json.loads(await ws.recv())
    assert "opened" in opened, opened
    return ws


async def _ws_rtt(url: str, turns: int, warmup: int) -> list[float]:
    ws = await _ws_open(url)
    samples = []
    for i in range(turns + warmup):
        t0 = time.perf_counter()
        fid = f"m{i}"
        await ws.send(json.dumps({"id": fid, "message": {"text": f"hello {i}"}}))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("inReplyTo") == fid and "reply" in frame:
                break
        if i >= warmup:
            samples.append((time.perf_counter() - t0) * 1000)
    await ws.close()
    return samples


async def _ws_idle(url: str, n: int, held: list[ClientConnection]) -> None:
    sem = asyncio.Semaphore(64)

    async def one() -> None:
        async with sem:
            held.append(await _ws_open(url))

    await asyncio.gather(*(one() for _ in range(n - len(held))))


def _grpc_idle(srv: Any, n: int) -> float:
    async def go() -> float:
        chans = channels(srv.target, 4)
        sessions = await open_many(chans, 20, None)
        await asyncio.sleep(_SETTLE)
        base = srv.rss()
        sessions += await open_many(chans, n, None, start=20)
        await asyncio.sleep(_SETTLE)
        per = (srv.rss() - base) / 1024 / n
        for s in sessions:
            s.cancel()
        for c in chans:
            await c.close()
        return per

    return asyncio.run(go())


def _web_idle(srv: Any, url: str, n: int, hold: int) -> tuple[float, int, float]:
    async def go() -> tuple[float, int, float]:
        held: list[ClientConnection] = []
        await _ws_idle(url, 20, held)
        await asyncio.sleep(_SETTLE)
        base = srv.rss()
        await _ws_idle(url, 20 + n, held)
        await asyncio.sleep(_SETTLE)
        per = (srv.rss() - base) / 1024 / n
        t0 = time.perf_counter()
        await _ws_idle(url, hold, held)
        opened_in = time.perf_counter() - t0
        await asyncio.sleep(_SETTLE)
        alive = sum(1 for ws in held if ws.state.name == "OPEN")
        progress(f"web/idle: {alive} WebSocket sessions held, RSS {srv.rss() / 2**20:.0f} MiB")
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
        return per, alive, opened_in

    return asyncio.run(go())


def run(quick: bool) -> Result:
    turns, warmup = (100, 10) if quick else (2000, 100)
    idle_n = 200 if quick else 2000
    hold = 300 if quick else 5000
    res = Result("web")
    extra, port = _web_extra()
    with server("ours", config_extra=extra) as srv:
        url = f"ws://127.0.0.1:{port}/ws"
        progress(f"web/roundtrip: {turns} sequential turns, gRPC then WebSocket")
        grpc_ms = asyncio.run(_grpc_rtt(srv.target, turns, warmup))
        ws_ms = asyncio.run(_ws_rtt(url, turns, warmup))
    g, w = summary(grpc_ms), summary(ws_ms)
    res.rows.append(Row("round trip p50 (WebSocket vs gRPC)", w["p50"], g["p50"], "ms", "<=1.3x"))
    res.rows.append(Row("round trip p99 (WebSocket vs gRPC)", w["p99"], g["p99"], "ms"))
    res.cdfs["1 session, sequential turns"] = {"websocket": ws_ms, "grpc": grpc_ms}
    with server("ours") as srv:
        progress(f"web/idle: {idle_n} idle gRPC sessions")
        grpc_kib = _grpc_idle(srv, idle_n)
    extra, port = _web_extra()
    with server("ours", config_extra=extra) as srv:
        progress(f"web/idle: {idle_n} idle WebSocket sessions, then {hold} held")
        ws_kib, alive, opened_in = _web_idle(srv, f"ws://127.0.0.1:{port}/ws", idle_n, hold)
    res.rows.append(
        Row(
            f"{idle_n} idle sessions memory (WebSocket vs gRPC)",
            ws_kib,
            grpc_kib,
            "KiB/sess",
            "<=1.5x",
        )
    )
    res.rows.append(
        Row("idle WebSocket sessions held", float(alive), None, "sessions", f">={hold}")
    )
    res.data = {
        "roundtrip_ms": {"grpc": g, "websocket": w},
        "idle_kib_per_session": {"grpc": grpc_kib, "websocket": ws_kib},
        "held": alive,
        "held_open_seconds": opened_in,
    }
    return res
