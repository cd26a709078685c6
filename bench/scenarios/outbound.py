"""outbound: the conversation-event relay to Kafka (Tansu) against a bare aiokafka producer.

* **throughput**: N events pre-committed to the outbox (S sessions of turns); the time the
  relay (one Kafka sink) takes to publish and settle them all (until the last pending row
  is gone), vs a bare ``AIOKafkaProducer`` sending the same records (same bytes, headers
  and keys, same producer settings) in the same run, two ways: ``send`` per record and
  full record batches (``create_batch`` / ``send_batch``, as the sink sends them); the
  goal (>= 0.8x) is against the faster of the two. The process CPU per event of each
  (the relay's includes its store reads and deletes) is reported beside it;
* **commit -> published**: 1,000 events/s committed (one frame per append, 50 sessions)
  while the relay runs; a consumer measures record receipt - commit time: p50 / p99
  (goal p99 <= 50 ms);
* **CPU per turn**: our server (``talkwire serve``) with 100 sessions ping-pong, without
  an ``outbound:`` section and then with one Kafka sink (its relay runs in the same
  process): server CPU per turn, goal <= 1.10x.

The producer settings are the sink's (acks=all, linger 2 ms); idempotence is off because
Tansu has no ``InitProducerId`` (the sink turns it on by default).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Workers, progress, server, split, summary
from bench.report import Result, Row

SINK = "bench"


def _section(bootstrap: str, topic: str) -> dict[str, Any]:
    return {
        "relay": {"poll_interval": 0.05, "batch": 200, "sessions": 500},
        SINK: {
            "type": "kafka",
            "bootstrap": bootstrap,
            "topic": topic,
            "idempotence": False,
            "timeout": 10,
        },
    }


async def _topics(bootstrap: str, *names: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=3, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()


async def _prefill(store: Any, sessions: int, turns: int) -> list[str]:
    from talkwire.server.identity import Identity
    from talkwire.v1 import chat_pb2

    ids = []
    for s in range(sessions):
        record, _ = await store.create_session(Identity(f"u{s}"), channel="bench")
        ids.append(record.id)
    for t in range(turns):
        jobs = []
        for sid in ids:
            req = chat_pb2.ConverseRequest(id=f"f{t}")
            req.message.text = f"question number {t} about order 1001"
            frame = chat_pb2.ConverseResponse(in_reply_to=f"f{t}")
            frame.reply.text = f"answer number {t}: your order 1001 has shipped"
            jobs.append(
                store.append(sid, [frame.SerializeToString()], turn=req.SerializeToString())
            )
        await asyncio.gather(*jobs)
    return ids


async def _throughput(bootstrap: str, sessions: int, turns: int) -> dict[str, float]:
    from talkwire.connectors.registry import ConnectorRegistry
    from talkwire.server.outbound.events import to_message
    from talkwire.server.outbound.kafka import cloudevent_headers
    from talkwire.server.outbound.outbox import OutboundOutbox
    from talkwire.server.outbound.service import OutboundService, recorder_for
    from talkwire.server.outbound.settings import OutboundSettings
    from talkwire.server.store import SessionStore

    await _topics(bootstrap, "bench-relay", "bench-bare", "bench-bare-batch")
    settings = OutboundSettings.from_config(_section(bootstrap, "bench-relay"))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'o.db'}"
        async with SessionStore(url, events=recorder_for(settings)) as store:
            ids = await _prefill(store, sessions, turns)
            outbox = OutboundOutbox(store.executor)
            rows = [e for sid in ids for e in await outbox.session_events(sid)]
            n = len(rows)
            progress(f"outbound: relay publishes {n} events")
            async with OutboundService(settings, store, ConnectorRegistry({})):
                # Timed from here: the producer has connected, as the bare one has below;
                # until the last pending row is gone (published and settled), not until
                # the service has shut down (the bare producer's stop is not timed either).
                t0, c0 = time.perf_counter(), time.process_time()
                while await store.executor.read_point(_pending_any):
                    await asyncio.sleep(0.001)  # the probe: one row, on the loop's connection
                relay_s, relay_cpu = time.perf_counter() - t0, time.process_time() - c0
        records = []
        for row in rows:
            msg = to_message(row)
            headers = cloudevent_headers(
                msg, source="talkwire", content_type="application/protobuf"
            )
            records.append((row.session_id.encode(), msg.SerializeToString(), headers))
        progress(f"outbound: bare producer sends the same {n} records (send, then send_batch)")
        bare_s, bare_cpu = await _bare_send(bootstrap, "bench-bare", records)
        batch_s, batch_cpu = await _bare_send_batch(bootstrap, "bench-bare-batch", records)
    return {
        "events": n,
        "relay_per_s": n / relay_s,
        "bare_per_s": n / bare_s,
        "bare_batch_per_s": n / batch_s,
        "relay_cpu_us": relay_cpu / n * 1e6,
        "bare_cpu_us": bare_cpu / n * 1e6,
        "bare_batch_cpu_us": batch_cpu / n * 1e6,
    }


def _pending_any(conn: Any) -> bool:
    """A pending row is left (raw sqlite3: microseconds, no thread hop)."""
    from talkwire.server import schema

    query = f"SELECT 1 FROM {schema.outbound_pending.name} LIMIT 1"  # noqa: S608
    return conn.execute(query).fetchone() is not None


Records = list[tuple[bytes, bytes, list[tuple[str, bytes]]]]


def _producer(bootstrap: str) -> Any:
    from aiokafka import AIOKafkaProducer

    # The sink's producer settings (see KafkaSink._new_producer).
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=2, enable_idempotence=False
    )


async def _bare_send(bootstrap: str, topic: str, records: Records) -> tuple[float, float]:
    """``send`` per record, then every acknowledgement: (seconds, CPU seconds)."""
    producer = _producer(bootstrap)
    await producer.start()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*futures)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        await producer.stop()


async def _bare_send_batch(bootstrap: str, topic: str, records: Records) -> tuple[float, float]:
    """The same records as full record batches (``create_batch`` / ``send_batch``), the
    key's partition as ``send`` picks it (once per key), partitions in parallel."""
    from aiokafka.partitioner import DefaultPartitioner

    producer = _producer(bootstrap)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        t0, c0 = time.perf_counter(), time.process_time()
        pick = DefaultPartitioner()
        of_key: dict[bytes, int] = {}
        by_partition: dict[int, Records] = {}
        for rec in records:
            p = of_key.get(rec[0])
            if p is None:
                p = of_key[rec[0]] = pick(rec[0], partitions, partitions)
            by_partition.setdefault(p, []).append(rec)

        async def one(partition: int, recs: Records) -> list[asyncio.Future[Any]]:
            futures = []
            batch = producer.create_batch()
            for key, value, headers in recs:
                if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    batch.close()
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(timestamp=None, key=key, value=value, headers=headers)
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            return futures

        sent = await asyncio.gather(*(one(p, recs) for p, recs in by_partition.items()))
        await asyncio.gather(*(f for futures in sent for f in futures))
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        await producer.stop()


async def _latency(bootstrap: str, rate: int, seconds: float) -> list[float]:
    from aiokafka import AIOKafkaConsumer

    from talkwire.connectors.registry import ConnectorRegistry
    from talkwire.server.identity import Identity
    from talkwire.server.outbound.service import OutboundService, recorder_for
    from talkwire.server.outbound.settings import OutboundSettings
    from talkwire.server.store import SessionStore
    from talkwire.v1 import chat_pb2, conversation_pb2

    await _topics(bootstrap, "bench-latency")
    section = _section(bootstrap, "bench-latency")
    section[SINK]["on"] = ["frame.appended"]
    settings = OutboundSettings.from_config(section)
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'l.db'}"
        async with SessionStore(url, events=recorder_for(settings)) as store:
            ids = [(await store.create_session(Identity(f"u{i}")))[0].id for i in range(50)]
            consumer = AIOKafkaConsumer(
                "bench-latency",
                bootstrap_servers=bootstrap,
                auto_offset_reset="latest",
                fetch_max_wait_ms=5,
            )
            await consumer.start()
            await consumer.seek_to_end()
            want = int(rate * seconds)
            measured_from = [float("inf")]

            async def consume() -> None:
                while len(samples) < want:
                    batch = await consumer.getmany(timeout_ms=100)
                    now = time.time()
                    for recs in batch.values():
                        for rec in recs:
                            ev = conversation_pb2.ConversationEvent.FromString(rec.value)
                            at = ev.occurred_at.ToNanoseconds() / 1e9
                            if at >= measured_from[0]:  # not a warm-up event
                                samples.append((now - at) * 1000)

            frame = chat_pb2.ConverseResponse()
            frame.reply.text = "an answer of a usual length, with an order number 1001"
            payload = frame.SerializeToString()
            pending: set[asyncio.Future[Any]] = set()
            async with OutboundService(settings, store, ConnectorRegistry({})):
                reader = asyncio.create_task(consume())
                warmup = rate  # one second of load, not measured: the steady state is
                for i in range(warmup):
                    await asyncio.sleep(1 / rate)
                    await store.append(ids[i % len(ids)], [payload])
                while (await store.executor.read(_pending_count)) > 0:
                    await asyncio.sleep(0.01)
                measured_from[0] = time.time()
                t0 = time.perf_counter()
                for i in range(want):
                    due = t0 + i / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)  # the pacer of the offered load
                    job = asyncio.ensure_future(store.append(ids[i % len(ids)], [payload]))
                    pending.add(job)
                    job.add_done_callback(pending.discard)
                async with asyncio.timeout(60):
                    await reader
            await consumer.stop()
    return samples


def _pending_count(conn: Any) -> int:
    from sqlalchemy import func, select

    from talkwire.server import schema

    return int(conn.execute(select(func.count()).select_from(schema.outbound_pending)).scalar())


def _cpu_per_turn(extra: dict[str, Any] | None, sessions: int, duration: float) -> float:
    with server("ours", config_extra=extra) as srv:
        kwargs = [
            {"target": srv.target, "sessions": n, "nchan": 2, "duration": duration}
            for n in split(sessions, 2)
        ]
        with Workers("bench.client:w_pingpong", kwargs) as w:
            w.gather("ready", 60)
            cpu0 = srv.cpu()
            w.send("go")
            out = w.gather("result", duration + 60)
            time.sleep(1.0)  # let the relay publish what the turns wrote: its CPU counts
            cpu1 = srv.cpu()
    total = sum(o["turns"] for o in out)
    return (cpu1 - cpu0) / total * 1e6 if total else float("nan")


def run(quick: bool) -> Result:
    from tests.support.broker import TansuBroker

    res = Result("outbound")
    sessions, turns = (50, 10) if quick else (200, 50)
    seconds = 2.0 if quick else 10.0
    with TansuBroker() as broker:
        bootstrap = broker.bootstrap
        tput = asyncio.run(_throughput(bootstrap, sessions, turns))
        progress(f"outbound: 1000 events/s for {seconds}s, commit -> published")
        lat = summary(asyncio.run(_latency(bootstrap, 1000, seconds)))
        asyncio.run(_topics(bootstrap, "bench-cpu"))
        progress("outbound: server CPU per turn without / with one Kafka sink")
        duration = 1.0 if quick else 8.0
        bare_cpu = _cpu_per_turn(None, 100, duration)
        sink_cpu = _cpu_per_turn({"outbound": _section(bootstrap, "bench-cpu")}, 100, duration)
    best = max(tput["bare_per_s"], tput["bare_batch_per_s"])
    res.rows = [
        Row(
            f"relay to Kafka, {int(tput['events'])} events (vs the faster bare aiokafka)",
            tput["relay_per_s"],
            best,
            "ev/s",
            ">=0.8x",
        ),
        Row("  the same, vs bare send per record", tput["relay_per_s"], tput["bare_per_s"], "ev/s"),
        Row(
            "  the same, vs bare send_batch",
            tput["relay_per_s"],
            tput["bare_batch_per_s"],
            "ev/s",
        ),
        Row("relay CPU per event (vs bare send)", tput["relay_cpu_us"], tput["bare_cpu_us"], "us"),
        Row(
            "relay CPU per event (vs bare send_batch)",
            tput["relay_cpu_us"],
            tput["bare_batch_cpu_us"],
            "us",
        ),
        Row("commit -> published p50 @1000/s", lat["p50"], None, "ms"),
        Row("commit -> published p99 @1000/s", lat["p99"], None, "ms", "<=50ms"),
        Row("server CPU per turn, one Kafka sink (vs none)", sink_cpu, bare_cpu, "us", "<=1.1x"),
    ]
    res.data = {"throughput": tput, "latency_ms": lat, "cpu_us_per_turn": [bare_cpu, sink_cpu]}
    return res
