"""Kafka faults: broker stop/restart during load, consumer membership 1 -> 2 -> 1.

NOT WRITTEN YET: skeletons, marked xfail(strict=False), so the gap is visible in
every run. Plan (issue 7): producers record events in the History; the Tansu
broker (tests/support/broker.py, memory storage) is restarted mid-load, then the
topic is recreated and the recorded history re-produced (event-id dedup makes
the re-delivery invisible); a second ``talkwire serve`` joins the consumer group
and leaves again; the checker's five counts must be zero, and committed offsets
must never pass an event that was not stored.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.kafka]

REASON = "Kafka fault tests not written yet (issue 7): the Kafka ingress was being finished"


@pytest.mark.xfail(strict=False, reason=REASON)
def test_broker_restart_during_load_loses_nothing() -> None:
    pytest.fail(REASON)


@pytest.mark.xfail(strict=False, reason=REASON)
def test_consumer_membership_1_2_1_loses_nothing() -> None:
    pytest.fail(REASON)
