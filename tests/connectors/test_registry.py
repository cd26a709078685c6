"""ConnectorRegistry: loading, validation, caching and invalidation."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import pytest

from talkwire.connectors.base import CallContext, Connector, Operation, Parameter
from talkwire.connectors.errors import (
    ConnectorConfigError,
    ConnectorNotFoundError,
    OperationNotFoundError,
    RejectedInputError,
)
from talkwire.connectors.registry import CallRecord, ConnectorRegistry
from tests.connectors.conftest import FakeClock


class FakeConnector:
    """An in-memory third-party connector registered through ``factories``."""

    type = "fake"

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.orders = {1001: "shipped", 1002: "processing"}
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.closed = 0
        self._ops = {
            "status": Operation(
                "status",
                (Parameter("order_id", "integer"), Parameter("verbose", "boolean", False)),
                result="row",
                cache_ttl=30,
                cache_keys=("order:{order_id}",),
            ),
            "mine": Operation("mine", (), result="value", cache_ttl=30, claims=("sub",)),
            "cancel": Operation(
                "cancel", (Parameter("order_id", "integer"),), write=True, result="object"
            ),
            "uncached": Operation("uncached", (Parameter("order_id", "integer"),), result="row"),
        }

    @property
    def operations(self) -> Mapping[str, Operation]:
        return self._ops

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.closed += 1

    async def invoke(
        self, operation: str, params: Mapping[str, Any], ctx: CallContext | None = None
    ) -> Any:
        self.calls.append((operation, dict(params)))
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        if operation == "mine":
            return ctx.subject if ctx else None
        if operation == "cancel":
            self.orders[params["order_id"]] = "cancelled"
            return {"ok": True}
        return {"order_id": params["order_id"], "status": self.orders.get(params["order_id"])}


def make(clock: FakeClock | None = None, **kw: Any) -> tuple[ConnectorRegistry, FakeConnector]:
    reg = ConnectorRegistry(
        {"shop": {"type": "fake"}},
        factories={"fake": FakeConnector},
        clock=clock or FakeClock(),
        **kw,
    )
    conn = reg.get("shop")
    assert isinstance(conn, FakeConnector)
    assert isinstance(conn, Connector)
    return reg, conn


def test_unknown_type_lists_available_types() -> None:
    with pytest.raises(ConnectorConfigError) as err:
        ConnectorRegistry({"crm": {"type": "soap"}})
    assert err.value.key == "connectors.crm.type"
    assert "graphql, mcp, openapi, rest, sql" in str(err.value)
    with pytest.raises(ConnectorConfigError, match=r"connectors\.crm\.type"):
        ConnectorRegistry({"crm": {"url": "x"}})


def test_builtin_types_load_from_entry_points() -> None:
    reg = ConnectorRegistry(
        {
            "db": {
                "type": "sql",
                "url": "sqlite+aiosqlite:///:memory:",
                "operations": {"one": {"sql": "SELECT 1 AS x", "result": "value"}},
            }
        }
    )
    assert reg.list() == ["db"]
    assert reg.get("db").type == "sql"


async def test_validation_and_lookup_errors() -> None:
    reg, conn = make()
    async with reg:
        assert await reg.invoke("shop", "status", {"order_id": "1001"}) == {
            "order_id": 1001,
            "status": "shipped",
        }
        assert conn.calls == [("status", {"order_id": 1001, "verbose": None})]
        with pytest.raises(RejectedInputError, match="missing required parameter 'order_id'"):
            await reg.invoke("shop", "status", {})
        with pytest.raises(RejectedInputError, match="'order_id'"):
            await reg.invoke("shop", "status", {"order_id": "10 01"})
        with pytest.raises(RejectedInputError, match="'verbose'"):
            await reg.invoke("shop", "status", {"order_id": 1, "verbose": "maybe"})
        with pytest.raises(RejectedInputError, match="unknown parameter 'sql'"):
            await reg.invoke("shop", "status", {"order_id": 1, "sql": "DROP"})
        with pytest.raises(ConnectorNotFoundError):
            await reg.invoke("nope", "status", {})
        with pytest.raises(OperationNotFoundError, match="has: status"):
            await reg.invoke("shop", "nope", {})
    await reg.aclose()
    assert conn.closed == 1


async def test_cache_hit_ttl_and_invalidation_by_key(clock: FakeClock) -> None:
    records: list[CallRecord] = []
    reg, conn = make(clock, observer=records.append)
    async with reg:
        first = await reg.invoke("shop", "status", {"order_id": 1001})
        first["status"] = "mutated by caller"
        assert await reg.invoke("shop", "status", {"order_id": "1001"}) == {
            "order_id": 1001,
            "status": "shipped",
        }
        assert len(conn.calls) == 1
        assert [r.cached for r in records] == [False, True]
        await reg.invoke("shop", "status", {"order_id": 1002})
        assert len(conn.calls) == 2
        # a change event for order 1001 drops exactly that entry
        conn.orders[1001] = "delivered"
        assert reg.invalidate(["order:1001", "order:9999"]) == 1
        assert (await reg.invoke("shop", "status", {"order_id": 1001}))["status"] == "delivered"
        assert len(conn.calls) == 3
        await reg.invoke("shop", "status", {"order_id": 1002})
        assert len(conn.calls) == 3
        # TTL expiry
        clock.advance(31)
        await reg.invoke("shop", "status", {"order_id": 1002})
        assert len(conn.calls) == 4
        # writes and uncached operations always reach the backend
        for _ in range(2):
            await reg.invoke("shop", "cancel", {"order_id": 1002})
            await reg.invoke("shop", "uncached", {"order_id": 1002})
        assert len(conn.calls) == 8


async def test_cache_is_per_caller_when_the_operation_reads_claims() -> None:
    reg, conn = make()
    async with reg:
        assert await reg.invoke("shop", "mine", {}, CallContext(subject="alice")) == "alice"
        assert await reg.invoke("shop", "mine", {}, CallContext(subject="bob")) == "bob"
        assert await reg.invoke("shop", "mine", {}, CallContext(subject="alice")) == "alice"
    assert len(conn.calls) == 2


async def test_invalidation_during_a_call_is_not_overwritten_by_stale_data() -> None:
    reg, conn = make()
    async with reg:
        conn.gate = asyncio.Event()
        call = asyncio.create_task(reg.invoke("shop", "status", {"order_id": 1001}))
        await conn.entered.wait()
        reg.invalidate(["order:1001"])  # event arrives while the read is in flight
        conn.gate.set()
        await call
        conn.gate = None
        await reg.invoke("shop", "status", {"order_id": 1001})
    assert len(conn.calls) == 2


def test_describe_and_tools() -> None:
    reg, _ = make()
    described = {d["operation"]: d for d in reg.describe()}
    assert described["status"]["parameters"] == {
        "type": "object",
        "properties": {"order_id": {"type": "integer"}, "verbose": {"type": "boolean"}},
        "required": ["order_id"],
        "additionalProperties": False,
    }
    assert described["cancel"]["write"] is True
    assert described["status"]["cache_keys"] == ["order:{order_id}"]
    names = [t["function"]["name"] for t in reg.tools()]
    assert "shop__status" in names
