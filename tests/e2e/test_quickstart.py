"""The README's first command, as a new user runs it: a fresh clone, a fresh venv, a live push.

The test clones this repository (its committed state) into a temporary
directory, runs the first ``sh`` block of the README's *Quick start* verbatim
in it (it creates ``.venv``, installs ``.[demo]`` -- pip may use its cache --
and starts ``talkwire demo``), then opens a session with the client library,
asks for order 1001 and waits for the pushed ``update`` of that order. Only the
port differs from a user's run (``TALKWIRE_LISTEN``: the shared test machine
may have 50051 taken). The times from the clone to the banner and to the first
update are printed (``pytest -s``); the README quotes them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest

from talkwire.clients import ChatClient
from tests.support.broker import free_port

ROOT = Path(__file__).resolve().parents[2]


def _first_command() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1]
    match = re.search(r"```sh\n(.+?)\n```", quick, re.S)
    assert match is not None, "the Quick start has a sh block"
    return match.group(1).strip()


async def _line_matching(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> str:
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError("talkwire demo ended early:\n" + "".join(seen[-40:]))
        line = raw.decode(errors="replace")
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found.group(1)


async def _keep_reading(stream: asyncio.StreamReader, seen: list[str]) -> None:
    while raw := await stream.readline():
        seen.append(raw.decode(errors="replace"))


@pytest.mark.kafka
async def test_readme_first_command_in_a_fresh_clone_pushes_a_live_update(
    tmp_path: Path,
) -> None:
    command = _first_command()
    assert "talkwire demo" in command
    started = time.monotonic()
    clone = tmp_path / "talkwire"
    git = await asyncio.create_subprocess_exec("git", "clone", "--quiet", str(ROOT), str(clone))
    assert await asyncio.wait_for(git.wait(), 120) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["TALKWIRE_LISTEN"] = f"127.0.0.1:{free_port()}"
    env["TALKWIRE_WEB__LISTEN"] = f"127.0.0.1:{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        cwd=clone,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        target = await asyncio.wait_for(_line_matching(proc.stdout, r"^\s+gRPC\s+(\S+)", seen), 900)
        banner_at = time.monotonic() - started
        reader = asyncio.create_task(_keep_reading(proc.stdout, seen))
        async with ChatClient(target) as client:
            session = await client.open(channel="quickstart")
            asked = time.monotonic()
            await session.send("where is my order 1001")
            update = await session.wait_for(
                lambda f: f.WhichOneof("frame") == "update", timeout=120
            )
            await session.aclose()
        pushed_at = time.monotonic()
        assert update.update.key == "order:1001"
        assert update.update.text.startswith("Order 1001 (Espresso machine) is now ")
        print(
            f"\nquick start: clone to banner {banner_at:.1f} s, clone to first update "
            f"{pushed_at - started:.1f} s, question to update {pushed_at - asked:.1f} s"
        )
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    await reader
    output = "".join(seen)
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output
