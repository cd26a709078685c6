"""events: Kafka (Tansu broker) -> session; keyed events at fixed rates, producer time -> receipt.

2,000 sessions (quick: 200) each subscribed to ``order:<i>``; a producer process
emits JSON change events at each rate for a few seconds, each keyed to one
random session. Latency = client receipt time - the event's ``occurred_at``
(set by the producer just before sending). The bare baseline consumes the same
topic with a plain aiokafka consumer and pushes to the subscribed stream in
memory. Skipped with a message when the broker or our Kafka ingress is not available.

``--replicas N`` (N > 1) runs OUR side as N ``talkwire serve`` processes sharing
one throwaway PostgreSQL database (created and dropped by the run; admin DSN
``BENCH_PG_DSN``, default ``postgresql://postgres@127.0.0.1:5432/postgres``),
one Redis bus (``BENCH_REDIS_URL``, a random key prefix) and one Kafka consumer
group over an N-partition topic. Client worker ``k`` attaches its sessions to
replica ``k % N``, so about (N-1)/N of the events are consumed by a replica
that does not hold the session and reach it through a Redis wake-up and a
store read. The bare baseline is unchanged (one process, same topic layout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from bench.common import Pipe, Server, Workers, progress, server, split, summary
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


async def _create_topics(bootstrap: str, topics: list[str], partitions: int = 1) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
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


@contextlib.contextmanager
def _bare(bootstrap: str, topic: str) -> Iterator[list[Server]]:
    with server("bare", bare_args=["--kafka", bootstrap, "--topic", topic]) as srv:
        yield [srv]


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


PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _upgrade(url: str) -> None:
    from talkwire.server.store import SessionStore

    async with SessionStore(url) as store:
        await store.upgrade()  # once, before N processes start


async def _redis_cleanup(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.contextmanager
def _shared_backends() -> Iterator[tuple[str, str]]:
    """A throwaway PostgreSQL database and a Redis prefix: ``(store_url, prefix)``."""
    name = f"talkwire_bench_{secrets.token_hex(4)}"
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    url = f"{base}/{name}"
    prefix = f"talkwire-bench-{secrets.token_hex(4)}:"
    try:
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        raise _Skip(f"--replicas needs PostgreSQL ({PG_DSN}): {exc}") from None
    try:
        asyncio.run(_upgrade(url))
        yield url, prefix
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(_redis_cleanup(prefix))
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def _ours(bootstrap: str, topic: str, replicas: int) -> Iterator[list[Server]]:
    """OUR side: one process (SQLite, in-process bus) or N replicas (PostgreSQL + Redis)."""
    events = _ours_events(bootstrap, topic)
    if replicas <= 1:
        with server("ours", config_extra=events) as srv:
            yield [srv]
        return
    with _shared_backends() as (url, prefix), contextlib.ExitStack() as stack:
        run = secrets.token_hex(3)
        servers = []
        for i in range(replicas):
            extra: dict[str, Any] = {
                **events,
                "server": {"replica": f"bench-{run}-{i}"},
                "store": {"url": url, "pool_size": 10},
                "bus": {"kind": "redis", "url": REDIS_URL, "prefix": prefix},
            }
            servers.append(stack.enter_context(server("ours", config_extra=extra)))
        progress(f"events/ours: {replicas} replicas on {', '.join(s.target for s in servers)}")
        yield servers


def run(quick: bool, replicas: int = 1) -> Result:
    res = Result("events")
    try:
        return _run(quick, res, max(1, replicas))
    except _Skip as exc:
        res.skipped = str(exc)
        progress(f"events: skipped: {exc}")
        return res


def _run(quick: bool, res: Result, replicas: int) -> Result:
    n = 100 if quick else 2000
    rates = [300] if quick else [1000, 5000, 10000]
    duration = 1.5 if quick else 5.0
    procs, nchan = max(2, replicas), 2
    keys = [f"order:{i}" for i in range(n)]
    broker = _broker()
    stats: dict[str, dict[int, dict[str, float]]] = {"ours": {}, "bare": {}}
    try:
        bootstrap = broker.bootstrap
        asyncio.run(
            _create_topics(
                bootstrap, [TOPIC_FMT.format(kind=k) for k in ("ours", "bare")], replicas
            )
        )
        for kind in ("bare", "ours"):
            topic = TOPIC_FMT.format(kind=kind)
            ctx: contextlib.AbstractContextManager[list[Server]] = (
                _bare(bootstrap, topic) if kind == "bare" else _ours(bootstrap, topic, replicas)
            )
            try:
                servers = ctx.__enter__()
            except RuntimeError as exc:
                if kind == "ours":
                    raise _Skip(
                        f"our server does not start with the Kafka ingress yet: {str(exc).splitlines()[-1][:160]}"
                    ) from None
                raise
            try:
                chunks = split(n, procs)
                kwargs, start = [], 0
                for i, k in enumerate(chunks):
                    kwargs.append(
                        {
                            "target": servers[i % len(servers)].target,
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
                    warm = (3.0 if not quick else 2.0) + (
                        float(os.environ.get("BENCH_WARMUP_EXTRA", "6"))
                        if len(servers) > 1
                        else 0.0
                    )
                    prod.send("rate", 50, warm)
                    prod.gather("produced", 60)
                    time.sleep(1.0)
                    produced: dict[int, int] = {}
                    cpu: dict[int, float] = {}
                    for rate in rates:
                        progress(f"events/{kind}: {rate} events/s for {duration}s")
                        cpu0 = sum(s.cpu() for s in servers)
                        prod.send("rate", rate, duration)
                        (p,) = prod.gather("produced", duration + 60)
                        produced[rate] = p["sent"]
                        time.sleep(1.0 if quick else 2.0)
                        # server CPU while this rate was offered and the pause after it
                        cpu[rate] = sum(s.cpu() for s in servers) - cpu0
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
                s["cpu_us_per_delivery"] = (
                    cpu[rate] / len(by_rate[rate]) * 1e6 if by_rate[rate] else float("nan")
                )
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
    tag = f" x{replicas} replicas" if replicas > 1 else ""
    for rate in rates:
        o, b = stats["ours"][rate], stats["bare"][rate]
        note = (
            f"delivered {o['delivered']}/{o['produced']}" if o["delivered"] < o["produced"] else ""
        )
        res.rows.append(Row(f"{rate}/s p50{tag}", o.get("p50"), b.get("p50"), "ms"))
        res.rows.append(Row(f"{rate}/s p99{tag}", o.get("p99"), b.get("p99"), "ms", "", note))
        res.rows.append(
            Row(
                f"{rate}/s server CPU per delivery{tag}",
                o["cpu_us_per_delivery"],
                b["cpu_us_per_delivery"],
                "us",
            )
        )
        share = o.get("p99", float("nan")) - b.get("p99", float("nan"))
        res.rows.append(
            Row(
                f"{rate}/s our share of p99{tag}",
                share,
                None,
                "ms",
                "<=10ms" if rate == 5000 else "",
            )
        )
    res.lines["delivered/s vs offered rate"] = {
        k: [(float(r), stats[k][r]["delivered_per_s"]) for r in rates] for k in ("ours", "bare")
    }
    res.data = {"stats": stats, "sessions": n, "duration_s": duration, "replicas": replicas}
    return res
