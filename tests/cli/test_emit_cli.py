"""``talkwire emit`` through the console script: the README's command, stdin lines, bad input."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from talkwire.clients import ChatClient
from talkwire.server.app import Application
from tests.cli.conftest import talkwire
from tests.conftest import make_config
from tests.events.conftest import create_topics
from tests.support.broker import TansuBroker

pytestmark = pytest.mark.kafka


@pytest.fixture
async def kafka_app(make_app: Any, tmp_path: Path, tansu: TansuBroker) -> Application:
    """A topic configured as in the README's Change events section (``format: json``)."""
    topic = f"erp.orders-{uuid.uuid4().hex[:8]}"
    await create_topics(tansu.bootstrap, topic)
    events = {
        "bootstrap": tansu.bootstrap,
        "group_id": f"tw-{uuid.uuid4().hex[:8]}",
        "start": "earliest",
        "session_timeout": 2.0,
        "heartbeat_interval": 0.3,
        "topics": {
            topic: {
                "format": "json",
                "keys": ["order:{after.id}", "customer:{after.customer_id}"],
                "update_text": "Order {after.id} is now {after.status}",
            }
        },
    }
    app: Application = await make_app(make_config(tmp_path, events=events))
    app.test_topic = topic  # type: ignore[attr-defined]
    return app


async def test_readme_emit_command_reaches_the_subscriber(
    kafka_app: Application, tansu: TansuBroker
) -> None:
    """The README's example, default --format: it reached the session (it used to dead-letter)."""
    topic = kafka_app.test_topic  # type: ignore[attr-defined]
    async with ChatClient(kafka_app.target, token="alice-token") as client:
        session = await client.open()
        await session.subscribe("order:1001")
        assert (await session.next_frame(timeout=10)).subscription.active

        one = await talkwire(
            "emit",
            "--bootstrap",
            tansu.bootstrap,
            "--topic",
            topic,
            "--type",
            "order.status_changed",
            "--key",
            "order:1001",
            "--after",
            '{"id":1001,"status":"shipped"}',
        )
        assert one.code == 0, one.err
        assert one.out.startswith("emitted ")
        update = await session.next_frame(timeout=30)
        assert update.update.text == "Order 1001 is now shipped"

        lines = [
            {"type": "order.status_changed", "after": {"id": 1001, "status": "packed"}},
            "not json",
            {"type": "order.status_changed", "keys": ["order:1001"], "bogus": 1},
            {"type": "order.status_changed", "after": {"id": 1001, "status": "delivered"}},
        ]
        stdin = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
        many = await talkwire(
            "emit",
            "--bootstrap",
            tansu.bootstrap,
            "--topic",
            topic,
            "--key",
            "order:1001",
            input=stdin,
        )
        assert many.code == 2  # two lines refused, named on stderr; the others were sent
        assert many.err.splitlines() == [
            "talkwire emit: stdin line 2: not valid JSON (Expecting value at column 1)",
            "talkwire emit: stdin line 3: unknown field(s) bogus",
        ]
        assert len(many.lines) == 2
        texts = [(await session.next_frame(timeout=30)).update.text for _ in range(2)]
        assert texts == ["Order 1001 is now packed", "Order 1001 is now delivered"]


async def test_emit_usage_errors_name_the_flag(tansu: TansuBroker) -> None:
    no_topic = await talkwire("emit", "--bootstrap", tansu.bootstrap, "--type", "x", "--key", "k")
    assert (no_topic.code, no_topic.err) == (
        2,
        "talkwire emit: --topic: required (or TALKWIRE_EVENTS_TOPIC)\n",
    )
    bad = await talkwire("emit", "--via-admin", "--type", "x", "--key", "k", "--after", "[1]")
    assert (bad.code, bad.err) == (2, "talkwire emit: --after: expected a JSON object\n")


async def test_emit_via_admin_takes_tls_flags(tmp_path: Path) -> None:
    """The TLS flags are accepted like on the other commands (a missing CA file: one line)."""
    result = await talkwire(
        "emit",
        "--via-admin",
        "--ca-file",
        str(tmp_path / "missing.pem"),
        "--type",
        "x",
        "--key",
        "k",
    )
    assert result.code == 1
    assert len(result.err.splitlines()) == 1 and "missing.pem" in result.err
