"""The demo CRM (sql) and ERP (rest) end to end through the registry."""

from __future__ import annotations

from pathlib import Path

from talkwire.connectors.base import CallContext
from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.demo.connectors import demo_connector_sections
from talkwire.server.demo.crm import create_demo_crm
from talkwire.server.demo.erp import serve_demo_erp


async def test_demo_crm_and_erp(tmp_path: Path) -> None:
    url = await create_demo_crm(tmp_path / "crm.db")
    assert await create_demo_crm(tmp_path / "crm.db") == url  # idempotent
    async with (
        serve_demo_erp(crm_url=url) as base_url,
        ConnectorRegistry(demo_connector_sections(url, base_url)) as reg,
    ):
        alice = {"customer_id": "c-100"}
        status = await reg.invoke("crm", "order_status", {"order_id": "1001", **alice})
        assert status is not None
        assert status["order_id"] == 1001
        assert status["status"] == "shipped"
        # scoped by customer: Bob cannot see Alice's order
        assert (
            await reg.invoke("crm", "order_status", {"order_id": 1001, "customer_id": "c-200"})
            is None
        )
        orders = await reg.invoke("crm", "list_orders", alice)
        assert [o["order_id"] for o in orders] == [1001, 1002]
        owner = await reg.invoke("crm", "order_owner", {"order_id": 2001})
        assert owner == {"customer_id": "c-200"}
        ticket = await reg.invoke("crm", "open_ticket", {**alice, "subject": "Broken lid"})
        assert ticket["status"] == "open"
        got = await reg.invoke("crm", "ticket_status", {"ticket_id": ticket["ticket_id"], **alice})
        assert got["subject"] == "Broken lid"
        balance = await reg.invoke("erp", "get_balance", alice)
        assert balance == {"balance": 120.5, "currency": "EUR"}
        ctx = CallContext(subject="c-100", idempotency_key="pay-1")
        for _ in range(2):
            paid = await reg.invoke("erp", "make_payment", {**alice, "amount": 20}, ctx)
            assert paid["balance"] == 100.5
        # The payment's own `invalidates` dropped the cached balance: fresh at once.
        assert (await reg.invoke("erp", "get_balance", alice))["balance"] == 100.5
        assert reg.invalidate(["balance:c-100"]) == 1  # that answer is cached again


async def test_demo_erp_with_its_own_data() -> None:
    async with serve_demo_erp() as base_url:
        sections = demo_connector_sections("sqlite+aiosqlite:///:memory:", base_url)
        async with ConnectorRegistry({"erp": sections["erp"]}) as reg:
            got = await reg.invoke("erp", "get_balance", {"customer_id": "c-300"})
    assert got == {"balance": 980.0, "currency": "USD"}
