"""OffsetCommitter: commits only what was stored, in order, and retries after a failure."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from talkwire.server.events.commits import OffsetCommitter
from tests.support.waiting import eventually

P0 = TopicPartition("t", 0)
P1 = TopicPartition("t", 1)


class Broker:
    """Records every commit; ``fail`` makes the next ones raise a KafkaError."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.fail = 0
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise KafkaError("broker away")
        self.commits.append(dict(offsets))


async def test_commits_only_stored_offsets_in_order() -> None:
    broker = Broker()
    async with OffsetCommitter(broker.commit) as commits:
        await commits.flush()
        assert broker.commits == []  # nothing stored, nothing committed
        commits.stored({P0: 3})
        await eventually(lambda: broker.commits, message="first commit")
        commits.stored({P0: 5, P1: 2})
        await commits.flush()
        assert broker.commits[-1] == {P0: 5, P1: 2}
        assert commits.pending == {}
    offsets = [c[P0] for c in broker.commits if P0 in c]
    assert offsets == sorted(offsets)


async def test_a_flush_during_a_commit_waits_for_a_round_that_includes_it() -> None:
    broker = Broker()
    broker.gate = asyncio.Event()
    async with OffsetCommitter(broker.commit) as commits:
        commits.stored({P0: 1})
        await eventually(lambda: broker.calls == 1, message="a round in flight")
        commits.stored({P0: 2})
        flush = asyncio.create_task(commits.flush())
        broker.gate.set()
        await flush
        assert broker.commits[-1] == {P0: 2}


async def test_a_failed_commit_keeps_the_offsets_for_the_next_round() -> None:
    broker = Broker()
    broker.fail = 1
    async with OffsetCommitter(broker.commit, interval=3600) as commits:
        commits.stored({P0: 7})
        await commits.flush()
        assert broker.commits == []
        assert commits.pending == {P0: 7}
        assert commits.failures == 1
        await commits.flush()
        assert broker.commits == [{P0: 7}]


async def test_interval_defers_commits_until_a_flush_and_close_flushes() -> None:
    broker = Broker()
    commits = OffsetCommitter(broker.commit, interval=3600)
    async with commits:
        commits.stored({P0: 4})
        await asyncio.sleep(0)  # let the task run: it must not commit before the interval
        assert broker.commits == []
    assert broker.commits == [{P0: 4}]
    await commits.aclose()  # idempotent


async def test_revoke_commits_then_forgets_the_partitions() -> None:
    broker = Broker()
    broker.fail = 1
    async with OffsetCommitter(broker.commit, interval=3600) as commits:
        commits.stored({P0: 2, P1: 9})
        await commits.revoke([P1])
        assert commits.pending == {P0: 2}  # the failed commit: P1 is the new owner's now
    assert broker.commits == [{P0: 2}]
