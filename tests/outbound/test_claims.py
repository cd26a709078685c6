"""Claims: one holder of a (sink, session) at a time; a dead holder's claims go with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkwire.server.outbound.claims import open_locks
from tests.support.databases import temp_database


@pytest.mark.parametrize("backend", ["postgresql", "mariadb", "sqlite"])
async def test_one_holder_at_a_time(backend: str, tmp_path: Path) -> None:
    async with temp_database(backend, tmp_path) as url:
        one, two = open_locks(url), open_locks(url)
        if backend == "sqlite":  # one process: one relay per sink shares one lock set
            two = one
        try:
            assert await one.acquire(["hook/s1", "hook/s2"]) == ["hook/s1", "hook/s2"]
            assert await two.acquire(["hook/s1", "hook/s3"]) == ["hook/s3"]
            await one.release(["hook/s1"])
            assert await two.acquire(["hook/s1"]) == ["hook/s1"]
            if backend != "sqlite":
                await two.aclose()  # the holder dies: its claims are released with it
                assert await one.acquire(["hook/s1", "hook/s3"]) == ["hook/s1", "hook/s3"]
        finally:
            await one.aclose()
            await two.aclose()
