"""The mcp connector against a real MCP server (the SDK's FastMCP) on loopback and over stdio."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from talkwire.connectors.base import CallContext
from talkwire.connectors.errors import (
    BackendError,
    CircuitOpenError,
    ConnectorConfigError,
    ConnectorUnavailableError,
    RejectedInputError,
)
from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.demo.erp import run_uvicorn
from tests.connectors import mcp_server
from tests.connectors.httpserver import MiniHttpServer, Request, Response
from tests.support.waiting import eventually

SERVER_SCRIPT = Path(mcp_server.__file__)
ALICE = CallContext(subject="alice", claims={"customer_id": "c-1"})


@pytest.fixture(autouse=True)
def fresh_ledger() -> None:
    mcp_server.LEDGER["balances"] = {"c-1": 100.0, "c-2": 50.0}
    mcp_server.LEDGER["payments"] = []


@pytest.fixture
async def mcp_url() -> AsyncIterator[str]:
    async with run_uvicorn(mcp_server.build_server().streamable_http_app()) as base:
        yield f"{base}/mcp"


def _http(url: str, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "type": "mcp",
        "url": url,
        "allow_private": True,
        "connect_timeout": 5,
        "tools": {
            "get_balance": {"cache_ttl": 60, "cache_keys": ["balance:{customer_id}"]},
            "make_payment": {"invalidates": ["balance:{customer_id}"]},
            "list_orders": {},
            "shout": {},
        },
    }
    section.update(extra)
    return {"erp": section}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tools_become_operations(mcp_url: str) -> None:
    async with ConnectorRegistry(_http(mcp_url)) as reg:
        ops = {d["operation"]: d for d in reg.describe("erp")}
        assert set(ops) == {"get_balance", "make_payment", "list_orders", "shout"}
        assert ops["get_balance"]["type"] == "mcp"
        assert ops["get_balance"]["write"] is False  # readOnlyHint
        assert ops["make_payment"]["write"] is True
        assert ops["make_payment"]["parameters"]["required"] == ["customer_id", "amount"]
        assert ops["make_payment"]["parameters"]["properties"]["note"]["type"] == "string"
        assert ops["list_orders"]["result"] == "rows"
        assert await reg.invoke("erp", "get_balance", {"customer_id": "c-1"}) == {
            "customer_id": "c-1",
            "balance": 100.0,
        }
        rows = await reg.invoke("erp", "list_orders", {"customer_id": "c-2", "limit": 2})
        assert rows == [{"id": 1, "customer_id": "c-2"}, {"id": 2, "customer_id": "c-2"}]
        assert await reg.invoke("erp", "shout", {"text": "hi"}) == "HI"


async def test_writes_invalidate_and_honour_idempotency_keys(mcp_url: str) -> None:
    async with ConnectorRegistry(_http(mcp_url)) as reg:
        assert (await reg.invoke("erp", "get_balance", {"customer_id": "c-1"}))["balance"] == 100
        ctx = CallContext(subject="alice", idempotency_key="pay-1")
        pay = {"customer_id": "c-1", "amount": 30}
        first = await reg.invoke("erp", "make_payment", pay, ctx)
        assert await reg.invoke("erp", "make_payment", pay, ctx) == first
        assert len(mcp_server.LEDGER["payments"]) == 1
        # The cached balance was dropped by the write: the new one shows at once.
        assert (await reg.invoke("erp", "get_balance", {"customer_id": "c-1"}))["balance"] == 70


async def test_tool_errors_and_bad_arguments(mcp_url: str) -> None:
    async with ConnectorRegistry(_http(mcp_url)) as reg:
        with pytest.raises(BackendError, match="no customer c-9") as err:
            await reg.invoke("erp", "get_balance", {"customer_id": "c-9"})
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(RejectedInputError, match="'amount' must be a number"):
            await reg.invoke("erp", "make_payment", {"customer_id": "c-1", "amount": "lots"})
        with pytest.raises(RejectedInputError, match="unknown parameter 'admin'"):
            await reg.invoke("erp", "shout", {"text": "x", "admin": True})
        assert mcp_server.LEDGER["payments"] == []
        assert await reg.invoke("erp", "shout", {"text": "still serving"}) == "STILL SERVING"


async def test_identity_bound_arguments_come_from_claims_only(mcp_url: str) -> None:
    sections = _http(mcp_url, bind={"customer_id": "{user.customer_id}"})
    sections["erp"]["tools"]["get_balance"] = {}
    sections["erp"]["tools"]["make_payment"] = {}
    async with ConnectorRegistry(sections) as reg:
        assert (await reg.invoke("erp", "get_balance", {}, ALICE))["customer_id"] == "c-1"
        with pytest.raises(RejectedInputError, match="unknown parameter 'customer_id'") as err:
            await reg.invoke("erp", "make_payment", {"customer_id": "c-2", "amount": 1}, ALICE)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        tools = {t["function"]["name"]: t["function"]["parameters"] for t in reg.tools("erp")}
        assert "customer_id" not in tools["erp__make_payment"]["properties"]
        assert "customer_id" not in tools["erp__get_balance"]["properties"]
        with pytest.raises(RejectedInputError, match="customer_id"):
            await reg.invoke("erp", "get_balance", {}, CallContext(subject="bob"))
        await reg.invoke("erp", "make_payment", {"amount": 5}, ALICE)
        assert mcp_server.LEDGER["payments"] == [{"customer_id": "c-1", "amount": 5.0, "note": ""}]


async def test_over_stdio() -> None:
    sections = {
        "local": {
            "type": "mcp",
            "command": [sys.executable, str(SERVER_SCRIPT)],
            "tools": ["get_balance", "make_payment"],
        }
    }
    async with ConnectorRegistry(sections) as reg:
        assert (await reg.invoke("local", "get_balance", {"customer_id": "c-2"}))["balance"] == 50
        paid = await reg.invoke("local", "make_payment", {"customer_id": "c-2", "amount": 20})
        assert paid == {"payment_id": 1, "balance": 30.0}
        assert (await reg.invoke("local", "get_balance", {"customer_id": "c-2"}))["balance"] == 30


@contextlib.asynccontextmanager
async def _server_process(port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """The test MCP server over Streamable HTTP in its own process (killed at the end)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVER_SCRIPT),
        "--http",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def accepting() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert proc.returncode is None, "the MCP server process exited"
            return False
        writer.close()
        return True

    try:
        await eventually(accepting, message="the MCP server to listen")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_a_server_that_is_down_is_unavailable_until_it_comes_up() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with ConnectorRegistry(_http(url)) as reg:  # starts although the server is down
        for _ in range(2):
            with pytest.raises(ConnectorUnavailableError, match="MCP server unreachable") as err:
                await reg.invoke("erp", "shout", {"text": "x"})
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
        async with _server_process(port) as proc:
            assert await reg.invoke("erp", "shout", {"text": "up"}) == "UP"
            proc.kill()  # kill -9: the session breaks under us
            await proc.wait()
            with pytest.raises(ConnectorUnavailableError) as err:
                await reg.invoke("erp", "shout", {"text": "x"})
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
        async with _server_process(port):
            assert await reg.invoke("erp", "shout", {"text": "back"}) == "BACK"


async def test_a_server_answering_garbage_is_unavailable(http: MiniHttpServer) -> None:
    @http.route("POST", "/mcp")
    async def garbage(req: Request) -> Response:
        return Response(200, body=b"<html>hello</html>", headers={"content-type": "text/html"})

    sections = _http(f"{http.base_url}/mcp", connect_timeout=2)
    async with ConnectorRegistry(sections) as reg:
        with pytest.raises(ConnectorUnavailableError) as err:
            await reg.invoke("erp", "shout", {"text": "x"})
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "MCP" in err.value.message
    assert http.hits("/mcp") >= 1


async def test_a_tool_whose_schema_we_cannot_map(mcp_url: str) -> None:
    sections = _http(mcp_url, tools={"weird": {}})
    with pytest.raises(ConnectorConfigError, match="anyOf of different types") as err:
        async with ConnectorRegistry(sections):
            pass
    assert err.value.key == "connectors.erp.tools.weird"


async def test_an_allow_listed_tool_the_server_lacks(mcp_url: str) -> None:
    with pytest.raises(ConnectorConfigError, match="no such tool") as err:
        async with ConnectorRegistry(_http(mcp_url, tools=["drop_tables"])):
            pass
    assert err.value.key == "connectors.erp.tools.drop_tables"


async def test_a_private_url_is_refused_unless_allowed(mcp_url: str) -> None:
    sections = _http(mcp_url, allow_private=False)
    with pytest.raises(ConnectorConfigError, match=r"refused to connect to 127\.0\.0\.1") as err:
        async with ConnectorRegistry(sections):
            pass
    assert err.value.key == "connectors.erp.url"


def test_config_errors() -> None:
    with pytest.raises(ConnectorConfigError, match="exactly one of url"):
        ConnectorRegistry({"m": {"type": "mcp", "tools": ["x"]}})
    with pytest.raises(ConnectorConfigError, match="allow-list of tools is required"):
        ConnectorRegistry({"m": {"type": "mcp", "url": "https://mcp.example.com/mcp"}})
    with pytest.raises(ConnectorConfigError, match=r"m\.tools\.x\.sql"):
        ConnectorRegistry(
            {"m": {"type": "mcp", "url": "https://mcp.example.com/mcp", "tools": {"x": {"sql": 1}}}}
        )


def test_a_connector_type_whose_extra_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    from talkwire.connectors import registry

    ghost = EntryPoint("mcp", "talkwire_no_such_sdk:McpConnector", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ghost])
    with pytest.raises(ConnectorConfigError, match=r"pip install 'talkwire\[mcp\]'") as err:
        ConnectorRegistry({"m": {"type": "mcp", "url": "https://mcp.example.com/mcp"}})
    assert err.value.key == "connectors.m.type"


async def test_the_breaker_stops_dialling_a_server_that_keeps_failing() -> None:
    url = f"http://127.0.0.1:{_free_port()}/mcp"
    sections = _http(url, breaker={"failures": 2, "reset_after": 600})
    async with ConnectorRegistry(sections) as reg:  # the failed start-up connect counts once
        with pytest.raises(ConnectorUnavailableError, match="unreachable"):
            await reg.invoke("erp", "shout", {"text": "x"})
        with pytest.raises(CircuitOpenError, match="circuit open") as err:
            await reg.invoke("erp", "shout", {"text": "x"})
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
