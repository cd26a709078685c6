"""What one relay round reads: each session's oldest waiting events in order, the
longest-waiting sessions first, capped per session and per round, sessions in backoff
left out without starving the rest (SQLite, PostgreSQL and MariaDB)."""

from __future__ import annotations

from talkwire.server.outbound.outbox import OutboundOutbox
from talkwire.server.outbound.service import recorder_for
from talkwire.server.outbound.settings import OutboundSettings
from talkwire.server.store import SessionStore
from tests.outbound.helpers import converse

# A sink nobody relays for: its rows stay pending while the test reads rounds.
_SECTION = {"hold": {"type": "webhook", "url": "https://example.invalid/", "secret": "s" * 32}}


async def _events(outbox: OutboundOutbox, sid: str) -> list[int]:
    return [e.id for e in await outbox.session_events(sid)]


async def test_a_round_is_each_sessions_oldest_events_in_order(store_url: str) -> None:
    settings = OutboundSettings.from_config(_SECTION)
    async with SessionStore(store_url, events=recorder_for(settings)) as store:
        outbox = OutboundOutbox(store.executor)
        big = await converse(store, 30, subject="big")  # 61 events: opened + 30 x 2
        small = [await converse(store, 1, subject=f"s{i}") for i in range(5)]
        later = await converse(store, 2, subject="later")
        everything = {sid: await _events(outbox, sid) for sid in [big, *small, later]}

        round_ = await outbox.next_events("hold", 4, 10)
        assert list(round_) == [big, *small[:3]]  # the longest-waiting four
        for sid, events in round_.items():
            assert [e.id for e in events] == everything[sid][:10]

        # ``big`` in backoff: its 61 rows come first, yet the others are all read.
        round_ = await outbox.next_events("hold", 10, 3, skip={big})
        assert list(round_) == [*small, later]
        assert [e.id for e in round_[later]] == everything[later][:3]

        # Settled events are gone; the next round starts at the first one left.
        await outbox.settle("hold", everything[big][:55])
        round_ = await outbox.next_events("hold", 1, 100)
        assert [e.id for e in round_[big]] == everything[big][55:]
        assert await outbox.next_events("hold", 5, 5, skip={big, *small, later}) == {}


async def test_a_backlog_larger_than_one_scan_keeps_session_order(store_url: str) -> None:
    settings = OutboundSettings.from_config(_SECTION)
    async with SessionStore(store_url, events=recorder_for(settings)) as store:
        outbox = OutboundOutbox(store.executor)
        one = await converse(store, 1100, subject="one")  # 2,201 events, more than a scan
        two = await converse(store, 1, subject="two")
        round_ = await outbox.next_events("hold", 2, 5000)
        assert [e.id for e in round_[one]] == await _events(outbox, one)
        assert [e.id for e in round_[two]] == await _events(outbox, two)
        round_ = await outbox.next_events("hold", 5, 10)
        assert list(round_) == [one, two]
        assert len(round_[one]) == 10 and len(round_[two]) == 3
