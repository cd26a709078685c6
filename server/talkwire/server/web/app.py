"""The web gateway: a Starlette app on uvicorn, one WebSocket per session stream.

Per socket: the origin is checked before the upgrade (refused: HTTP 403), a
codec is picked from the offered subprotocols, the token is taken from a
``bearer.<token>`` subprotocol or the ``token`` member of the first JSON frame
(never from the URL), and the socket is handed to
:meth:`~talkwire.server.chat.ChatService.serve` as a
:class:`~talkwire.server.web.adapter.WebSocketStream`. The final status closes
the socket with the code of :mod:`talkwire.server.web.closecodes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from importlib import resources
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from talkwire.server.chat import ChatService
from talkwire.server.errors import DeadlineExceededError, status_for
from talkwire.server.httpserve import HttpServer
from talkwire.server.transport import Metadata
from talkwire.server.web.adapter import (
    JSON_PROTOCOL,
    PROTO_PROTOCOL,
    Codec,
    JsonCodec,
    ProtoCodec,
    WebSocketStream,
)
from talkwire.server.web.closecodes import close_code, close_reason
from talkwire.server.web.settings import WebSettings

__all__ = ["TOKEN_PROTOCOL_PREFIX", "WebGateway"]

log = logging.getLogger(__name__)

TOKEN_PROTOCOL_PREFIX = "bearer."  # noqa: S105 - a prefix, not a secret
_CLOSE_WAIT = 2.0  # seconds a close frame may take before the socket is dropped
_POLICY_VIOLATION = 1008


def _static(name: str) -> bytes:
    return resources.files("talkwire.server.web").joinpath("static", name).read_bytes()


class WebGateway:
    """The ``web:`` endpoint; an async context manager (``port`` is the bound port)."""

    def __init__(self, settings: WebSettings, chat: ChatService, *, max_message_bytes: int) -> None:
        self.settings = settings
        self._chat = chat
        self._max_bytes = max_message_bytes
        self._http: HttpServer | None = None
        self._closed = False
        self.port = settings.port
        self._widget = _static("widget.js")
        self._page = _static("index.html")
        routes: list[Route | WebSocketRoute] = [
            WebSocketRoute(settings.path, self._socket),
            Route("/widget.js", self._serve_widget),
        ]
        if settings.demo_page:
            routes.append(Route("/", self._serve_page))
        self.app = Starlette(routes=routes)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Listen; ``ConfigError`` naming ``web.listen`` when the address is taken."""
        self._http = HttpServer(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            key="web.listen",
            name="talkwire-web",
            ws="websockets-sansio",
            # Bigger than the limit, so an oversized frame reaches the adapter and gets
            # its talkwire close code; past this the library closes with 1009 itself.
            ws_max_size=4 * self._max_bytes,
            ws_per_message_deflate=False,  # a deflate context per socket costs ~100 KiB idle
        )
        await self._http.start()
        self.port = self._http.port
        log.info("web gateway on %s (WebSocket %s)", self.url, self.settings.path)

    async def aclose(self) -> None:
        """Stop listening; open sockets end with their session's status. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._http is not None:
            await self._http.aclose()

    async def _serve_widget(self, request: Request) -> Response:
        return Response(
            self._widget,
            media_type="text/javascript",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def _serve_page(self, request: Request) -> Response:
        return Response(
            self._page,
            media_type="text/html",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
            },
        )

    def _origin_allowed(self, origin: str, host: str) -> bool:
        allowed = self.settings.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        return not allowed and urlsplit(origin).netloc == host

    async def _socket(self, websocket: WebSocket) -> None:
        origin = websocket.headers.get("origin")
        if origin is not None and not self._origin_allowed(
            origin, websocket.headers.get("host", "")
        ):
            log.warning("web: refused a socket from origin %s", origin)
            await websocket.close(code=_POLICY_VIOLATION)  # before accept: HTTP 403
            return
        offered = list(websocket.scope.get("subprotocols") or ())
        codec, chosen = _pick_codec(offered)
        await websocket.accept(subprotocol=chosen)
        try:
            async with asyncio.timeout(self.settings.open_timeout):
                message = await websocket.receive()
        except TimeoutError:
            exc = DeadlineExceededError(f"no open frame within {self.settings.open_timeout:g}s")
            await _close(websocket, close_code(status_for(exc)), exc.message)
            return
        if message["type"] == "websocket.disconnect":
            return
        first: str | bytes = message.get("text") or message.get("bytes") or b""
        first, frame_token = _take_token(first)
        stream = WebSocketStream(
            websocket,
            codec,
            metadata=_metadata(websocket, _offered_token(offered) or frame_token),
            first=first,
            max_bytes=self._max_bytes,
        )
        await self._chat.serve(stream)
        if not stream.gone:
            status = stream.status
            await _close(websocket, close_code(status), close_reason(status))


def _pick_codec(offered: Sequence[str]) -> tuple[Codec, str | None]:
    if PROTO_PROTOCOL in offered and JSON_PROTOCOL not in offered:
        return ProtoCodec(), PROTO_PROTOCOL
    return JsonCodec(), JSON_PROTOCOL if JSON_PROTOCOL in offered else None


def _offered_token(offered: Sequence[str]) -> str | None:
    for item in offered:
        if item.startswith(TOKEN_PROTOCOL_PREFIX) and len(item) > len(TOKEN_PROTOCOL_PREFIX):
            return item[len(TOKEN_PROTOCOL_PREFIX) :]
    return None


def _take_token(first: str | bytes) -> tuple[str | bytes, str | None]:
    """Remove a top-level ``token`` member from a first JSON frame (it is no frame field)."""
    if not isinstance(first, str) or '"token"' not in first:
        return first, None
    try:
        parsed = json.loads(first)
    except ValueError:
        return first, None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("token"), str):
        return first, None
    token = parsed.pop("token")
    return json.dumps(parsed), token


def _metadata(websocket: WebSocket, token: str | None) -> Metadata:
    if token is not None:
        return (("authorization", f"Bearer {token}"),)
    header = websocket.headers.get("authorization")  # non-browser clients may send one
    return (("authorization", header),) if header is not None else ()


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Send the close frame; a client that reads nothing cannot stall us past _CLOSE_WAIT."""
    with contextlib.suppress(TimeoutError, RuntimeError, OSError):
        async with asyncio.timeout(_CLOSE_WAIT):
            await websocket.close(code=code, reason=reason)
