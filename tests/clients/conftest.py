"""Fixtures for the client-library tests (the scripted server lives in scripted_server.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from scripted_server import ServerHarness


@pytest.fixture
async def harness() -> AsyncIterator[ServerHarness]:
    h = ServerHarness()
    await h.start()
    try:
        yield h
    finally:
        await h.stop()
