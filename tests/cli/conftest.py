"""Fixtures for the CLI tests: a real server in this process, the real console script.

The server runs on the test's event loop, so the CLI runs as an asyncio
subprocess (``talkwire ...``) and the loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from talkwire.server.app import Application
from tests.conftest import make_config
from tests.support.server_proc import talkwire_binary

CLI_TIMEOUT = 60.0


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


async def talkwire(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """Run the ``talkwire`` console script to the end; stdin is ``input`` (or empty)."""
    proc = await asyncio.create_subprocess_exec(
        talkwire_binary(),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    async with asyncio.timeout(CLI_TIMEOUT):
        out, err = await proc.communicate(input.encode() if input is not None else b"")
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def demo_app(make_app: Any, tmp_path: Path) -> Application:
    """The demo bot (CRM, ERP) with the static test tokens of tests/conftest.py."""
    config = make_config(tmp_path, demo=True, server={"handler": "auto", "data_dir": str(tmp_path)})
    app: Application = await make_app(config)
    return app


@pytest.fixture
def as_alice(demo_app: Application) -> list[str]:
    return ["--target", demo_app.target, "--token", "alice-token"]


@pytest.fixture
def as_admin(demo_app: Application) -> list[str]:
    return ["--target", demo_app.target, "--token", "admin-token"]
