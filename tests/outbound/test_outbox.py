"""The transactional outbox on SQLite, PostgreSQL and MariaDB, relayed to a real webhook."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkwire.server.errors import ConfigError
from talkwire.server.identity import Identity
from talkwire.server.outbound.settings import OutboundSettings
from tests.connectors.httpserver import Response
from tests.outbound.conftest import SECRET
from tests.outbound.helpers import (
    converse,
    expected_history,
    outbound_store,
    reply,
    update_event,
    user_message,
)
from tests.outbound.receiver import WebhookReceiver
from tests.support.waiting import eventually


def hook(url: str, **extra: object) -> dict[str, object]:
    return {
        "relay": {"poll_interval": 0.05},
        "hook": {
            "type": "webhook",
            "url": url,
            "secret": SECRET,
            "allow_private": True,
            "retries": {"base_delay": 0.05, "max_delay": 0.2},
            **extra,
        },
    }


async def test_every_step_is_an_event_in_its_own_transaction(store_url: str) -> None:
    async with outbound_store(store_url, {}) as (store, service):
        record, _ = await store.create_session(Identity("alice"), channel="web")
        await store.append(record.id, [reply("hello")], turn=user_message("hi"))
        await store.subscribe(record.id, "order:1")
        await store.fanout([update_event("e1", "order:1", "shipped")])
        await store.unsubscribe(record.id, "order:1")
        claimed = await store.claim_session(record.id, lambda r: r, replica="r2")  # type: ignore[arg-type,return-value]
        assert claimed.id == record.id
        await store.close_session(record.id)
        kinds = [e.kind for e in await service.outbox.session_events(record.id)]
        assert kinds == [
            "session.opened",
            "turn.received",
            "frame.appended",
            "subscription.changed",
            "frame.appended",
            "subscription.changed",
            "session.resumed",
            "session.closed",
        ]
        transcript = await service.transcript(record.id)
        assert [e.kind for e in transcript] == ["turn.received", "frame.appended", "frame.appended"]
        assert transcript[0].turn.message.text == "hi"
        assert transcript[1].frame.reply.text == "hello" and transcript[1].seq == 1
        assert transcript[2].frame.update.text == "shipped" and transcript[2].seq == 2
        assert transcript[0].id == f"{record.id}:{transcript[0].position}"


async def test_a_failed_turn_writes_no_event(store_url: str) -> None:
    async with outbound_store(store_url, {}) as (store, service):
        record, _ = await store.create_session(Identity("alice"))
        await store.close_session(record.id)
        with pytest.raises(Exception, match="not found or closed"):
            await store.append(record.id, [reply("late")], turn=user_message("hi"))
        kinds = [e.kind for e in await service.outbox.session_events(record.id)]
        assert kinds == ["session.opened", "session.closed"]


async def test_webhook_gets_everything_in_order_through_500_429_and_slow(
    store_url: str, receiver: WebhookReceiver
) -> None:
    receiver.script.extend(
        [
            Response(500),
            Response(429, headers={"retry-after": "1"}),
            0.3,  # slow: answers late, then takes it
            Response(503),
            Response(408),
        ]
    )
    async with outbound_store(store_url, hook(receiver.url, batch=3)) as (store, service):
        sessions = [await converse(store, 4, subject=f"u{i}") for i in range(3)]
        history = await expected_history(service, sessions)
        await eventually(
            lambda: len({e["id"] for e in receiver.events}) >= history.check().events,
            timeout=60,
            message="every event at the receiver",
        )
        for event in receiver.events:
            history.record_event(event)
        report = history.check()
        print(report.summary("outbound webhook"))
        report.assert_clean()
        assert receiver.bad_signatures == 0
        status = {s.name: s for s in await service.status()}["hook"]
        assert status.retried >= 4 and status.pending == 0 and status.dead_lettered == 0


async def test_refused_event_is_dead_lettered_then_redriven(
    store_url: str, receiver: WebhookReceiver
) -> None:
    receiver.script.append(Response(400, json={"error": "no"}))
    async with outbound_store(store_url, hook(receiver.url)) as (store, service):
        sid = await converse(store, 1)
        await eventually(lambda: len(receiver.events) >= 2, message="the rest delivered")
        status = (await service.status())[0]
        assert status.dead_lettered == 1
        assert receiver.events[0]["kind"] == "turn.received"  # the refused one was the first
        assert await service.redrive() == 1
        await eventually(lambda: len(receiver.events) >= 3, message="the re-driven event")
        assert receiver.events[-1]["kind"] == "session.opened"
        assert receiver.events[-1]["id"].startswith(f"{sid}:")
        assert (await service.status())[0].dead_lettered == 0


async def test_receiver_down_never_blocks_turns_and_gets_all_when_back(
    tmp_path: object, receiver: WebhookReceiver
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/down.db"
    await receiver.stop()
    async with outbound_store(url, hook(receiver.url)) as (store, service):
        sid = await converse(store, 5)  # turns commit while the receiver is down
        status = (await service.status())[0]
        assert status.pending == 11
        await eventually(
            lambda: _failed(service), message="the relay tried and failed at least once"
        )
        await receiver.start()
        history = await expected_history(service, [sid])
        await eventually(lambda: len(receiver.events) >= 11, timeout=30, message="delivery")
        for event in receiver.events:
            history.record_event(event)
        history.check().assert_clean()


async def _failed(service: object) -> bool:
    status = await service.status()  # type: ignore[attr-defined]
    return bool(status[0].failed)


async def test_redacted_sink_hides_text(store_url: str, receiver: WebhookReceiver) -> None:
    async with outbound_store(store_url, hook(receiver.url, text="redact")) as (store, _):
        await converse(store, 1)
        await eventually(lambda: len(receiver.events) >= 3, message="delivery")
        turn, frame = receiver.events[1], receiver.events[2]
        assert turn["turn"]["message"]["text"] == "[redacted]" and turn["redacted"]
        assert frame["frame"]["reply"]["text"] == "[redacted]"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"hook": {"type": "webhook", "secret": "s"}}, "outbound.hook.url"),
        ({"hook": {"type": "webhook", "url": "https://x.example"}}, "outbound.hook.secret"),
        ({"hook": {"type": "smtp"}}, "outbound.hook.type"),
        ({"k": {"type": "kafka", "bootstrap": "127.0.0.1:1"}}, "outbound.k.topic"),
        ({"k": {"type": "kafka", "topic": "t", "bootstrp": "x"}}, "outbound.k.bootstrp"),
        ({"c": {"connector": "nope", "operation": "x"}}, "outbound.c.connector"),
        ({"relay": {"batch": 0}}, "outbound.relay.batch"),
    ],
)
async def test_misconfigured_sink_is_refused_naming_the_key(
    tmp_path: object, section: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        async with outbound_store(f"sqlite+aiosqlite:///{tmp_path}/c.db", section):
            pass


def test_kinds_are_an_open_set() -> None:
    settings = OutboundSettings.from_config(
        {"h": {"type": "webhook", "url": "https://x", "secret": "s", "on": ["handoff.*"]}}
    )
    route = settings.sinks[0].route
    assert route.takes("handoff.queued") and not route.takes("frame.appended")


def test_serve_refuses_a_misconfigured_sink_in_one_line(tmp_path: Path) -> None:
    from tests.config.test_cli_errors import _serve

    code, lines = _serve(
        tmp_path,
        f"""
        server: {{listen: '127.0.0.1:0', handler: echo}}
        store: {{url: 'sqlite+aiosqlite:///{tmp_path}/s.db'}}
        outbound:
          crm_hook:
            type: webhook
            secret: s
        """,
    )
    assert code == 2
    assert lines[-1].startswith("talkwire: outbound.crm_hook.url (")
    assert lines[-1].endswith("required http(s) URL")
    assert not any("Traceback" in line for line in lines)


async def test_old_events_are_pruned_unless_a_sink_waits_for_them(
    store_url: str, receiver: WebhookReceiver
) -> None:
    import time

    from talkwire.server.outbound.outbox import OutboundOutbox

    url = store_url
    await receiver.stop()  # the sink's events stay pending
    section = hook(receiver.url, on=["session.opened"])
    async with outbound_store(url, section) as (store, service):
        sid = await converse(store, 2)
        later = OutboundOutbox(store.executor, clock=lambda: time.time() + 10**7)
        assert await later.prune(86400) == 4  # the turns and frames; not the pending one
        assert [e.kind for e in await service.outbox.session_events(sid)] == ["session.opened"]


async def test_each_handoff_step_is_an_event_in_its_transaction(store_url: str) -> None:
    from talkwire.server.handoff.store import HandoffStore

    async with outbound_store(store_url, {}) as (store, service):
        handoffs = HandoffStore(store)
        record, _ = await store.create_session(Identity("alice"), channel="web")
        ann = Identity("ann", {"name": "Ann"}, frozenset({"agent"}))
        await handoffs.queue(record.id, queue="billing", reason="asked", context={})
        await handoffs.accept(record.id, ann, may_serve=lambda q: True)
        await handoffs.transfer(record.id, "ann", queue="general")
        await handoffs.accept(record.id, ann, may_serve=lambda q: True)
        await handoffs.close(record.id, "ann", reason="done")
        events = await service.outbox.session_events(record.id)
        assert [e.kind for e in events if e.kind != "frame.appended"] == [
            "session.opened",
            "handoff.queued",
            "handoff.accepted",
            "handoff.transferred",
            "handoff.accepted",
            "handoff.released",
            "session.closed",
        ]
        # Each step's user-visible handoff frame is in the stream too, in the same order.
        assert sum(e.kind == "frame.appended" for e in events) == 5
