"""Fixtures of the outbound tests: a store on each database, a signed-webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.outbound.receiver import WebhookReceiver
from tests.support.databases import temp_database

SECRET = "outbound-test-secret"


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with temp_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
