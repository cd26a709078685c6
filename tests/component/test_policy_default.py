"""Subscriptions are denied unless a ``policy`` section allows them (issue 18.4).

A real server (echo handler, no ``policy`` section) driven by the client
library: subscribing is refused with ``PERMISSION_DENIED`` and nothing is
stored; the start-up log says which handler and policy are in use.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from talkwire.clients import ChatClient
from talkwire.server.app import Application
from talkwire.server.config import load_config
from tests.conftest import TOKENS

WAIT = 10.0


def _config_without_policy(tmp_path: Path) -> object:
    return load_config(
        None,
        env={},
        overrides={
            "server": {"listen": "127.0.0.1:0", "handler": "echo", "sweep_interval": 3600},
            "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"},
            "auth": {"kind": "static", "tokens": TOKENS},
            "demo": False,
        },
    )


async def test_no_policy_section_denies_every_subscription(tmp_path: Path) -> None:
    async with (
        Application(_config_without_policy(tmp_path)) as app,  # type: ignore[arg-type]
        ChatClient(app.target, token="alice-token") as client,
    ):
        session = await client.open()
        await session.subscribe("customer:c-100")  # even the caller's own customer key
        frame = await session.wait_for(lambda f: f.HasField("error"), timeout=WAIT)
        assert frame.error.code == "PERMISSION_DENIED"
        assert "customer:c-100" in frame.error.message
        assert await app.store.subscriptions(session.session_id) == []
        # The session keeps working after the refusal.
        await session.send("still here?")
        reply = await session.wait_for(lambda f: f.HasField("reply"), timeout=WAIT)
        assert reply.reply.text == "still here?"


async def test_an_explicit_allow_policy_allows(tmp_path: Path) -> None:
    config = load_config(
        None,
        env={},
        overrides={
            "server": {"listen": "127.0.0.1:0", "handler": "echo", "sweep_interval": 3600},
            "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"},
            "auth": {"kind": "static", "tokens": TOKENS},
            "policy": {"rules": [{"key": "customer:{user.customer_id}"}]},
            "demo": False,
        },
    )
    async with Application(config) as app, ChatClient(app.target, token="alice-token") as client:
        session = await client.open()
        await session.subscribe("customer:c-100")
        frame = await session.wait_for(lambda f: f.HasField("subscription"), timeout=WAIT)
        assert (frame.subscription.key, frame.subscription.active) == ("customer:c-100", True)
        await session.subscribe("customer:c-200")  # someone else's: no rule matches
        frame = await session.wait_for(lambda f: f.HasField("error"), timeout=WAIT)
        assert frame.error.code == "PERMISSION_DENIED"


async def test_start_up_log_names_handler_and_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="talkwire.server.app")
    async with Application(_config_without_policy(tmp_path)):  # type: ignore[arg-type]
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "talkwire.server.app"]
    assert any(
        "handler: echo" in line and "policy: none configured: every subscription is denied" in line
        for line in lines
    ), lines
