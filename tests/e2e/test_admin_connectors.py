"""AdminService connector List/Invoke and Publish against the real server with the demo data."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from talkwire.clients import AdminClient, ChatClient
from talkwire.clients.errors import RpcError
from talkwire.server.app import Application
from tests.support.server_proc import talkwire_binary


async def test_list_and_invoke_connectors(demo_app: Application) -> None:
    async with AdminClient(demo_app.target, token="admin-token") as admin:
        infos = {c.name: c for c in await admin.list_connectors()}
        assert set(infos) == {"crm", "erp"}
        ops = {op.name: op for op in infos["crm"].operations}
        assert ops["open_ticket"].write
        assert {p.name for p in ops["order_status"].parameters} == {"order_id", "customer_id"}
        row = await admin.invoke_connector(
            "crm", "order_status", {"order_id": 1001, "customer_id": "c-100"}
        )
        assert row["status"] == "shipped"
        balance = await admin.invoke_connector("erp", "get_balance", {"customer_id": "c-100"})
        assert balance == {"balance": 120.5, "currency": "EUR"}
        with pytest.raises(RpcError) as missing:
            await admin.invoke_connector("crm", "no_such_operation", {})
        assert missing.value.code.name == "NOT_FOUND"
        with pytest.raises(RpcError) as bad:
            await admin.invoke_connector("crm", "order_status", {"order_id": "x' OR 1=1"})
        assert bad.value.code.name == "INVALID_ARGUMENT"


async def test_publish_to_a_key_reaches_its_subscribers(demo_app: Application) -> None:
    async with (
        ChatClient(demo_app.target, token="alice-token") as chat,
        AdminClient(demo_app.target, token="admin-token") as admin,
    ):
        session = await chat.open()
        await session.subscribe("order:1001")
        assert (await session.next_frame(timeout=10)).subscription.key == "order:1001"
        result: Any = await admin.publish(key="order:1001", text="Your parcel is at the depot")
        frame = await session.next_frame(timeout=10)
        assert frame.update.text == "Your parcel is at the depot"
        assert frame.update.key == "order:1001"
        assert result.delivered == 1
        await session.aclose()


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        talkwire_binary(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_invoke_with_one_idempotency_key_creates_one_ticket(
    demo_app: Application,
) -> None:
    args = [
        "connectors",
        "invoke",
        "crm",
        "open_ticket",
        "customer_id=c-100",
        "subject=Printer on fire",
        "--idempotency-key",
        "k1",
        "--target",
        demo_app.target,
        "--token",
        "admin-token",
    ]
    first = await _cli(*args)
    second = await _cli(*args)
    assert first[0] == 0 and second[0] == 0, (first, second)
    assert json.loads(first[1]) == json.loads(second[1])
    ticket_id = json.loads(first[1])["ticket_id"]
    async with AdminClient(demo_app.target, token="admin-token") as admin:
        row = await admin.invoke_connector(
            "crm", "ticket_status", {"ticket_id": ticket_id, "customer_id": "c-100"}
        )
        assert row["subject"] == "Printer on fire"
        # Another key is another ticket; the same key with other parameters is refused.
        third = await _cli(*args[:-5], "k2", *args[-4:])
        assert json.loads(third[1])["ticket_id"] == ticket_id + 1
        code, _, err = await _cli(
            *[a if a != "subject=Printer on fire" else "subject=x" for a in args]
        )
        assert code != 0
        assert "INVALID_ARGUMENT" in err and "different parameters" in err
