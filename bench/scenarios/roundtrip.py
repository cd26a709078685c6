"""roundtrip: one session's sequential turn latency; 100 sessions ping-pong throughput + CPU/turn."""

from __future__ import annotations

import time

from bench.common import Workers, progress, server, split, summary
from bench.report import Result, Row


def run(quick: bool) -> Result:
    turns = 200 if quick else 5000
    warmup = 20 if quick else 200
    sessions = 20 if quick else 100
    duration = 1.0 if quick else 8.0
    procs = 2
    res = Result("roundtrip")
    lat: dict[str, dict[str, float]] = {}
    tput: dict[str, dict[str, float]] = {}
    for kind in ("bare", "ours"):
        with server(kind) as srv:
            progress(f"roundtrip/{kind}: {turns} sequential turns on 1 session")
            with Workers(
                "bench.client:w_latency", [{"target": srv.target, "turns": turns, "warmup": warmup}]
            ) as w:
                w.gather("ready", 60)
                w.send("go")
                (samples,) = w.gather(
                    "result", 110, lambda m: progress(f"roundtrip/{kind}: {m[2]} turns")
                )
                w.send("stop")
            lat[kind] = summary(samples)
            res.cdfs.setdefault("1 session, sequential turns", {})[kind] = samples
            progress(f"roundtrip/{kind}: {sessions} sessions ping-pong for {duration}s")
            kwargs = [
                {"target": srv.target, "sessions": n, "nchan": 2, "duration": duration}
                for n in split(sessions, procs)
            ]
            with Workers("bench.client:w_pingpong", kwargs) as w:
                w.gather("ready", 60)
                cpu0, t0 = srv.cpu(), time.monotonic()
                w.send("go")
                out = w.gather("result", duration + 60)
                cpu1, t1 = srv.cpu(), time.monotonic()
            total = sum(o["turns"] for o in out)
            elapsed = max(o["elapsed"] for o in out)
            tput[kind] = {
                "turns": total,
                "msg_per_s": total / elapsed,
                "cpu_us_per_turn": (cpu1 - cpu0) / total * 1e6 if total else float("nan"),
                "server_cpu_util": (cpu1 - cpu0) / (t1 - t0),
            }
    res.rows = [
        Row("1 session p50", lat["ours"]["p50"], lat["bare"]["p50"], "ms", "<=1.3x"),
        Row("1 session p99", lat["ours"]["p99"], lat["bare"]["p99"], "ms", "<=1.5x"),
        Row(
            f"{sessions} sessions throughput",
            tput["ours"]["msg_per_s"],
            tput["bare"]["msg_per_s"],
            "msg/s",
        ),
        Row(
            "server CPU per turn",
            tput["ours"]["cpu_us_per_turn"],
            tput["bare"]["cpu_us_per_turn"],
            "us",
            "<=1.5x",
        ),
    ]
    res.data = {"latency_ms": lat, "throughput": tput, "turns": turns, "sessions": sessions}
    return res
