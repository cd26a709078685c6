"""Connector overhead: ``sql``, ``rest``, ``openapi`` and ``mcp`` vs direct SQLAlchemy / httpx / SDK.

Runs in one process, interleaving batches of "ours" and "direct" so drift hits
both equally, and prints p50 / p99 latency and the ratio ours/direct
(goal: <= 1.15x). ``openapi`` is compared with a direct httpx call to the same
endpoint; ``mcp`` with a direct ``ClientSession.call_tool`` of the official SDK
on its own session to the same FastMCP server (Streamable HTTP, loopback). Calls go through ``ConnectorRegistry.invoke`` (parameter
validation included; caching off), like the dialogue engine does.

    python bench/connectors_overhead.py [--quick]

``await run(quick)`` returns the numbers as a dict for a bench runner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.demo.crm import create_demo_crm
from talkwire.server.demo.erp import run_uvicorn

ORDER_SQL = (
    "SELECT id AS order_id, item, status, eta, total FROM orders "
    "WHERE id = :order_id AND customer_id = :customer_id"
)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _compare(
    ours: Callable[[], Awaitable[Any]],
    direct: Callable[[], Awaitable[Any]],
    *,
    iterations: int,
    batch: int = 50,
) -> dict[str, float]:
    for _ in range(batch):  # warm up pools, caches and prepared statements
        await ours()
        await direct()
    t_ours: list[float] = []
    t_direct: list[float] = []
    clock = time.perf_counter
    for _ in range(max(1, iterations // batch)):
        for fn, sink in ((ours, t_ours), (direct, t_direct)):
            for _ in range(batch):
                start = clock()
                await fn()
                sink.append(clock() - start)
    p50o, p50d = _pct(t_ours, 0.5), _pct(t_direct, 0.5)
    return {
        "ours_p50_us": p50o * 1e6,
        "ours_p99_us": _pct(t_ours, 0.99) * 1e6,
        "direct_p50_us": p50d * 1e6,
        "direct_p99_us": _pct(t_direct, 0.99) * 1e6,
        "ratio_p50": p50o / p50d,
        "ratio_mean": statistics.fmean(t_ours) / statistics.fmean(t_direct),
        "samples": float(len(t_ours)),
    }


async def bench_sql(tmp: Path, iterations: int) -> dict[str, float]:
    url = await create_demo_crm(tmp / "bench.db")
    sections = {
        "crm": {
            "type": "sql",
            "url": url,
            "operations": {
                "order_status": {
                    "sql": ORDER_SQL,
                    "params": {"order_id": {"type": "integer"}, "customer_id": "string"},
                    "result": "row",
                }
            },
        }
    }
    engine = create_async_engine(url)
    stmt = text(ORDER_SQL)
    params = {"order_id": 1001, "customer_id": "c-100"}

    async def direct() -> Any:
        async with engine.connect() as conn:
            row = (await conn.execute(stmt, params)).mappings().first()
            return dict(row) if row is not None else None

    try:
        async with ConnectorRegistry(sections) as reg:

            async def ours() -> Any:
                return await reg.invoke("crm", "order_status", params)

            assert await ours() == await direct()
            return await _compare(ours, direct, iterations=iterations)
    finally:
        await engine.dispose()


async def bench_rest(iterations: int) -> dict[str, float]:
    async def balance(request: Request) -> JSONResponse:
        cid = request.path_params["customer_id"]
        return JSONResponse({"customer_id": cid, "balance": 120.5, "currency": "EUR"})

    app = Starlette(routes=[Route("/customers/{customer_id}/balance", balance)])
    async with run_uvicorn(app) as base_url:
        sections = {
            "erp": {
                "type": "rest",
                "base_url": base_url,
                "allow_private": True,
                "breaker": {"failures": 5, "reset_after": 10},
                "operations": {
                    "get_balance": {
                        "path": "/customers/{customer_id}/balance",
                        "params": {"customer_id": "string"},
                        "result": "object",
                        "fields": {"balance": "balance", "currency": "currency"},
                    }
                },
            }
        }
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=10, trust_env=False) as client,
            ConnectorRegistry(sections) as reg,
        ):

            async def direct() -> Any:
                resp = await client.get("/customers/c-100/balance")
                resp.raise_for_status()
                data = resp.json()
                return {"balance": data["balance"], "currency": data["currency"]}

            async def ours() -> Any:
                return await reg.invoke("erp", "get_balance", {"customer_id": "c-100"})

            assert await ours() == await direct()
            return await _compare(ours, direct, iterations=iterations)


BALANCE_SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "bench ERP", "version": "1"},
    "paths": {
        "/customers/{customer_id}/balance": {
            "get": {
                "operationId": "getBalance",
                "parameters": [
                    {
                        "name": "customer_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        }
    },
}


async def bench_openapi(tmp: Path, iterations: int) -> dict[str, float]:
    async def balance(request: Request) -> JSONResponse:
        cid = request.path_params["customer_id"]
        return JSONResponse({"customer_id": cid, "balance": 120.5, "currency": "EUR"})

    spec = tmp / "erp-openapi.json"
    spec.write_text(json.dumps(BALANCE_SPEC))
    app = Starlette(routes=[Route("/customers/{customer_id}/balance", balance)])
    async with run_uvicorn(app) as base_url:
        sections = {
            "erp": {
                "type": "openapi",
                "spec": str(spec),
                "base_url": base_url,
                "allow_private": True,
                "operations": {
                    "getBalance": {"fields": {"balance": "balance", "currency": "currency"}}
                },
            }
        }
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=10, trust_env=False) as client,
            ConnectorRegistry(sections) as reg,
        ):

            async def direct() -> Any:
                resp = await client.get("/customers/c-100/balance")
                resp.raise_for_status()
                data = resp.json()
                return {"balance": data["balance"], "currency": data["currency"]}

            async def ours() -> Any:
                return await reg.invoke("erp", "getBalance", {"customer_id": "c-100"})

            assert await ours() == await direct()
            return await _compare(ours, direct, iterations=iterations)


async def bench_mcp(iterations: int) -> dict[str, float]:
    import logging

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.fastmcp import FastMCP
    from mcp.types import ToolAnnotations

    logging.getLogger("mcp").setLevel(logging.CRITICAL)  # its SSE writer logs normal shutdowns
    logging.getLogger("httpx").setLevel(logging.WARNING)
    server = FastMCP("bench-erp", log_level="WARNING")

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def get_balance(customer_id: str) -> dict[str, Any]:
        return {"customer_id": customer_id, "balance": 120.5, "currency": "EUR"}

    async with run_uvicorn(server.streamable_http_app()) as base_url:
        url = f"{base_url}/mcp"
        sections = {
            "erp": {
                "type": "mcp",
                "url": url,
                "allow_private": True,
                "tools": {
                    "get_balance": {"fields": {"balance": "balance", "currency": "currency"}}
                },
            }
        }
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None), trust_env=False) as client,
            streamable_http_client(url, http_client=client) as (read, write, _),
            ClientSession(read, write) as session,
            ConnectorRegistry(sections) as reg,
        ):
            await session.initialize()

            async def direct() -> Any:
                result = await session.call_tool("get_balance", {"customer_id": "c-100"})
                data = result.structuredContent or {}
                return {"balance": data["balance"], "currency": data["currency"]}

            async def ours() -> Any:
                return await reg.invoke("erp", "get_balance", {"customer_id": "c-100"})

            assert await ours() == await direct()
            return await _compare(ours, direct, iterations=iterations)


NAMES = ("sql", "rest", "openapi", "mcp")


async def run(quick: bool) -> dict[str, Any]:
    """Run every comparison; returns ``{"sql": {...}, "rest": {...}, ..., "goal": 1.15}``."""
    iterations = 500 if quick else 5000
    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        sql = await bench_sql(Path(tmp), iterations)
        openapi = await bench_openapi(Path(tmp), iterations)
    rest = await bench_rest(iterations)
    mcp = await bench_mcp(max(100, iterations // 5))
    return {"sql": sql, "rest": rest, "openapi": openapi, "mcp": mcp, "goal": 1.15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args()
    result = asyncio.run(run(args.quick))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'':7} {'ours p50':>10} {'p99':>10} {'direct p50':>11} {'p99':>10} {'ratio':>7}")
    for name in NAMES:
        r = result[name]
        verdict = "ok" if r["ratio_p50"] <= result["goal"] else "ABOVE GOAL"
        print(
            f"{name:7} {r['ours_p50_us']:9.1f}us {r['ours_p99_us']:9.1f}us "
            f"{r['direct_p50_us']:10.1f}us {r['direct_p99_us']:9.1f}us "
            f"{r['ratio_p50']:6.3f}x  {verdict}"
        )
    print(f"goal: ours/direct p50 <= {result['goal']}x")


if __name__ == "__main__":
    main()
