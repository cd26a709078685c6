"""events: Kafka (Tansu broker) -> session; keyed events at fixed rates, producer time -> receipt.

2,000 sessions (quick: 200) each subscribed to ``order:<i>``; a producer process
emits JSON change events at each rate for a few seconds, each keyed to one
random session. Latency = client receipt time - the event's ``occurred_at``
(set by the producer just before sending). The bare baseline consumes the same
topic with a plain aiokafka consumer and pushes to the subscribed stream in
memory. Skipped with a message when the broker or our Kafka ingress is not available.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bench.common import Pipe, Workers, progress, server, split, summary
from bench.report import Result, Row

TOPIC_FMT = "bench.orders.{kind}"


async def w_producer(pipe: Pipe, bootstrap: str, topic: str, nkeys: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=1)
    await producer.start()
    pipe.send("ready")
    rng = random.Random(7)
    try:
        while True:
            cmd = await pipe.recv()
            if cmd[0] != "rate":
                break
            rate, duration = cmd[1], cmd[2]
            tick = 0.01
            sent = 0
            t0 = time.monotonic()
            while (elapsed := time.monotonic() - t0) < duration:
                due = int(rate * elapsed) - sent
                futs = []
                for _ in range(max(0, due)):
                    i = rng.randrange(nkeys)
                    doc = {
                        "id": f"r{rate}-{uuid.uuid4().hex}",
                        "type": "order.status_changed",
                        "source": "bench",
                        "op": "update",
                        "after": {"id": i, "status": "shipped"},
                        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    }
                    futs.append(
                        await producer.send(
                            topic, json.dumps(doc).encode(), key=f"order:{i}".encode()
                        )
                    )
                sent += max(0, due)
                if futs:
                    await asyncio.gather(*futs)
                await asyncio.sleep(tick)
            pipe.send("produced", {"sent": sent, "seconds": time.monotonic() - t0})
    finally:
        await producer.stop()


async def _create_topics(bootstrap: str, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics]
        )
    finally:
        await admin.close()


def _broker() -> Any:
    try:
        from tests.support.broker import TansuBroker
    except ImportError as exc:
        raise _Skip(f"tests/support/broker.py not importable: {exc}") from None
    broker = TansuBroker()
    try:
        broker.start()
    except Exception as exc:  # noqa: BLE001
        raise _Skip(f"Tansu broker did not start: {exc}") from None
    return broker


class _Skip(Exception):
    pass


def _ours_events(bootstrap: str, topic: str) -> dict[str, Any]:
    return {
        "events": {
            "bootstrap": bootstrap,
            "group_id": "bench-ours",
            "start": "earliest",
            "session_timeout": 6.0,
            "heartbeat_interval": 1.0,
            "poll_timeout": 0.1,
            "topics": {
                topic: {
                    "format": "json",
                    "keys": ["order:{after.id}"],
                    "update_text": "Order {after.id} is now {after.status}",
                }
            },
        }
    }


def run(quick: bool) -> Result:
    res = Result("events")
    try:
        return _run(quick, res)
    except _Skip as exc:
        res.skipped = str(exc)
        progress(f"events: skipped: {exc}")
        return res


def _run(quick: bool, res: Result) -> Result:
    n = 100 if quick else 2000
    rates = [300] if quick else [1000, 5000, 10000]
    duration = 1.5 if quick else 5.0
    procs, nchan = 2, 2
    keys = [f"order:{i}" for i in range(n)]
    broker = _broker()
    stats: dict[str, dict[int, dict[str, float]]] = {"ours": {}, "bare": {}}
    try:
        bootstrap = broker.bootstrap
        asyncio.run(_create_topics(bootstrap, [TOPIC_FMT.format(kind=k) for k in ("ours", "bare")]))
        for kind in ("bare", "ours"):
            topic = TOPIC_FMT.format(kind=kind)
            try:
                ctx = (
                    server("bare", bare_args=["--kafka", bootstrap, "--topic", topic])
                    if kind == "bare"
                    else server("ours", config_extra=_ours_events(bootstrap, topic))
                )
                srv = ctx.__enter__()
            except RuntimeError as exc:
                if kind == "ours":
                    raise _Skip(
                        f"our server does not start with the Kafka ingress yet: {str(exc).splitlines()[-1][:160]}"
                    ) from None
                raise
            try:
                chunks = split(n, procs)
                kwargs, start = [], 0
                for k in chunks:
                    kwargs.append(
                        {
                            "target": srv.target,
                            "sessions": k,
                            "nchan": nchan,
                            "keys": keys[start : start + k],
                            "rounds": 0,
                            "timeout": 0.0,
                        }
                    )
                    start += k
                with (
                    Workers("bench.client:w_subscribers", kwargs) as w,
                    Workers(
                        "bench.scenarios.events:w_producer",
                        [{"bootstrap": bootstrap, "topic": topic, "nkeys": n}],
                    ) as prod,
                ):
                    w.gather(
                        "ready",
                        300,
                        lambda m, kind=kind: progress(
                            f"events/{kind}: worker {m[0]} {m[1]} {m[2]}"
                        ),
                    )
                    prod.gather("ready", 60)
                    # warm-up: the consumer group must be assigned before timing
                    prod.send("rate", 50, 3.0 if not quick else 2.0)
                    prod.gather("produced", 60)
                    time.sleep(1.0)
                    produced: dict[int, int] = {}
                    for rate in rates:
                        progress(f"events/{kind}: {rate} events/s for {duration}s")
                        prod.send("rate", rate, duration)
                        (p,) = prod.gather("produced", duration + 60)
                        produced[rate] = p["sent"]
                        time.sleep(1.0 if quick else 2.0)
                    prod.send("stop")
                    w.send("stop")
                    outs = w.gather("result", 60)
                    w.gather("closed", 60)
            finally:
                ctx.__exit__(None, None, None)
            by_rate: dict[int, list[float]] = {r: [] for r in rates}
            for o in outs:
                for event_id, d in o:
                    r = int(event_id.split("-", 1)[0][1:]) if event_id.startswith("r") else -1
                    if r in by_rate:
                        by_rate[r].append(d * 1e3)
            for rate in rates:
                s = summary(by_rate[rate])
                s["produced"] = produced[rate]
                s["delivered"] = len(by_rate[rate])
                s["delivered_per_s"] = len(by_rate[rate]) / duration
                stats[kind][rate] = s
                res.cdfs.setdefault(f"{rate} events/s, produce -> receipt", {})[kind] = by_rate[
                    rate
                ]
                progress(
                    f"events/{kind}: {rate}/s: p50 {s.get('p50', float('nan')):.1f} ms p99 {s.get('p99', float('nan')):.1f} ms, "
                    f"delivered {s['delivered']}/{s['produced']}"
                )
    finally:
        broker.stop()
    for rate in rates:
        o, b = stats["ours"][rate], stats["bare"][rate]
        note = (
            f"delivered {o['delivered']}/{o['produced']}" if o["delivered"] < o["produced"] else ""
        )
        res.rows.append(Row(f"{rate}/s p50", o.get("p50"), b.get("p50"), "ms"))
        res.rows.append(Row(f"{rate}/s p99", o.get("p99"), b.get("p99"), "ms", "", note))
        share = o.get("p99", float("nan")) - b.get("p99", float("nan"))
        res.rows.append(
            Row(f"{rate}/s our share of p99", share, None, "ms", "<=10ms" if rate == 5000 else "")
        )
    res.lines["delivered/s vs offered rate"] = {
        k: [(float(r), stats[k][r]["delivered_per_s"]) for r in rates] for k in ("ours", "bare")
    }
    res.data = {"stats": stats, "sessions": n, "duration_s": duration}
    return res
