"""``talkwire chat`` through the console script against the real server with the demo bot."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time

from tests.cli.conftest import talkwire
from tests.support.server_proc import talkwire_binary

ORDER_ANSWER = "bot: Order 1001 (Espresso machine) is shipped, ETA 2025-06-03."


async def test_piped_input_shows_every_answer(as_alice: list[str]) -> None:
    """The subscription frame of a turn is not its answer: the reply after it prints too."""
    result = await talkwire("chat", *as_alice, input="where is my order 1001\n")
    assert result.code == 0, result.err
    assert result.lines[:2] == ["subscribed order:1001", ORDER_ANSWER]
    assert "Traceback" not in result.err


async def test_piped_turns_go_one_at_a_time_so_numbers_pick_quick_replies(
    as_alice: list[str],
) -> None:
    result = await talkwire(
        "chat", *as_alice, input="where is my order 1001\n1\nwhat's my balance\n"
    )
    assert result.code == 0, result.err
    lines = result.lines
    assert lines[:4] == [
        "subscribed order:1001",
        ORDER_ANSWER,
        "  [1] My orders",
        "  [2] Open a ticket about it",
    ]
    orders = lines.index("  [2] Open a ticket about it") + 1
    assert lines[orders] == "bot: Your orders:"  # quick reply 1, "My orders", was pressed
    assert any(line.startswith("bot: Your balance is 120.50 EUR") for line in lines[orders:])


async def test_message_flag_is_one_turn_then_exit(as_alice: list[str]) -> None:
    result = await talkwire("chat", *as_alice, "-m", "where is my order 1001")
    assert result.code == 0, result.err
    assert result.lines[:2] == ["subscribed order:1001", ORDER_ANSWER]

    two = await talkwire("chat", *as_alice, "-m", "hi", "-m", "what's my balance")
    assert two.code == 0, two.err
    bot_lines = [line for line in two.lines if line.startswith("bot: ")]
    assert bot_lines[0] == "bot: Hello! How can I help you today?"
    assert bot_lines[1].startswith("bot: Your balance is 120.50 EUR")


async def test_json_is_one_frame_per_line_with_numbers_as_numbers(as_alice: list[str]) -> None:
    result = await talkwire("chat", *as_alice, "--json", "-m", "where is my order 1001")
    assert result.code == 0, result.err
    frames = [json.loads(line) for line in result.lines]
    assert [next(k for k in ("subscription", "reply") if k in f) for f in frames] == [
        "subscription",
        "reply",
    ]
    assert [f["seq"] for f in frames] == [1, 2]  # uint64 as a JSON number, not "1"
    assert frames[0]["in_reply_to"] == frames[1]["in_reply_to"]
    reply = frames[1]["reply"]
    assert reply["text"] == ORDER_ANSWER.removeprefix("bot: ")
    assert reply["data"]["result"]["order_id"] == 1001  # a Struct number, not 1001.0
    assert isinstance(reply["data"]["result"]["order_id"], int)


async def test_out_of_range_quick_reply_gets_a_hint_and_is_not_sent(as_alice: list[str]) -> None:
    result = await talkwire("chat", *as_alice, "--json", input="where is my order 1001\n7\n")
    assert result.code == 0, result.err
    assert "# no quick reply 7: pick 1-2, or /say 7 to send it as text" in result.err.splitlines()
    assert len(result.lines) == 2  # the subscription and the answer: nothing answered "7"


async def test_help_lists_the_chat_commands(as_alice: list[str]) -> None:
    result = await talkwire("chat", *as_alice, input="/help\n")
    assert result.code == 0, result.err
    for command in ("/say TEXT", "/sub KEY", "/unsub KEY", "/ping [DATA]", "/help", "/quit"):
        assert any(line.strip().startswith(command) for line in result.err.splitlines()), command
    assert result.out == ""


async def test_unreachable_server_is_one_line(demo_app: object) -> None:
    result = await talkwire("chat", "--target", "127.0.0.1:1", "-m", "hi")
    assert result.code == 1
    assert result.err.startswith("talkwire: error: UNAVAILABLE: ")
    assert len(result.err.splitlines()) == 1


def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"never saw {needle!r}; screen: {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            seen.extend(os.read(fd, 4096))


async def test_terminal_shows_the_readme_prompt(as_alice: list[str]) -> None:
    """On a terminal the prompt is ``you> `` (as in the README) and lines go out as typed."""
    import asyncio

    def session() -> tuple[int, bytes]:
        primary, secondary = pty.openpty()
        proc = subprocess.Popen(
            [talkwire_binary(), "chat", *as_alice],
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            close_fds=True,
        )
        os.close(secondary)
        seen = bytearray()
        try:
            _read_until(primary, b"you> ", seen)
            os.write(primary, b"where is my order 1001\n")
            _read_until(primary, ORDER_ANSWER.encode(), seen)
            os.write(primary, b"/quit\n")
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(primary)
        return code, bytes(seen)

    code, screen = await asyncio.to_thread(session)
    assert code == 0
    text = screen.decode(errors="replace")
    assert "you> " in text
    assert "Traceback" not in text
