"""``talkwire agent`` and ``talkwire chat`` through the real console script (two terminals)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from talkwire.server.app import Application
from tests.handoff.support import handoff_config

TALKWIRE = str(Path(sys.executable).with_name("talkwire"))


async def _run(*argv: str, stdin: str, token: str) -> tuple[int, str, str]:
    env = {**os.environ, "TALKWIRE_TOKEN": token}
    proc = await asyncio.create_subprocess_exec(
        TALKWIRE,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_two_terminal_walkthrough(make_app: Callable[..., Any], tmp_path: Path) -> None:
    app: Application = await make_app(handoff_config(tmp_path))
    target = ["--target", app.target]

    code, out, err = await _run(
        "chat", *target, stdin="hello there\ntalk to a person\n", token="alice-token"
    )
    assert code == 0, err
    assert "handoff queued in billing (position 1) (asked for a person)" in out
    match = re.search(r"# session (\S+) resume-token (\S+)", err)
    assert match is not None, err
    session_id, token = match.groups()

    code, out, err = await _run(
        "agent",
        *target,
        stdin="/queue\n/accept 1\nHello, I am Ann. Let me look.\n/release solved\n",
        token="ann-token",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith(f"[1] {session_id} queue=billing position=1") for line in lines)
    assert "    user: talk to a person" in lines
    assert f"# attending {session_id} (replayed 4)" in lines
    assert "#1 bot: Hi! How can I help?" in lines
    assert "#4 handoff accepted by Ann" in lines
    assert "#5 agent Ann: Hello, I am Ann. Let me look." in lines
    assert "#6 handoff ended back to the bot (solved)" in lines
    assert f"# conversation {session_id} ended" in lines

    code, out, err = await _run(
        "chat",
        *target,
        "--session",
        session_id,
        "--resume-token",
        token,
        "--last-seq",
        "3",
        stdin="hello there\n",
        token="alice-token",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "handoff accepted by Ann" in lines
    assert "agent Ann: Hello, I am Ann. Let me look." in lines
    assert "bot: Hi! How can I help?" in lines


async def test_agent_desk_errors_are_one_line(make_app: Callable[..., Any], tmp_path: Path) -> None:
    app: Application = await make_app(handoff_config(tmp_path))
    code, out, _ = await _run(
        "agent", "--target", app.target, stdin="/queue\n/accept nope\nhi\n", token="ann-token"
    )
    assert code == 0
    assert out.splitlines() == [
        "(no one is waiting)",
        "! NOT_FOUND: session nope not found",
        "! not attending a session (/queue, then /accept N)",
    ]
    code, out, _ = await _run(
        "agent", "--target", app.target, stdin="/queue\n", token="alice-token"
    )
    assert out.splitlines() == ["! PERMISSION_DENIED: the agent role is required"]
