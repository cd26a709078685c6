"""AdminClient against the scripted AdminService, and the Struct/Value helpers."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import grpc
import pytest
from scripted_server import ADMIN_TOKEN, TOKEN, ServerHarness

from talkwire.clients import (
    AdminClient,
    ChatClient,
    RpcError,
    change_event,
    from_struct,
    from_value,
    to_struct,
    to_value,
)
from talkwire.v1 import admin_pb2, events_pb2


async def test_admin_round_trip(harness: ServerHarness) -> None:
    async with (
        ChatClient(harness.target, token=TOKEN) as chat,
        AdminClient(harness.target, token=ADMIN_TOKEN) as admin,
    ):
        sessions = [await chat.open() for _ in range(3)]
        await sessions[0].subscribe("order:1001")
        await sessions[0].next_frame(timeout=20)

        page = await admin.list_sessions(page_size=2)
        assert len(page.sessions) == 2
        assert page.next_page_token
        ids = [s.session_id async for s in admin.iter_sessions(page_size=2)]
        assert sorted(ids) == sorted(s.session_id for s in sessions)
        keyed = await admin.list_sessions(key="order:1001")
        assert [s.session_id for s in keyed.sessions] == [sessions[0].session_id]

        got = await admin.get_session(sessions[1].session_id)
        assert got.session_id == sessions[1].session_id
        assert got.state == admin_pb2.SESSION_STATE_ACTIVE

        # publish by key, with a repeated event id deduplicated
        result = await admin.publish(
            key="order:1001", text="shipped", data={"status": "shipped"}, event_id="e1"
        )
        assert (result.event_id, result.delivered, result.duplicate) == ("e1", 1, False)
        again = await admin.publish(key="order:1001", text="shipped", event_id="e1")
        assert again.duplicate
        update = await sessions[0].next_frame(timeout=20)
        assert update.update.text == "shipped"
        assert from_struct(update.update.data) == {"status": "shipped"}

        # publish a ready ChangeEvent into one session
        event = change_event(
            id="e2",
            source="erp.orders",
            type="order.status_changed",
            keys=["order:7"],
            op="update",
            after={"id": 7},
            occurred_at=dt.datetime(2026, 1, 2, 3, 4, 5),
        )
        assert event.op == events_pb2.CHANGE_OP_UPDATE
        assert event.occurred_at.ToDatetime() == dt.datetime(2026, 1, 2, 3, 4, 5)
        await admin.publish(session_id=sessions[2].session_id, event=event)
        assert harness.admin.published[-1].event.source == "erp.orders"
        assert harness.admin.published[-1].session_id == sessions[2].session_id

        frames = [f async for f in admin.watch(sessions[0].session_id, after_seq=0)]
        assert [f.seq for f in frames] == [1, 2]
        assert frames[1].update.event_id == "e1"

        closed = await admin.close_session(sessions[1].session_id, "bye")
        assert closed.state == admin_pb2.SESSION_STATE_CLOSED

        (crm,) = await admin.list_connectors()
        assert crm.name == "crm"
        assert crm.operations[0].parameters[0].name == "order_id"
        result_value = await admin.invoke_connector(
            "crm", "get_order", {"order_id": 1001}, subject="bob", claims={"role": "agent"}
        )
        assert result_value == {
            "operation": "get_order",
            "parameters": {"order_id": 1001},
            "subject": "bob",
            "claims": {"role": "agent"},
            "rows": [{"id": 1001, "status": "shipped"}],
        }

        with pytest.raises(RpcError) as info:
            await admin.get_session("missing")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(RpcError) as info:
            _ = [f async for f in admin.watch("missing")]
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        for s in sessions:
            await s.aclose()


async def test_admin_needs_admin_token(harness: ServerHarness) -> None:
    async with AdminClient(harness.target, token=TOKEN) as admin:
        with pytest.raises(RpcError) as info:
            await admin.list_connectors()
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert str(info.value) == "PERMISSION_DENIED: admin role required"


async def test_publish_argument_checks(harness: ServerHarness) -> None:
    async with AdminClient(harness.target, token=ADMIN_TOKEN) as admin:
        with pytest.raises(ValueError, match="exactly one"):
            await admin.publish(text="x")
        with pytest.raises(ValueError, match="exactly one"):
            await admin.publish(session_id="a", key="b", text="x")
        with pytest.raises(ValueError, match="either event"):
            await admin.publish(key="k", event=change_event(text="a"), text="b")
    assert harness.admin.published == []


def test_struct_value_round_trip() -> None:
    data = {
        "int": 1001,
        "float": 1.5,
        "bool": True,
        "none": None,
        "str": "x",
        "list": [1, "a", [False]],
        "nested": {"k": {"z": 0}},
    }
    assert from_struct(to_struct(data)) == data
    assert from_value(to_value(data)) == data
    assert from_value(to_value(2.0), integral_floats=False) == 2.0
    assert isinstance(from_value(to_value(2.0), integral_floats=False), float)


def test_struct_value_special_types() -> None:
    u = uuid.UUID(int=5)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    value = from_value(
        to_value(
            {
                "when": when,
                "day": dt.date(2026, 1, 2),
                "dec": decimal.Decimal("12.50"),
                "whole": decimal.Decimal("12"),
                "id": u,
                "raw": b"\x00\x01",
                "tuple": (1, 2),
                3: "non-str key",
            }
        )
    )
    assert value == {
        "when": when.isoformat(),
        "day": "2026-01-02",
        "dec": 12.5,
        "whole": 12,
        "id": str(u),
        "raw": "AAE=",
        "tuple": [1, 2],
        "3": "non-str key",
    }
    with pytest.raises(ValueError, match="exactly"):
        to_value(2**60)
    with pytest.raises(ValueError, match="finite"):
        to_value(float("nan"))
    with pytest.raises(TypeError):
        to_value(object())
    with pytest.raises(TypeError):
        to_struct([1, 2])  # type: ignore[arg-type]
    assert to_struct(None) == to_struct({})
