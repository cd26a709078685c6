"""The graphql connector against a real loopback GraphQL endpoint."""

from __future__ import annotations

from typing import Any

import pytest

from talkwire.connectors.base import CallContext
from talkwire.connectors.errors import BackendError, ConnectorUnavailableError, ResultNotFoundError
from talkwire.connectors.graphql import GraphQLConnector
from tests.connectors.httpserver import MiniHttpServer, Request, Response

ORDERS = {"1001": {"id": "1001", "status": "shipped", "eta": "2025-06-03"}}


def install(http: MiniHttpServer) -> list[dict[str, Any]]:
    created: list[dict[str, Any]] = []

    @http.route("POST", "/graphql")
    async def graphql(req: Request) -> Response:
        if req.headers.get("authorization") != "Bearer gq":
            return Response(401, json={"errors": [{"message": "unauthenticated"}]})
        body = req.json()
        doc, variables = body["query"], body.get("variables") or {}
        if doc.startswith("query Order("):
            order = ORDERS.get(variables["id"])
            if order is None:
                return Response(
                    json={
                        "data": {"order": None},
                        "errors": [
                            {"message": "order not found", "extensions": {"code": "NOT_FOUND"}}
                        ],
                    }
                )
            return Response(json={"data": {"order": order}})
        if doc.startswith("query Orders"):
            return Response(
                json={"data": {"orders": {"edges": [{"node": o} for o in ORDERS.values()]}}}
            )
        if doc.startswith("mutation"):
            key = req.headers.get("idempotency-key")
            created.append({"by": variables["by"], "key": key})
            return Response(json={"data": {"createTicket": {"id": len(created)}}})
        if doc.startswith("query Down"):
            return Response(503, body=b"down")
        return Response(400, json={"errors": [{"message": f"Cannot parse: {doc[:20]}"}]})

    return created


def connector(http: MiniHttpServer) -> GraphQLConnector:
    return GraphQLConnector(
        "shop",
        {
            "type": "graphql",
            "url": f"{http.base_url}/graphql",
            "allow_private": True,
            "auth": {"type": "bearer", "token": "gq"},
            "retries": {"attempts": 2, "base_delay": 0.001},
            "operations": {
                "order": {
                    "document": "query Order($id: ID!) { order(id: $id) { id status eta } }",
                    "variables": {"id": "{order_id}"},
                    "params": {"order_id": "string"},
                    "select": "order",
                    "result": "row",
                },
                "orders": {
                    "document": "query Orders { orders { edges { node { id status } } } }",
                    "select": "orders.edges[*].node",
                    "fields": {"order_id": "id", "status": "status"},
                },
                "open_ticket": {
                    "document": "mutation Open($by: String!) { createTicket(by: $by) { id } }",
                    "variables": {"by": "{user.sub}"},
                    "select": "createTicket",
                    "result": "object",
                },
                "broken": {"document": "query Broken { x }", "result": "value"},
                "down": {"document": "query Down { x }", "result": "value"},
            },
        },
    )


async def test_queries_mutations_and_errors(http: MiniHttpServer) -> None:
    created = install(http)
    async with connector(http) as conn:
        assert await conn.invoke("order", {"order_id": 1001}) == ORDERS["1001"]
        assert await conn.invoke("orders", {}) == [{"order_id": "1001", "status": "shipped"}]
        with pytest.raises(ResultNotFoundError, match="order not found"):
            await conn.invoke("order", {"order_id": "9"})
        with pytest.raises(BackendError, match="Cannot parse"):
            await conn.invoke("broken", {})
        with pytest.raises(ConnectorUnavailableError):
            await conn.invoke("down", {})
        got = await conn.invoke("open_ticket", {}, CallContext(subject="c-100"))
        assert got == {"id": 1}
    assert created[0]["by"] == "c-100"
    assert created[0]["key"]
    assert http.hits("/graphql") == 7  # "down" retried once
    assert conn.operations["open_ticket"].write
