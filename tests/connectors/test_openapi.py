"""The openapi connector against a real HTTP server on loopback serving real 3.0 / 3.1 documents.

``specs/shop-3.0.yaml`` is read from a file (its ``servers`` entry is overridden by
``base_url``); ``specs/shop-3.1.json`` is fetched from the test server and its
relative ``servers`` entry resolves against the document's URL.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from talkwire.connectors.base import CallContext
from talkwire.connectors.errors import (
    BackendError,
    ConnectorConfigError,
    ConnectorUnavailableError,
    RejectedInputError,
)
from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.demo.erp import serve_demo_erp
from tests.connectors.httpserver import MiniHttpServer, Request, Response

SPECS = Path(__file__).parent / "specs"
TOKEN = "s3cret-token"


@pytest.fixture
def shop(http: MiniHttpServer) -> MiniHttpServer:
    spec31 = (SPECS / "shop-3.1.json").read_bytes()

    @http.route("GET", "/shop-3.1.json")
    async def spec(req: Request) -> Response:
        return Response(body=spec31)

    @http.route("GET", "/api/customers/c-1/orders")
    async def orders(req: Request) -> Response:
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            return Response(401, json={"message": "who are you"})
        return Response(json=[{"id": 1, "status": "open"}, {"id": 2, "status": "shipped"}])

    @http.route("POST", "/api/customers/c-1/payments")
    async def pay(req: Request) -> Response:
        body = req.json()
        if body["currency"] == "USD":
            return Response(422, json={"message": "USD payments are not accepted"})
        return Response(201, json={"payment_id": 77, "balance": 100 - body["amount"]})

    return http


def _section(flavour: str, http: MiniHttpServer, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "type": "openapi",
        "allow_private": True,
        "retries": False,
        "security": {"bearerAuth": {"token": TOKEN}},
        "operations": ["listOrders", "createPayment"],
    }
    if flavour == "3.0":
        section["spec"] = str(SPECS / "shop-3.0.yaml")
        section["base_url"] = f"{http.base_url}/api"
    else:
        section["spec"] = f"{http.base_url}/shop-3.1.json"
    section.update(extra)
    return {"shop": section}


FLAVOURS = [pytest.param("3.0", id="openapi-3.0-file"), pytest.param("3.1", id="openapi-3.1-url")]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_parameters_of_every_location_and_auth(flavour: str, shop: MiniHttpServer) -> None:
    async with ConnectorRegistry(_section(flavour, shop)) as reg:
        rows = await reg.invoke(
            "shop",
            "listOrders",
            {"customer_id": "c-1", "status": "open", "X_Request_Id": "req-9"},
        )
        assert rows == [{"id": 1, "status": "open"}, {"id": 2, "status": "shipped"}]
        sent = shop.requests[-1]
        assert sent.path == "/api/customers/c-1/orders"
        assert sent.query == {"status": "open", "limit": "10"}  # the schema default
        assert sent.headers["x-request-id"] == "req-9"
        assert sent.headers["authorization"] == f"Bearer {TOKEN}"
        described = {d["operation"]: d for d in reg.describe("shop")}
        assert described["listOrders"]["type"] == "openapi"
        assert described["listOrders"]["result"] == "rows"
        schema = described["listOrders"]["parameters"]
        assert set(schema["properties"]) == {"customer_id", "status", "limit", "X_Request_Id"}
        assert sorted(schema["required"]) == ["X_Request_Id", "customer_id"]
        assert described["createPayment"]["write"] is True


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_request_body_and_error_response(flavour: str, shop: MiniHttpServer) -> None:
    async with ConnectorRegistry(_section(flavour, shop)) as reg:
        result = await reg.invoke(
            "shop", "createPayment", {"customer_id": "c-1", "amount": 30, "currency": "EUR"}
        )
        assert result == {"payment_id": 77, "balance": 70}
        sent = shop.requests[-1]
        assert sent.json() == {"amount": 30, "currency": "EUR"}  # optional note left out
        assert sent.headers["idempotency-key"]
        with pytest.raises(BackendError, match="USD payments are not accepted") as err:
            await reg.invoke(
                "shop", "createPayment", {"customer_id": "c-1", "amount": 5, "currency": "USD"}
            )
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"amount": 0, "currency": "EUR"}, "parameter 'amount' must be >= 0.01"),
        ({"amount": 5, "currency": "GBP"}, "parameter 'currency' must be one of EUR, USD"),
        ({"amount": 5, "currency": "EUR", "note": "x" * 41}, "at most 40 characters"),
        ({"amount": "lots", "currency": "EUR"}, "parameter 'amount' must be a number"),
        ({"amount": 5}, "missing required parameter 'currency'"),
        ({"amount": 5, "currency": "EUR", "id": 3}, "unknown parameter 'id'"),  # readOnly
    ],
)
async def test_schema_validation_per_call(
    shop: MiniHttpServer, params: dict[str, Any], reason: str
) -> None:
    async with ConnectorRegistry(_section("3.0", shop)) as reg:
        before = len(shop.requests)
        with pytest.raises(RejectedInputError, match=reason) as err:
            await reg.invoke("shop", "createPayment", {"customer_id": "c-1", **params})
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(shop.requests) == before  # nothing was sent


async def test_identity_bound_parameters_come_from_claims_only(shop: MiniHttpServer) -> None:
    sections = _section("3.0", shop, bind={"customer_id": "{user.customer_id}"})
    alice = CallContext(subject="alice", claims={"customer_id": "c-1"})
    async with ConnectorRegistry(sections) as reg:
        rows = await reg.invoke("shop", "listOrders", {"X_Request_Id": "r"}, alice)
        assert len(rows) == 2
        assert shop.requests[-1].path == "/api/customers/c-1/orders"
        # User words (or an LLM policy) cannot fill it: the parameter does not exist for them.
        with pytest.raises(RejectedInputError, match="unknown parameter 'customer_id'"):
            await reg.invoke(
                "shop", "listOrders", {"X_Request_Id": "r", "customer_id": "c-2"}, alice
            )
        tools = {t["function"]["name"]: t["function"] for t in reg.tools("shop")}
        assert "customer_id" not in tools["shop__listOrders"]["parameters"]["properties"]
        with pytest.raises(RejectedInputError, match="cannot build the request"):
            await reg.invoke("shop", "listOrders", {"X_Request_Id": "r"}, CallContext("bob"))
        assert all(r.path != "/api/customers/c-2/orders" for r in shop.requests)


async def test_overrides_fields_and_invalidates(shop: MiniHttpServer) -> None:
    sections = _section(
        "3.0",
        shop,
        operations={
            "listOrders": {
                "name": "orders",
                "fields": {"order": "id"},
                "cache_ttl": 60,
                "cache_keys": ["orders:{customer_id}"],
            },
            "createPayment": {"invalidates": ["orders:{customer_id}"], "fields": {"b": "balance"}},
        },
    )
    async with ConnectorRegistry(sections) as reg:
        args = {"customer_id": "c-1", "X_Request_Id": "r"}
        assert await reg.invoke("shop", "orders", args) == [{"order": 1}, {"order": 2}]
        await reg.invoke("shop", "orders", args)
        assert shop.hits("/api/customers/c-1/orders") == 1
        pay = {"customer_id": "c-1", "amount": 1, "currency": "EUR"}
        assert await reg.invoke("shop", "createPayment", pay) == {"b": 99}
        await reg.invoke("shop", "orders", args)
        assert shop.hits("/api/customers/c-1/orders") == 2


async def test_servers_entry_on_a_private_address_is_refused(shop: MiniHttpServer) -> None:
    # The 3.0 document's server is http://127.0.0.1:8080/api: loopback.
    sections = {
        "shop": {
            "type": "openapi",
            "spec": str(SPECS / "shop-3.0.yaml"),
            "operations": ["listOrders"],
        }
    }
    with pytest.raises(ConnectorConfigError, match=r"connectors\.shop\.base_url: refused"):
        async with ConnectorRegistry(sections):
            pass
    # A spec URL on a private address is refused before anything is fetched.
    url_sections = {"shop": {**sections["shop"], "spec": f"{shop.base_url}/shop-3.1.json"}}
    with pytest.raises(ConnectorConfigError, match=r"connectors\.shop\.spec: refused"):
        async with ConnectorRegistry(url_sections):
            pass
    assert shop.hits("/shop-3.1.json") == 0


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"operations": ["nope"]}, "operations.nope", "operationId not in"),
        ({"operations": ["weirdReport"]}, "operations.weirdReport", "oneOf of different types"),
        ({"operations": ["uploadAvatar"]}, "operations.uploadAvatar", "image/png is not supported"),
        ({"security": {"oauth": {}}}, "security.oauth", "not in the spec's securitySchemes"),
        (
            {"operations": {"listOrders": {"bind": {"nope": "{user.sub}"}}}},
            "operations.listOrders.bind.nope",
            "no such",
        ),
        ({"bind": {"customer_id": "{customer_id}"}}, "bind.customer_id", "not a declared"),
        ({"operations": []}, "operations", "no operation selected"),
    ],
)
def test_bad_config_is_one_clear_error(
    change: dict[str, Any], key: str, message: str, tmp_path: Path
) -> None:
    sections = _section("3.0", MiniHttpServer(), **change)
    with pytest.raises(ConnectorConfigError, match=message) as err:
        ConnectorRegistry(sections)
    assert err.value.key == f"connectors.shop.{key}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("openapi: [3.0\n  paths: {", "does not parse as YAML/JSON at line"),
        ("swagger: '2.0'\npaths: {}\n", "not an OpenAPI 3.0/3.1 document"),
        ("- just\n- a list\n", "not an OpenAPI document"),
    ],
)
def test_a_spec_that_does_not_parse(text: str, message: str, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    sections = {"shop": {"type": "openapi", "spec": str(spec), "operations": ["x"]}}
    with pytest.raises(ConnectorConfigError, match=message) as err:
        ConnectorRegistry(sections)
    assert err.value.key == "connectors.shop.spec"


async def test_include_and_exclude_patterns(shop: MiniHttpServer) -> None:
    sections = _section("3.0", shop, operations=[], include=["*"], exclude=["create*"])
    async with ConnectorRegistry(sections) as reg:
        # weirdReport / uploadAvatar cannot be imported: patterns skip them.
        assert [d["operation"] for d in reg.describe("shop")] == ["listOrders"]


async def test_a_backend_that_is_down_is_unavailable_and_the_registry_keeps_serving(
    shop: MiniHttpServer,
) -> None:
    sections = _section("3.0", shop, base_url="http://127.0.0.1:9/api")
    sections["ok"] = _section("3.0", shop)["shop"]
    async with ConnectorRegistry(sections) as reg:
        args = {"customer_id": "c-1", "X_Request_Id": "r"}
        with pytest.raises(ConnectorUnavailableError, match="backend unreachable") as err:
            await reg.invoke("shop", "listOrders", args)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert len(await reg.invoke("ok", "listOrders", args)) == 2


def test_inspect_cli_lists_what_a_spec_offers(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "talkwire.server.cli", "connectors", "inspect", "--openapi"]
    done = subprocess.run(
        [*cmd, str(SPECS / "shop-3.1.json")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "listOrders  GET /customers/{customer_id}/orders" in out
    assert "createPayment  POST /customers/{customer_id}/payments [write]" in out
    assert "amount: number (body, required)" in out
    assert "note: string (body)" in out
    assert "X_Request_Id: string (header, required)" in out
    assert "weirdReport" in out and "not importable: " in out
    assert "bearerAuth: http bearer" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("openapi: [3.0\n")
    done = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not parse" in lines[0], done.stderr


DEMO_SPEC = Path(__file__).parents[2] / "server/talkwire/server/demo/erp-openapi.yaml"


async def test_the_demo_erp_document_against_the_demo_erp() -> None:
    """The document the demo config is to use (server/demo/) drives the real demo ERP."""
    sections = {
        "erp": {
            "type": "openapi",
            "spec": str(DEMO_SPEC),
            "allow_private": True,
            "bind": {"customer_id": "{user.customer_id}"},
            "operations": {
                "getBalance": {
                    "name": "get_balance",
                    "fields": {"balance": "balance", "currency": "currency"},
                    "cache_ttl": 600,
                    "cache_keys": ["balance:{user.customer_id}"],
                },
                "makePayment": {
                    "name": "make_payment",
                    "invalidates": ["balance:{user.customer_id}"],
                    "fields": {"payment_id": "payment_id", "balance": "balance"},
                },
            },
        }
    }
    alice = CallContext(subject="alice", claims={"customer_id": "c-100"})
    async with serve_demo_erp() as base_url:
        sections["erp"]["base_url"] = base_url
        async with ConnectorRegistry(sections) as reg:
            params = {d["operation"]: d["parameters"] for d in reg.describe("erp")}
            assert set(params["make_payment"]["properties"]) == {"amount"}  # key + bound id gone
            before = await reg.invoke("erp", "get_balance", {}, alice)
            assert before == {"balance": 120.5, "currency": "EUR"}
            keyed = CallContext(alice.subject, alice.claims, idempotency_key="turn-1")
            paid = await reg.invoke("erp", "make_payment", {"amount": 20}, keyed)
            assert paid["balance"] == 100.5
            assert await reg.invoke("erp", "make_payment", {"amount": 20}, keyed) == paid
            # Shown straight away, not after the 600 s cache TTL; charged once.
            assert (await reg.invoke("erp", "get_balance", {}, alice))["balance"] == 100.5
            with pytest.raises(RejectedInputError, match=r"must be >= 0\.01"):
                await reg.invoke("erp", "make_payment", {"amount": 0}, alice)
