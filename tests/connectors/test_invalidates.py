"""``invalidates:`` on write operations: a successful write drops the cached reads it changes."""

from __future__ import annotations

from typing import Any

import pytest

from talkwire.connectors.base import CallContext
from talkwire.connectors.errors import BackendError, ConnectorConfigError
from talkwire.connectors.registry import ConnectorRegistry
from tests.connectors.httpserver import MiniHttpServer, Request, Response


def _erp(base_url: str) -> dict[str, Any]:
    return {
        "erp": {
            "type": "rest",
            "base_url": base_url,
            "allow_private": True,
            "retries": False,
            "operations": {
                "get_balance": {
                    "path": "/customers/{customer_id}/balance",
                    "params": {"customer_id": "string"},
                    "result": "object",
                    "cache_ttl": 600,
                    "cache_keys": ["balance:{customer_id}"],
                },
                "pay": {
                    "method": "POST",
                    "path": "/payments",
                    "params": {"customer_id": "string", "amount": "number"},
                    "body": {"customer_id": "{customer_id}", "amount": "{amount}"},
                    "invalidates": ["balance:{customer_id}"],
                },
            },
        }
    }


@pytest.fixture
def ledger(http: MiniHttpServer) -> dict[str, float]:
    balances = {"c-1": 100.0, "c-2": 50.0}

    @http.route("GET", "/customers/c-1/balance")
    async def b1(req: Request) -> Response:
        return Response(json={"balance": balances["c-1"]})

    @http.route("GET", "/customers/c-2/balance")
    async def b2(req: Request) -> Response:
        return Response(json={"balance": balances["c-2"]})

    @http.route("POST", "/payments")
    async def pay(req: Request) -> Response:
        body = req.json()
        if body["amount"] <= 0:
            return Response(400, json={"message": "amount must be positive"})
        balances[body["customer_id"]] -= body["amount"]
        return Response(201, json={"ok": True})

    return balances


async def test_a_write_drops_the_balance_it_changed(
    http: MiniHttpServer, ledger: dict[str, float]
) -> None:
    async with ConnectorRegistry(_erp(http.base_url)) as reg:
        assert await reg.invoke("erp", "get_balance", {"customer_id": "c-1"}) == {"balance": 100.0}
        assert await reg.invoke("erp", "get_balance", {"customer_id": "c-2"}) == {"balance": 50.0}
        await reg.invoke("erp", "pay", {"customer_id": "c-1", "amount": 30})
        # Straight away, not after the 600 s TTL; the other customer's entry stays cached.
        assert await reg.invoke("erp", "get_balance", {"customer_id": "c-1"}) == {"balance": 70.0}
        ledger["c-2"] = 0.0
        assert await reg.invoke("erp", "get_balance", {"customer_id": "c-2"}) == {"balance": 50.0}
        assert http.hits("/customers/c-1/balance") == 2
        assert http.hits("/customers/c-2/balance") == 1


async def test_a_failed_write_keeps_the_cache(
    http: MiniHttpServer, ledger: dict[str, float]
) -> None:
    async with ConnectorRegistry(_erp(http.base_url)) as reg:
        await reg.invoke("erp", "get_balance", {"customer_id": "c-1"})
        with pytest.raises(BackendError, match="amount must be positive"):
            await reg.invoke("erp", "pay", {"customer_id": "c-1", "amount": -1})
        await reg.invoke("erp", "get_balance", {"customer_id": "c-1"})
        assert http.hits("/customers/c-1/balance") == 1


async def test_the_same_key_invalidates_on_change_events(
    http: MiniHttpServer, ledger: dict[str, float]
) -> None:
    async with ConnectorRegistry(_erp(http.base_url)) as reg:
        await reg.invoke("erp", "get_balance", {"customer_id": "c-1"})
        ledger["c-1"] = 10.0  # changed behind our back; a change event says so
        assert reg.invalidate(["balance:c-1"]) == 1
        assert await reg.invoke("erp", "get_balance", {"customer_id": "c-1"}) == {"balance": 10.0}


async def test_idempotent_replay_of_a_write_still_invalidates(
    http: MiniHttpServer, ledger: dict[str, float]
) -> None:
    ctx = CallContext(subject="ops", idempotency_key="pay-1")
    async with ConnectorRegistry(_erp(http.base_url)) as reg:
        params = {"customer_id": "c-1", "amount": 5}
        await reg.invoke("erp", "pay", params, ctx)
        await reg.invoke("erp", "get_balance", {"customer_id": "c-1"})
        await reg.invoke("erp", "pay", params, ctx)
        assert http.hits("/payments") == 1
        assert await reg.invoke("erp", "get_balance", {"customer_id": "c-1"}) == {"balance": 95.0}


def test_invalidates_is_checked_at_load() -> None:
    sections = _erp("http://127.0.0.1:1")
    sections["erp"]["operations"]["pay"]["invalidates"] = ["balance:{nope}"]
    with pytest.raises(ConnectorConfigError, match=r"operations\.pay\.invalidates\[0\]"):
        ConnectorRegistry(sections)
    sections = _erp("http://127.0.0.1:1")
    sections["erp"]["operations"]["get_balance"]["invalidates"] = ["balance:{customer_id}"]
    with pytest.raises(ConnectorConfigError, match="only write operations invalidate"):
        ConnectorRegistry(sections)
