"""Three ``talkwire serve`` processes sharing one PostgreSQL database and one Redis.

Each replica is a real subprocess (``talkwire serve --config``) on a loopback
port chosen by the kernel (``listen: 127.0.0.1:0``; the port is read from the
``talkwire serving on HOST:PORT`` line), with its own ``server.replica``.
Readiness is the ``talkwire.ready`` health service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkwire.v1 import admin_pb2, admin_pb2_grpc, events_pb2
from tests.conftest import TOKENS
from tests.support.grpcx import metadata_for
from tests.support.waiting import eventually

__all__ = ["ADMIN", "Replica", "publish"]

ADMIN = "admin-token"
TALKWIRE = str(Path(sys.executable).with_name("talkwire"))


class Replica:
    """One server process."""

    def __init__(self, name: str, workdir: Path, config: dict[str, Any]) -> None:
        self.name = name
        self.replica_id = str(config["server"]["replica"])
        self.workdir = workdir
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: asyncio.subprocess.Process | None = None
        self.target = ""
        self.channel: grpc.aio.Channel | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            TALKWIRE,
            "serve",
            "--config",
            str(self.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            cwd=self.workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(60):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
                if line.startswith("talkwire serving on "):
                    self.target = line.split()[-1]
                    break
        self.channel = grpc.aio.insecure_channel(self.target)
        await eventually(self.ready, timeout=30, message=f"{self.name} ready")

    async def ready(self) -> bool:
        assert self.channel is not None
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="talkwire.ready"))
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        assert self.channel is not None
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    def kill(self) -> None:
        """``kill -9``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful drain); wait for the exit and return its code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()
        elif self.proc is not None:
            await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def replica_config(name: str, store_url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "replica": name,
            "handler": "echo",
            "sweep_interval": 3600,
            "grace_period": 1,
        },
        "store": {"url": store_url, "pool_size": 5},
        "auth": {"kind": "static", "tokens": TOKENS},
        "bus": {
            "kind": "redis",
            "url": "redis://127.0.0.1:6379/0",
            "prefix": prefix,
            "sweep_interval": 1.0,
            "presence_ttl": 5,
        },
        "policy": {"default": "allow"},
        "demo": False,
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    return config


async def publish(
    replica: Replica, *, session_id: str = "", key: str = "", text: str = "", event_id: str = ""
) -> admin_pb2.PublishResponse:
    event = events_pb2.ChangeEvent(id=event_id, type="test.update", text=text)
    request = admin_pb2.PublishRequest(event=event)
    if session_id:
        request.session_id = session_id
    else:
        request.key = key
    reply: admin_pb2.PublishResponse = await replica.admin.Publish(
        request, metadata=metadata_for(ADMIN)
    )
    return reply
