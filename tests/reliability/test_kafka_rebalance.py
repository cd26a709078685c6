"""How long events wait while a replica's partitions move: kill -9 and SIGTERM.

Two ``talkwire serve`` replicas (one PostgreSQL store, one Redis bus) share one
consumer group on a 4-partition topic, with the production defaults for the
group timeouts (``session_timeout`` 6 s, ``heartbeat_interval`` 1 s). The
sessions live on B; A and B each consume some partitions (an event consumed by
A reaches B's sessions through the store and the bus). Under a steady load, A
is killed (``kill -9``: the broker notices only after ``session_timeout``) or
terminated (SIGTERM: A commits what it stored and leaves the group at once).
B must take A's partitions over, and every event must arrive exactly once
(history checker). The test prints the worst and the p99 delay from
production to the pushed frame over the whole run (the README states the
bound measured here); there is no timing assertion.
"""

from __future__ import annotations

import dataclasses
import secrets
import statistics
import time
from pathlib import Path

import pytest

from talkwire.server.events.settings import KafkaSettings
from tests.events.conftest import create_topics
from tests.reliability.conftest import Reader, chat_client, print_report, scale, wait_caught_up
from tests.reliability.test_kafka_faults import (
    KafkaLoad,
    Sent,
    kafka_events,
    open_readers,
    owned,
    reader_errors,
    replica,
    stop_readers,
)
from tests.reliability.test_kafka_faults import bus_prefix as bus_prefix
from tests.reliability.test_kafka_faults import kf_database as kf_database
from tests.support.broker import TansuBroker
from tests.support.history import History
from tests.support.waiting import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.redis]

PARTITIONS = 4
DEFAULTS = {f.name: f.default for f in dataclasses.fields(KafkaSettings)}


class TimedLoad(KafkaLoad):
    """A :class:`KafkaLoad` that remembers when each event was handed to the producer."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sent_at: dict[str, float] = {}

    def _build(self, key: str) -> Sent:
        sent = super()._build(key)
        self.sent_at[sent.event_id] = time.monotonic()
        return sent


@pytest.mark.parametrize("stop", ["kill9", "sigterm"])
async def test_worst_event_delay_across_a_replica_stop(
    tmp_path: Path, tansu: TansuBroker, kf_database: str, bus_prefix: str, stop: str
) -> None:
    sessions = scale(24, 120)
    n_keys = scale(12, 40)
    history = History()
    topic = f"orders-{secrets.token_hex(4)}"
    await create_topics(tansu.bootstrap, topic, partitions=PARTITIONS)
    events = kafka_events(tansu.bootstrap, topic, f"tw-{secrets.token_hex(4)}")
    del events["session_timeout"], events["heartbeat_interval"]  # the shipped defaults
    a = replica("a", kf_database, bus_prefix, events, tmp_path)
    b = replica("b", kf_database, bus_prefix, events, tmp_path)
    keys = [f"order:{i}" for i in range(n_keys)]
    client = chat_client(b.target)
    readers: list[Reader] = []
    load = TimedLoad(history, tansu.bootstrap, topic, keys, interval=0.05)
    try:
        await a.start()
        await b.start()
        await eventually(
            lambda: bool(owned(a)) and bool(owned(b)) and len(owned(a) | owned(b)) == PARTITIONS,
            timeout=60,
            message="partitions shared by A and B",
        )
        await client.__aenter__()
        readers = await open_readers([client], history, keys, sessions)
        for r in readers:
            r.sent_at = load.sent_at
        await load.start()
        await eventually(lambda: load.acked >= 100, message="load on two members")

        lost_partitions = owned(a)
        if stop == "kill9":
            await a.kill()
        else:
            assert await a.terminate(timeout=30) == 0, a.log_tail()
        await eventually(
            lambda: len(owned(b)) == PARTITIONS, timeout=60, message="B owns every partition"
        )
        mark = load.acked
        await eventually(lambda: load.acked >= mark + 100, message="load on B alone")
        await load.stop()

        report = await wait_caught_up(history, timeout=60)
        print_report(report, f"kafka-rebalance-{stop}")
        delays = sorted(d for r in readers for d in r.latencies)
        p99 = delays[int(0.99 * (len(delays) - 1))]
        print(
            f"kafka-rebalance-{stop}: events={len(load.sent)} frames={len(delays)} "
            f"partitions moved={sorted(lost_partitions)} worst delay={delays[-1]:.2f}s "
            f"p99={p99:.2f}s median={statistics.median(delays):.3f}s "
            f"(session_timeout {DEFAULTS['session_timeout']} s, "
            f"heartbeat {DEFAULTS['heartbeat_interval']} s)"
        )
        assert load.failed == 0 and not load.errors, load.errors[:3]
        assert not reader_errors(readers), reader_errors(readers)[:5]
        report.assert_clean()
    finally:
        await load.stop()
        await stop_readers(readers)
        await client.aclose()
        await a.kill()
        await b.kill()
