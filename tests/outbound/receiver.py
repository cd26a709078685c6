"""A real webhook receiver on loopback that verifies talkwire's outbound signature.

It checks ``X-Talkwire-Signature`` itself (HMAC-SHA256 over ``"<timestamp>." + body``,
constant-time compare, 300 s window) -- the scheme the inbound webhooks document -- and
answers what the test scripts: a queue of statuses (500, 429 + Retry-After, slow), then
200. It can go down and come back on the same port.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import deque
from typing import Any

from tests.connectors.httpserver import MiniHttpServer, Request, Response

__all__ = ["WebhookReceiver"]


class _Server(MiniHttpServer):
    def __init__(self, port: int) -> None:
        super().__init__()
        self.fixed_port = port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, "127.0.0.1", self.fixed_port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]


class WebhookReceiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.events: list[dict[str, Any]] = []
        self.deliveries: list[str] = []
        self.bad_signatures = 0
        self.script: deque[Response | float] = deque()
        self.port = 0
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        server = _Server(self.port)
        server.route("POST", "/hook")(self._handle)
        await server.start()
        self.port = server.port
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    def _verified(self, req: Request) -> bool:
        ts = req.headers.get("x-talkwire-timestamp", "")
        sig = req.headers.get("x-talkwire-signature", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            return False
        mac = hmac.new(self.secret, f"{ts}.".encode() + req.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(sig, f"sha256={mac}")

    async def _handle(self, req: Request) -> Response:
        if not self._verified(req):
            self.bad_signatures += 1
            return Response(401, json={"error": "bad signature"})
        if self.script:
            step = self.script.popleft()
            if isinstance(step, float):
                await asyncio.sleep(step)  # a slow receiver: answers late (then takes it)
            elif step.status >= 300:
                return step
        self.deliveries.append(req.headers.get("x-talkwire-delivery", ""))
        self.events.extend(json.loads(req.body)["events"])
        return Response(200, json={"ok": True})
