"""A tiny HTTP/1.1 server on 127.0.0.1 for connector tests.

Real sockets, real HTTP, full control over faults: dropping a connection
without answering, dripping a body forever, redirects. Handlers are
``async (Request) -> Response``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Response:
    status: int = 200
    json: Any = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    drip: bool = False  # announce a large body and send it one byte at a time, forever


Handler = Callable[[Request], Awaitable[Response]]
_REASONS = {200: "OK", 201: "Created", 302: "Found", 401: "Unauthorized", 404: "Not Found"}


class MiniHttpServer:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[Request] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.routes[(method, path)] = fn
            return fn

        return deco

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, v = h.decode("latin-1").split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                parts = urlsplit(target)
                req = Request(
                    method, target, parts.path, dict(parse_qsl(parts.query)), headers, body
                )
                self.requests.append(req)
                handler = self.routes.get((method, parts.path))
                resp = await handler(req) if handler else Response(404, json={"error": "nope"})
                if resp.drop:
                    writer.transport.abort()
                    return
                payload = json.dumps(resp.json).encode() if resp.json is not None else resp.body
                out_headers = {"content-type": "application/json", **resp.headers}
                length = 1_000_000 if resp.drip else len(payload)
                head = f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Status')}\r\n"
                head += "".join(f"{k}: {v}\r\n" for k, v in out_headers.items())
                head += f"content-length: {length}\r\n\r\n"
                writer.write(head.encode("latin-1"))
                if resp.drip:
                    writer.write(b"[")
                    while True:  # a byte every 20 ms: per-read timeouts never fire
                        await writer.drain()
                        await asyncio.sleep(0.02)
                        writer.write(b" ")
                writer.write(payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()


@contextlib.asynccontextmanager
async def mini_server() -> AsyncIterator[MiniHttpServer]:
    server = MiniHttpServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
