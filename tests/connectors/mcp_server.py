"""A real MCP server (the SDK's FastMCP) for connector tests and the benchmark.

``build_server()`` returns the FastMCP app (tools below); serve it over
Streamable HTTP in-process with ``streamable_http_app()``, or run this file as
``python tests/connectors/mcp_server.py`` for the stdio transport, or with
``--http PORT`` for Streamable HTTP on 127.0.0.1:PORT in its own process.
"""

from __future__ import annotations

import sys
from typing import Any

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

__all__ = ["LEDGER", "build_server"]

# Per-process state: balances and the payments made (a write counter for the tests).
LEDGER: dict[str, Any] = {"balances": {"c-1": 100.0, "c-2": 50.0}, "payments": []}


def build_server(*, port: int = 8000) -> FastMCP:
    mcp = FastMCP("test-erp", host="127.0.0.1", port=port, log_level="WARNING")

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def get_balance(customer_id: str) -> dict[str, Any]:
        """The customer's balance."""
        if customer_id not in LEDGER["balances"]:
            raise ValueError(f"no customer {customer_id}")
        return {"customer_id": customer_id, "balance": LEDGER["balances"][customer_id]}

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False))
    def make_payment(customer_id: str, amount: float, note: str = "") -> dict[str, Any]:
        """Pay towards the customer's balance."""
        LEDGER["balances"][customer_id] -= amount
        LEDGER["payments"].append({"customer_id": customer_id, "amount": amount, "note": note})
        return {"payment_id": len(LEDGER["payments"]), "balance": LEDGER["balances"][customer_id]}

    @mcp.tool()
    def list_orders(customer_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """The customer's orders."""
        return [{"id": i, "customer_id": customer_id} for i in range(1, min(limit, 3) + 1)]

    @mcp.tool()
    def shout(text: str) -> str:
        """Upper-cases text (an unstructured text result)."""
        return text.upper()

    @mcp.tool()
    def weird(value: int | list[str]) -> str:
        """A parameter whose schema has no single type."""
        return str(value)

    return mcp


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        build_server(port=int(sys.argv[2])).run("streamable-http")
    else:
        build_server().run("stdio")
