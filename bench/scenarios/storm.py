"""storm: N sessions drop (streams cancelled, connections closed) and resume at once."""

from __future__ import annotations

import time

from bench.common import Workers, progress, server, split, summary
from bench.report import Result, Row


def run(quick: bool) -> Result:
    n = 200 if quick else 10000
    procs, nchan = 2, 4
    res = Result("storm")
    stats: dict[str, dict[str, float]] = {}
    for kind in ("bare", "ours"):
        with server(kind) as srv:
            kwargs = [
                {"target": srv.target, "sessions": k, "nchan": nchan, "timeout": 90.0}
                for k in split(n, procs)
            ]
            with Workers("bench.client:w_storm", kwargs) as w:
                w.gather(
                    "ready",
                    300,
                    lambda m, kind=kind: progress(f"storm/{kind}: worker {m[0]} {m[1]} {m[2]}"),
                )
                time.sleep(1.0)
                progress(f"storm/{kind}: {n} sessions drop and resume")
                w.send("go", time.time())
                outs = w.gather("result", 120)
                w.send("stop")
                w.gather("closed", 60)
        times = [t * 1e3 for o in outs for t in o["times"]]
        failed = sum(o["failed"] for o in outs)
        errors: dict[str, int] = {}
        for o in outs:
            for k, v in o["errors"].items():
                errors[k] = errors.get(k, 0) + v
        s = summary(times)
        s["failed"] = failed
        s["errors"] = errors  # type: ignore[assignment]
        stats[kind] = s
        res.cdfs.setdefault(f"{n} sessions: drop -> resumed", {})[kind] = times
        progress(
            f"storm/{kind}: all resumed after {s.get('max', float('nan')) / 1e3:.2f}s, failed {failed}"
        )
    o, b = stats["ours"], stats["bare"]
    res.rows = [
        Row(
            f"{n} sessions all resumed",
            o.get("max", float("nan")) / 1e3,
            b.get("max", float("nan")) / 1e3,
            "s",
            "<=1.5x",
        ),
        Row("resume p50", o.get("p50"), b.get("p50"), "ms"),
        Row(
            "failed streams",
            float(o["failed"]),
            float(b["failed"]),
            "count",
            "<=0",
            str(o["errors"]) if o["errors"] else "",
        ),
    ]
    res.data = {"stats": stats, "sessions": n}
    return res
