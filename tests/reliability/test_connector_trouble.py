"""Connector trouble during turns: backend down, slow, flapping.

The session stays up throughout, the user gets a clear per-turn error frame,
and the REST connector's circuit breaker opens (calls stop reaching the
backend) and closes again once the backend recovers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from talkwire.clients import ChatClient
from talkwire.server.app import Application
from talkwire.server.demo.erp import run_uvicorn
from tests.conftest import make_config


class Backend:
    """A REST 'ERP' whose behaviour the test switches: up, down (503) or slow."""

    def __init__(self) -> None:
        self.mode = "up"
        self.calls = 0
        self.release = asyncio.Event()

    async def balance(self, request: Request) -> JSONResponse:
        self.calls += 1
        if self.mode == "down":
            return JSONResponse({"error": "maintenance"}, status_code=503)
        if self.mode == "slow":
            await self.release.wait()  # longer than the connector's deadline
        return JSONResponse({"balance": 42.5, "currency": "EUR"})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/customers/{cid}/balance", self.balance)])


BOT = {
    "intents": {
        "balance": {
            "examples": ["what's my balance", "how much money do I have"],
            "action": {
                "connector": "erp",
                "operation": "get_balance",
                "params": {"customer_id": "{user.customer_id}"},
            },
            "reply": "Your balance is {result.balance} {result.currency}.",
        }
    },
    "fallback": {"reply": "Sorry?"},
}


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Backend, str]]:
    b = Backend()
    async with run_uvicorn(b.app()) as url:
        yield b, url
        b.release.set()


@pytest.fixture
async def app(make_app: Any, tmp_path: Path, backend: tuple[Backend, str]) -> Application:
    _, url = backend
    connectors = {
        "erp": {
            "type": "rest",
            "base_url": url,
            "allow_private": True,
            "timeout": 0.5,
            "retries": {"attempts": 1},
            "breaker": {"failures": 3, "reset_after": 0.5},
            "operations": {
                "get_balance": {
                    "method": "GET",
                    "path": "/customers/{customer_id}/balance",
                    "params": {"customer_id": {"type": "string"}},
                    "result": "object",
                }
            },
        }
    }
    # The recovery loop asks as fast as the open breaker fails: lift the frame rate limit.
    server = {"handler": "dialogue", "frames_per_second": 10_000, "frame_burst": 10_000}
    config = make_config(tmp_path, connectors=connectors, bot=BOT, server=server)
    result: Application = await make_app(config)
    return result


def _breaker(app: Application) -> float | None:
    return app.metrics.registry.get_sample_value(
        "talkwire_connector_breaker_state", {"connector": "erp"}
    )


async def _ask(session: Any) -> Any:
    await session.send("what's my balance")
    while True:
        frame = await session.next_frame(timeout=15)
        if frame.WhichOneof("frame") in ("reply", "error"):
            return frame


async def test_down_slow_flapping_backend_keeps_the_session_up(
    app: Application, backend: tuple[Backend, str]
) -> None:
    b, _ = backend
    async with ChatClient(app.target, token="alice-token") as client:
        session = await client.open()
        assert _breaker(app) == 0
        assert (await _ask(session)).reply.text == "Your balance is 42.5 EUR."

        # Down: clear, retriable errors; after 3 failures the breaker opens and
        # further turns fail fast without reaching the backend.
        b.mode = "down"
        for _ in range(3):
            frame = await _ask(session)
            assert frame.error.code == "UNAVAILABLE"
            assert frame.error.retriable
        calls = b.calls
        frame = await _ask(session)
        assert frame.error.code == "UNAVAILABLE"
        assert b.calls == calls, "the open breaker must not call the backend"
        assert _breaker(app) == 2  # talkwire_connector_breaker_state: open

        # Recovered: once reset_after has passed, a half-open probe succeeds and
        # the breaker closes (polled with a bounded deadline, no fixed sleep).
        b.mode = "up"
        async with asyncio.timeout(15):
            while (frame := await _ask(session)).WhichOneof("frame") != "reply":
                assert frame.error.code == "UNAVAILABLE"
        assert frame.reply.text == "Your balance is 42.5 EUR."
        assert _breaker(app) == 0  # closed again

        # Slow: the total deadline cuts the call; the user gets DEADLINE_EXCEEDED.
        b.mode = "slow"
        frame = await _ask(session)
        assert frame.error.code == "DEADLINE_EXCEEDED"
        b.release.set()
        b.mode = "up"

        # Flapping: alternate failures and successes; every turn is answered, in order.
        answered = []
        for i in range(6):
            b.mode = "down" if i % 2 else "up"
            frame = await _ask(session)
            answered.append(frame.WhichOneof("frame"))
        assert answered == ["reply", "error"] * 3
        # The stream never broke: seqs are gap-free from the first turn on.
        assert session.reconnects == 0
        await session.aclose()
