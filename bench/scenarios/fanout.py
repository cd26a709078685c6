"""fanout: one AdminService.Publish to a key subscribed by N sessions; time until each received it."""

from __future__ import annotations

import time

import grpc

from bench.common import Workers, progress, server, split, summary
from bench.report import Result, Row
from talkwire.v1 import admin_pb2, admin_pb2_grpc, events_pb2


def _publish(target: str, key: str, i: int) -> float:
    with grpc.insecure_channel(target) as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        ev = events_pb2.ChangeEvent(
            id=f"fan-{i}-{time.time_ns()}", type="bench.fanout", text="news"
        )
        t0 = time.time()
        ev.occurred_at.FromNanoseconds(int(t0 * 1e9))
        stub.Publish(admin_pb2.PublishRequest(key=key, event=ev), timeout=60)
        return time.time() - t0


def run(quick: bool) -> Result:
    sizes = [100, 200] if quick else [1000, 10000]
    rounds = 2 if quick else 5
    procs, nchan = 2, 4
    res = Result("fanout")
    stats: dict[str, dict[int, dict[str, float]]] = {"ours": {}, "bare": {}}
    for n in sizes:
        for kind in ("bare", "ours"):
            with server(kind) as srv:
                kwargs = [
                    {
                        "target": srv.target,
                        "sessions": k,
                        "nchan": nchan,
                        "keys": ["fan:bench"],
                        "rounds": rounds,
                        "timeout": 60.0,
                    }
                    for k in split(n, procs)
                ]
                with Workers("bench.client:w_subscribers", kwargs) as w:
                    w.gather(
                        "ready",
                        300,
                        lambda m, kind=kind: progress(
                            f"fanout/{kind}: worker {m[0]} {m[1]} {m[2]}"
                        ),
                    )
                    progress(f"fanout/{kind}: {n} sessions subscribed; {rounds} publishes")
                    all_lat: list[float] = []
                    completes: list[float] = []
                    publish_s: list[float] = []
                    missing = 0
                    for r in range(rounds):
                        time.sleep(0.3)
                        publish_s.append(_publish(srv.target, "fan:bench", r))
                        outs = w.gather("round", 120)
                        lat = [x * 1e3 for o in outs for x in o["lat"]]
                        missing += sum(o["missing"] for o in outs)
                        all_lat += lat
                        completes.append(max(lat) if lat else float("nan"))
                    w.send("stop")
                    w.gather("closed", 60)
            s = summary(all_lat)
            s["complete_ms_median"] = sorted(completes)[len(completes) // 2]
            s["publish_rpc_ms_median"] = sorted(publish_s)[len(publish_s) // 2] * 1e3
            s["missing"] = missing
            stats[kind][n] = s
            res.cdfs.setdefault(f"{n} subscribers, publish -> receipt", {})[kind] = all_lat
            progress(
                f"fanout/{kind}: {n}: p50 {s['p50']:.1f} ms p99 {s['p99']:.1f} ms, missing {missing}"
            )
    for n in sizes:
        o, b = stats["ours"][n], stats["bare"][n]
        note = f"missing {o['missing']}" if o["missing"] else ""
        res.rows.append(Row(f"{n} subs p50", o["p50"], b["p50"], "ms"))
        res.rows.append(
            Row(f"{n} subs p99", o["p99"], b["p99"], "ms", "<=1.5x" if n == sizes[-1] else "", note)
        )
        res.rows.append(
            Row(
                f"{n} subs all received (median)",
                o["complete_ms_median"],
                b["complete_ms_median"],
                "ms",
            )
        )
    res.data = {"stats": stats, "rounds": rounds}
    return res
