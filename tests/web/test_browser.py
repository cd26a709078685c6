"""The widget in headless Chromium (Debian's ``chromium``, driven by Playwright).

``talkwire serve`` runs as a subprocess (demo bot, static tokens, ``web:`` on),
so it can be killed with SIGKILL and restarted on the same ports. The page is
the gateway's demo page; every assertion is on what a person sees in it.
Set ``TALKWIRE_SCREENSHOT=docs/web/widget.png`` to refresh the README picture.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from talkwire.clients.admin import AdminClient
from tests.conftest import TOKENS
from tests.support.broker import free_port
from tests.support.server_proc import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Not a valid Sec-WebSocket-Protocol entry: the widget sends it in the open frame instead.
ODD_TOKEN = "carol token/with=chars"
TIMEOUT = 20_000  # ms, for each thing the page must show


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Chromium from the system; a launch failure is an error, never a skip."""
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    web_port = free_port()
    config: dict[str, Any] = {
        "demo": True,
        "server": {"handler": "auto", "data_dir": str(tmp_path), "sweep_interval": 3600},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"},
        "auth": {"kind": "static", "tokens": {**TOKENS, ODD_TOKEN: {"subject": "carol"}}},
        "web": {"listen": f"127.0.0.1:{web_port}"},
    }
    proc = ServerProcess(config, workdir=tmp_path)
    proc.web_url = f"http://127.0.0.1:{web_port}"  # type: ignore[attr-defined]
    await proc.start()
    yield proc
    await proc.kill()


async def open_page(browser: Browser, server: ServerProcess, token: str) -> Page:
    page = await browser.new_page(viewport={"width": 480, "height": 720})
    await page.goto(f"{server.web_url}/#token={token}")  # type: ignore[attr-defined]
    return page


async def ask(page: Page, text: str) -> None:
    box = page.get_by_label("Your message")
    await box.fill(text)
    await box.press("Enter")


def lines(page: Page, who: str) -> Any:
    return page.locator(f".tw-{who}")


async def test_ask_publish_kill9_reload(
    browser: Browser, server: ServerProcess, tmp_path: Path
) -> None:
    page = await open_page(browser, server, "alice-token")
    await expect(page.get_by_role("status")).to_have_text("Online", timeout=TIMEOUT)

    # Ask about an order: the demo bot answers from the demo CRM, with buttons.
    await ask(page, "where is my order 1001")
    answer = lines(page, "bot").filter(has_text="Order 1001")
    await expect(answer).to_contain_text("shipped", timeout=TIMEOUT)
    await expect(answer.get_by_role("button").first).to_be_visible()
    session_id = await page.evaluate(
        "JSON.parse(sessionStorage.getItem('talkwire.session')).sessionId"
    )

    # AdminService.Publish to the order's key shows up in the page.
    async with AdminClient(server.target, token="admin-token") as admin:
        sent = await admin.publish(key="order:1001", text="Order 1001 is out for delivery")
    assert sent.delivered == 1
    await expect(lines(page, "update")).to_have_text(
        ["Order 1001 is out for delivery"], timeout=TIMEOUT
    )
    shot = os.environ.get("TALKWIRE_SCREENSHOT") or str(tmp_path / "widget.png")
    await page.screenshot(path=shot)

    # kill -9: the page says it is reconnecting; after the restart it resumes.
    await server.kill()
    await expect(page.get_by_role("status")).to_have_text("Reconnecting…", timeout=TIMEOUT)
    await server.restart()
    async with AdminClient(server.target, token="admin-token") as admin:
        await admin.publish(session_id=session_id, text="Your refund was approved")
        await admin.publish(key="order:1001", text="Order 1001 was delivered")
    await expect(page.get_by_role("status")).to_have_text("Online", timeout=TIMEOUT)
    expected_updates = [
        "Order 1001 is out for delivery",
        "Your refund was approved",
        "Order 1001 was delivered",
    ]
    await expect(lines(page, "update")).to_have_text(expected_updates, timeout=TIMEOUT)
    await expect(answer).to_have_count(1)

    # Reload: the conversation is still there (once), and it continues.
    before = await page.locator(".tw-line").all_inner_texts()
    await page.reload()
    await expect(page.get_by_role("status")).to_have_text("Online", timeout=TIMEOUT)
    assert await page.locator(".tw-line").all_inner_texts() == before
    await page.get_by_role("button", name="My orders").first.click()
    await expect(lines(page, "bot")).to_have_count(2, timeout=TIMEOUT)
    await expect(lines(page, "update")).to_have_text(expected_updates)
    seqs = [
        int(s)
        for s in await page.locator(".tw-line[data-seq]").evaluate_all(
            "items => items.map(i => i.dataset.seq)"
        )
    ]
    assert seqs == sorted(set(seqs)), f"frames shown twice or out of order: {seqs}"


async def test_bad_token_says_so(browser: Browser, server: ServerProcess) -> None:
    page = await open_page(browser, server, "not-a-token")
    await expect(page.get_by_role("alert")).to_have_text(
        "Sign-in failed: invalid token", timeout=TIMEOUT
    )
    await expect(page.get_by_role("status")).to_have_text("Offline")
    await expect(page.get_by_role("button", name="Send")).to_be_disabled()


async def test_token_that_cannot_be_a_header_goes_in_the_first_frame(
    browser: Browser, server: ServerProcess
) -> None:
    page = await open_page(browser, server, quote(ODD_TOKEN, safe=""))
    await expect(page.get_by_role("status")).to_have_text("Online", timeout=TIMEOUT)
    await ask(page, "hello")
    await expect(lines(page, "bot")).to_have_count(1, timeout=TIMEOUT)
