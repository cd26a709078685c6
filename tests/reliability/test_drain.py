"""SIGTERM drains in one documented sequence (issue 18).

A real ``talkwire serve`` process with ``server.drain_delay`` set gets SIGTERM
while a stream is open: readiness (``talkwire.ready``) turns ``NOT_SERVING``
first while that stream is still served (a ping is answered), then the stream
ends ``UNAVAILABLE``, and the process exits 0. Its log shows the phases in
order.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkwire.v1 import chat_pb2
from tests.reliability.conftest import base_config, sqlite_url
from tests.support.grpcx import Stream
from tests.support.server_proc import ServerProcess
from tests.support.waiting import eventually

ALICE = "alice-token"
# Long enough for the checks below to run inside it; the test waits on events, not on it.
DRAIN_DELAY = 5.0


async def _ready(channel: grpc.aio.Channel) -> int:
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="talkwire.ready"))
    return int(reply.status)


async def test_sigterm_readiness_first_then_streams_end_unavailable(tmp_path: Path) -> None:
    config = base_config(sqlite_url(tmp_path / "s.db"), grace_period=5, drain_delay=DRAIN_DELAY)
    server = ServerProcess(config, workdir=tmp_path)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stream = Stream(channel, ALICE)
            await stream.open()
            assert await _ready(channel) == health_pb2.HealthCheckResponse.SERVING
            assert server.pid is not None
            os.kill(server.pid, signal.SIGTERM)

            async def not_ready() -> bool:
                return await _ready(channel) == health_pb2.HealthCheckResponse.NOT_SERVING

            await eventually(not_ready, message="talkwire.ready NOT_SERVING after SIGTERM")
            # Out of load balancing, but the open stream is still served.
            await stream.send(chat_pb2.ConverseRequest(id="p1", ping=chat_pb2.Ping(data="x")))
            pong = await stream.recv()
            assert (pong.in_reply_to, pong.pong.data) == ("p1", "x")
            assert await stream.status(timeout=DRAIN_DELAY + 15) == grpc.StatusCode.UNAVAILABLE
        assert await server.terminate(timeout=30) == 0, server.log_tail()
        log = server.log_text()
        assert log.index("draining: readiness NOT_SERVING") < log.index("shutdown complete")
    finally:
        await server.kill()
