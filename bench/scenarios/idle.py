"""idle: server RSS with N open idle sessions (multiplexed over a few connections), KiB/session."""

from __future__ import annotations

import time

from bench.common import Workers, progress, server, split
from bench.report import Result, Row


def _settle(srv, seconds: float) -> int:  # type: ignore[no-untyped-def]
    time.sleep(seconds)
    return srv.rss()


def run(quick: bool) -> Result:
    steps = [100, 300] if quick else [2000, 10000]
    procs, nchan = 2, 4
    res = Result("idle")
    per: dict[str, dict[int, float]] = {}
    raw: dict[str, dict[str, int]] = {}
    for kind in ("bare", "ours"):
        per[kind] = {}
        with server(kind) as srv:
            with Workers(
                "bench.client:w_idle", [{"target": srv.target, "nchan": nchan}] * procs
            ) as w:
                # warm-up: a few sessions so one-time allocations are in the base
                w.send("open", 10)
                w.gather("opened", 60)
                base = _settle(srv, 1.0)
                raw[kind] = {"base": base}
                opened = 20
                for n in steps:
                    for c, k in zip(w.conns, split(n - opened, procs), strict=True):
                        c.send(("open", k))
                    w.gather(
                        "opened",
                        110,
                        lambda m, kind=kind: progress(f"idle/{kind}: worker {m[0]} {m[1]} {m[2]}"),
                    )
                    opened = n
                    rss = _settle(srv, 0.5 if quick else 1.5)
                    raw[kind][str(n)] = rss
                    per[kind][n] = (rss - base) / 1024 / n
                    progress(
                        f"idle/{kind}: {n} sessions, RSS {rss / 2**20:.1f} MiB, {per[kind][n]:.1f} KiB/session"
                    )
                w.send("stop")
                w.gather("closed", 60)
    for n in steps:
        res.rows.append(
            Row(f"{n} idle sessions memory", per["ours"][n], per["bare"][n], "KiB/sess", "<=1.5x")
        )
    res.data = {"kib_per_session": per, "rss_bytes": raw, "connections": procs * nchan}
    return res
