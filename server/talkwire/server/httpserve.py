"""One embedded HTTP server (uvicorn) for the ingress and gateway that serve ASGI apps.

:class:`HttpServer` binds its own socket first, so a taken address is a
:class:`~talkwire.server.errors.ConfigError` naming the config key (uvicorn
would exit the whole process), runs uvicorn without its signal handlers (the
talkwire server owns SIGTERM) and stops it with in-flight requests finishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from types import TracebackType
from typing import Any, Self

import uvicorn

from talkwire.server.aio import cancel_and_wait
from talkwire.server.errors import ConfigError

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the talkwire server owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """Serves ``app`` on ``host:port`` while entered; ``port`` is the bound one (0: any)."""

    def __init__(
        self, app: Any, *, host: str, port: int, key: str, name: str, **uvicorn_options: Any
    ) -> None:
        self._app = app
        self.host = host
        self.port = port
        self._key = key  # the config key a listen error names, e.g. "web.listen"
        self._name = name
        self._options = uvicorn_options
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

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
        """Listen and serve; returns once uvicorn has started."""
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            **self._options,
        )
        sock = self._bind()
        self.port = int(sock.getsockname()[1])
        server = _Server(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name=self._name)
        while not server.started:
            if self._task.done():
                self._task.result()
                raise ConfigError(f"{self._key}: {self._name} did not start on port {self.port}")
            await asyncio.sleep(0.01)  # uvicorn offers no start event; bounded by the task

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"{self._key}: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        sock.set_inheritable(True)
        return sock

    async def aclose(self) -> None:
        """Stop serving (in-flight requests finish, at most 10 s). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.should_exit = True
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:
            await cancel_and_wait(task)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("%s ended with %r", self._name, task.exception())
