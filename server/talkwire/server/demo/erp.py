"""The demo REST "ERP": a small Starlette app over the demo CRM database.

Endpoints:

- ``GET /health`` -> ``{"status": "ok"}``
- ``GET /customers/{customer_id}/balance`` -> ``{"customer_id", "balance", "currency"}``
  (404 for unknown customers)
- ``POST /payments`` with JSON ``{"customer_id", "amount"}`` and an optional
  ``Idempotency-Key`` header -> 201 ``{"payment_id", "customer_id", "amount",
  "currency", "balance"}``; repeating a key returns the first payment (200)
  without charging again.
- ``GET /payments/{payment_id}``

``serve_demo_erp()`` runs it under uvicorn inside the current event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from talkwire.server.demo.crm import create_demo_crm, sqlite_url

__all__ = ["create_erp_app", "serve_demo_erp"]


def create_erp_app(crm_url: str) -> Starlette:
    """The ERP app over an existing demo CRM database (see :func:`create_demo_crm`)."""
    engine_box: dict[str, AsyncEngine] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine_box["e"] = create_async_engine(sqlite_url(crm_url))
        try:
            yield
        finally:
            await engine_box.pop("e").dispose()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def balance(request: Request) -> JSONResponse:
        cid = request.path_params["customer_id"]
        async with engine_box["e"].connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT currency, balance FROM accounts WHERE customer_id = :c"),
                    {"c": cid},
                )
            ).first()
        if row is None:
            return JSONResponse({"error": "unknown customer"}, status_code=404)
        return JSONResponse(
            {"customer_id": cid, "balance": round(float(row[1]), 2), "currency": row[0]}
        )

    async def payment_view(payment_id: int) -> dict[str, Any] | None:
        async with engine_box["e"].connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT p.id, p.customer_id, p.amount, p.currency, a.balance "
                        "FROM payments p JOIN accounts a ON a.customer_id = p.customer_id "
                        "WHERE p.id = :i"
                    ),
                    {"i": payment_id},
                )
            ).first()
        if row is None:
            return None
        return {
            "payment_id": row[0],
            "customer_id": row[1],
            "amount": round(float(row[2]), 2),
            "currency": row[3],
            "balance": round(float(row[4]), 2),
        }

    async def create_payment(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            cid = str(body["customer_id"])
            amount = float(body["amount"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "customer_id and amount required"}, status_code=400)
        if not math.isfinite(amount) or amount <= 0:
            return JSONResponse({"error": "amount must be positive"}, status_code=400)
        key = request.headers.get("idempotency-key")
        engine = engine_box["e"]
        if key:
            async with engine.connect() as conn:
                existing = (
                    await conn.execute(
                        text("SELECT id FROM payments WHERE idempotency_key = :k"), {"k": key}
                    )
                ).first()
            if existing is not None:
                return JSONResponse(await payment_view(existing[0]), status_code=200)
        try:
            async with engine.begin() as conn:
                acct = (
                    await conn.execute(
                        text("SELECT currency FROM accounts WHERE customer_id = :c"), {"c": cid}
                    )
                ).first()
                if acct is None:
                    return JSONResponse({"error": "unknown customer"}, status_code=404)
                res = await conn.execute(
                    text(
                        "INSERT INTO payments (customer_id, amount, currency, idempotency_key) "
                        "VALUES (:c, :a, :cur, :k) RETURNING id"
                    ),
                    {"c": cid, "a": amount, "cur": acct[0], "k": key},
                )
                pid = res.scalar_one()
                await conn.execute(
                    text("UPDATE accounts SET balance = balance - :a WHERE customer_id = :c"),
                    {"a": amount, "c": cid},
                )
        except IntegrityError:  # a concurrent request with the same key won
            async with engine.connect() as conn:
                pid = (
                    await conn.execute(
                        text("SELECT id FROM payments WHERE idempotency_key = :k"), {"k": key}
                    )
                ).scalar_one()
            return JSONResponse(await payment_view(pid), status_code=200)
        return JSONResponse(await payment_view(pid), status_code=201)

    async def get_payment(request: Request) -> JSONResponse:
        try:
            pid = int(request.path_params["payment_id"])
        except ValueError:
            return JSONResponse({"error": "not found"}, status_code=404)
        view = await payment_view(pid)
        if view is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(view)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/customers/{customer_id}/balance", balance),
            Route("/payments", create_payment, methods=["POST"]),
            Route("/payments/{payment_id}", get_payment),
        ],
        lifespan=lifespan,
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without signal handling: the host process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def run_uvicorn(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve an ASGI app in the current loop; yields its base URL (``http://host:port``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted sockets inherit it: no Nagle delay between uvicorn's header and body writes
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the demo ERP server did not start")
            await asyncio.sleep(0.005)
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"http://{shown}:{bound_port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def serve_demo_erp(
    host: str = "127.0.0.1", port: int = 0, *, crm_url: str | None = None
) -> AsyncIterator[str]:
    """Run the demo ERP on ``host:port`` (0 = any free port); yields the base URL.

    With ``crm_url`` it serves that demo CRM database (balances and payments
    shared with the ``crm`` sql connector); without, it seeds its own in a
    temporary directory removed on exit.
    """
    with contextlib.ExitStack() as stack:
        if crm_url is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="talkwire-erp-"))
            crm_url = await create_demo_crm(Path(tmp) / "erp.db")
        async with run_uvicorn(create_erp_app(crm_url), host, port) as base_url:
            yield base_url
