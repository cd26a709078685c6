from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.connectors.httpserver import MiniHttpServer, mini_server


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def http() -> AsyncIterator[MiniHttpServer]:
    async with mini_server() as server:
        yield server
