"""Health (Check and List) and server reflection (v1 and v1alpha) on a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from talkwire.server.app import Application
from talkwire.server.health import MAX_LISTED, HealthServicer

# grpc.reflection.v1 is v1alpha under a new package: the same messages and field
# numbers, so grpcio-reflection's message classes encode a v1 client's frames exactly.
_METHODS = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}

Statuses = dict[str, int]

_SERVICES = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "talkwire.v1.AdminService",
    "talkwire.v1.AgentService",
    "talkwire.v1.ChatService",
}


async def _reflect(
    channel: grpc.aio.Channel, version: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    call = channel.stream_stream(
        _METHODS[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter(requests), timeout=10)
    return [response async for response in call]


def _files(response: reflection_pb2.ServerReflectionResponse) -> dict[str, list[str]]:
    """{file name: its service names} of a file_descriptor_response."""
    out = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        out[proto.name] = [f"{proto.package}.{s.name}" for s in proto.service]
    return out


async def test_reflection_v1_lists_and_describes_the_services(
    app: Application, channel: grpc.aio.Channel
) -> None:
    for version in ("v1", "v1alpha"):
        listed, chat, own = await _reflect(
            channel,
            version,
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="talkwire.v1.ChatService"
            ),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"
            ),
        )
        names = {s.name for s in listed.list_services_response.service}
        assert names == _SERVICES, version
        assert "talkwire.v1.ChatService" in {s for v in _files(chat).values() for s in v}
        assert _files(own)["grpc/reflection/v1/reflection.proto"] == [
            "grpc.reflection.v1.ServerReflection"
        ]


async def test_reflection_v1_reports_an_unknown_symbol(channel: grpc.aio.Channel) -> None:
    (response,) = await _reflect(
        channel, "v1", reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such")
    )
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_health_list_returns_every_service_with_its_status(
    app: Application, channel: grpc.aio.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    listed = await health.List(health_pb2.HealthListRequest(), timeout=10)
    serving = health_pb2.HealthCheckResponse.SERVING
    statuses = {name: r.status for name, r in listed.statuses.items()}
    assert statuses == {
        "": serving,
        "talkwire.ready": serving,
        "talkwire.v1.ChatService": serving,
        "talkwire.v1.AdminService": serving,
        "talkwire.v1.AgentService": serving,
    }
    for name, status in statuses.items():  # the same as Check says, service by service
        checked = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert checked.status == status


@pytest.fixture
async def bare_health() -> AsyncIterator[tuple[HealthServicer, Callable[[], Awaitable[Statuses]]]]:
    """Talkwire's HealthServicer alone on a real grpc.aio server, and a List caller."""
    servicer = HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def listed() -> Statuses:
                reply = await health.List(health_pb2.HealthListRequest(), timeout=10)
                return {name: r.status for name, r in reply.statuses.items()}

            yield servicer, listed
    finally:
        await server.stop(None)


async def test_health_list_follows_status_changes_and_shutdown(
    bare_health: tuple[HealthServicer, Callable[[], Awaitable[Statuses]]],
) -> None:
    servicer, listed = bare_health
    status = health_pb2.HealthCheckResponse
    assert await listed() == {"": status.SERVING}
    await servicer.set("a", status.SERVING)
    await servicer.set("b", status.NOT_SERVING)
    assert await listed() == {"": status.SERVING, "a": status.SERVING, "b": status.NOT_SERVING}
    await servicer.enter_graceful_shutdown()
    assert await listed() == dict.fromkeys(("", "a", "b"), status.NOT_SERVING)


async def test_health_list_past_the_limit_is_resource_exhausted(
    bare_health: tuple[HealthServicer, Callable[[], Awaitable[Statuses]]],
) -> None:
    servicer, listed = bare_health
    for i in range(MAX_LISTED):  # with "" that is one more than the limit
        await servicer.set(f"s{i}", health_pb2.HealthCheckResponse.SERVING)
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await listed()
    assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
