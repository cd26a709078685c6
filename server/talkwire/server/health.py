"""``grpc.health.v1.Health`` with ``List``: grpcio's asyncio servicer plus the snapshot RPC.

grpcio-health-checking serves ``Check`` and ``Watch`` but answers ``List``
with ``UNIMPLEMENTED``, although the service advertises it. ``List`` here
returns every service whose status was set (``""`` is the process as a whole,
then ``talkwire.ready``, ``talkwire.events`` and the registered gRPC
services), each with its current status, as the health protocol specifies: a
non-atomic snapshot, ``RESOURCE_EXHAUSTED`` past :data:`MAX_LISTED` services.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import _async, health_pb2

__all__ = ["MAX_LISTED", "HealthServicer"]

MAX_LISTED = 100


class HealthServicer(_async.HealthServicer):  # type: ignore[misc]  # grpcio ships it untyped
    """The asyncio health servicer of grpcio-health-checking, with ``List`` implemented."""

    async def List(
        self,
        request: health_pb2.HealthListRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> health_pb2.HealthListResponse:
        statuses = dict(self._server_status)
        if len(statuses) > MAX_LISTED:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {MAX_LISTED} health services; use Check per service",
            )
        response = health_pb2.HealthListResponse()
        for name, status in statuses.items():
            response.statuses[name].status = status
        return response
