"""The plain-JSON fast path decodes exactly what the general (json_format) path does."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from hypothesis import given
from hypothesis import strategies as st

from talkwire.server.events.decode import DecodeError, decode, struct_to_dict
from talkwire.v1 import events_pb2

# The module, not the ``decode`` function the package re-exports under the same name.
_decode_mod = sys.modules["talkwire.server.events.decode"]

PLAIN = {
    "id": "e1",
    "source": "erp",
    "type": "order.status_changed",
    "keys": ["order:1", "customer:7"],
    "op": "update",
    "after": {"id": 1, "status": "shipped", "lines": [{"sku": "a", "qty": 2.5}], "ok": True},
    "before": {"id": 1, "status": "packed", "note": None},
    "occurred_at": "2024-05-01T12:00:00.123456Z",
    "attributes": {"tenant": "t1", "n": 3},
    "text": "hello",
}

CASES: list[Any] = [
    PLAIN,
    {"id": "e2", "op": "CHANGE_OP_DELETE", "before": {"id": 2}},
    {"id": "e3", "op": 3, "occurred_at": "2024-05-01T12:00:00+02:00"},
    {"id": "e4", "occurred_at": "2024-05-01T12:00:00.5-05:30"},
    {"id": "e5", "occurred_at": "1970-01-01T00:00:00.000000001Z"},
    {"id": "e6", "occurred_at": "0001-01-01T00:00:00Z"},
    {"id": "e7", "occurred_at": "9999-12-31T23:59:59.999999999Z"},
    # general path: other spellings and types, which it accepts (or rejects) as before
    {"id": "e8", "occurredAt": "2024-05-01T12:00:00Z"},
    {"id": "e9", "occurred_at": 1714564800123},
    {"id": "e10", "keys": "order:1, order:2"},
    {"id": "e11", "text": None, "after": None},
    {"id": "e12", "op": "snapshot", "keys": []},
    {"id": "e13", "occurred_at": "2024-05-01 12:00:00Z"},
    {"id": "e14", "occurred_at": "2024-02-30T12:00:00Z"},
    {"id": "e15", "occurred_at": "2024-05-01T12:00:00"},
    {"id": "e16", "occurred_at": "0001-01-01T00:00:00+00:01"},
    {"id": "e17", "keys": ["order:1", 2]},
    {"id": 17},
    {"id": "e18", "after": [1, 2]},
    {"id": "e19", "nope": 1},
    {"id": "e20", "op": "explode"},
    {"id": "e21", "op": True},
    {"id": "e22", "attributes": "x"},
    {"id": "e23", "occurred_at": "2024-05-01T12:00:00.1234567890Z"},
    {"id": "e24", "occurred_at": "2024-05-01T24:00:00Z"},
    {"id": "e25", "occurred_at": "2024-05-01T12:60:00Z"},
    {"id": "e26", "occurred_at": "2024-05-01T12:00:60Z"},
    {"id": "e27", "occurred_at": "0000-01-01T00:00:00Z"},
    {"id": "e28", "occurred_at": "2024-13-01T00:00:00Z"},
]


def _general(monkeypatch: pytest.MonkeyPatch, data: Any) -> events_pb2.ChangeEvent | str:
    with monkeypatch.context() as m:
        m.setattr(_decode_mod, "_plain_event", lambda _data: None)
        return _outcome(data)


def _outcome(data: Any) -> events_pb2.ChangeEvent | str:
    try:
        return _decode_mod.event_from_json(data)
    except DecodeError:
        return "DecodeError"


@pytest.mark.parametrize("data", CASES, ids=lambda d: str(d.get("id")))
def test_plain_path_matches_the_general_path(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, Any]
) -> None:
    assert _outcome(data) == _general(monkeypatch, data)


def test_plain_record_decodes_every_field() -> None:
    got = decode("json", json.dumps(PLAIN).encode())
    assert got is not None
    assert (got.id, got.source, got.type) == ("e1", "erp", "order.status_changed")
    assert got.text == "hello"
    assert list(got.keys) == ["order:1", "customer:7"]
    assert got.op == events_pb2.CHANGE_OP_UPDATE
    assert got.occurred_at.ToJsonString() == "2024-05-01T12:00:00.123456Z"
    assert dict(got.attributes) == {"tenant": "t1", "n": "3"}
    assert struct_to_dict(got.after) == PLAIN["after"]
    assert struct_to_dict(got.before) == PLAIN["before"]


_moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(
    moment=_moments,
    digits=st.integers(min_value=0, max_value=9),
    fraction=st.integers(min_value=0, max_value=999_999_999),
    offset=st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    zulu=st.booleans(),
)
def test_plain_times_match_the_general_path(
    moment: datetime, digits: int, fraction: int, offset: int, zulu: bool
) -> None:
    text = f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S")
    if digits:
        text += "." + str(fraction).zfill(9)[:digits]
    if zulu:
        text += "Z"
    else:
        sign = "+" if offset >= 0 else "-"
        text += f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    data = {"id": "t", "occurred_at": text}
    general = _decode_mod.event_from_json({**data, "occurredAt": data.pop("occurred_at")})
    assert _decode_mod.event_from_json({"id": "t", "occurred_at": text}).occurred_at == (
        general.occurred_at
    )


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.text(max_size=5)
        | st.integers(min_value=-(2**60), max_value=2**60)
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=12,
    )
)
def test_struct_to_dict_matches_message_to_dict(value: Any) -> None:
    struct = Struct()
    struct.update({"v": value})
    expected = {k: _decode_mod._plain(v) for k, v in json_format.MessageToDict(struct).items()}
    assert struct_to_dict(struct) == expected


def test_struct_to_dict_refuses_non_finite_numbers_like_message_to_dict() -> None:
    struct = Struct()
    struct.update({"v": math.inf})
    with pytest.raises(ValueError, match=r"(?i)inf"):
        struct_to_dict(struct)
    with pytest.raises(ValueError, match=r"(?i)inf"):
        json_format.MessageToDict(struct)


@pytest.mark.parametrize(
    ("fmt", "value"),
    [
        ("json", b'{"id": "x", "after": {"id": 1, "price": NaN}}'),
        ("json", b'{"id": "x", "after": {"id": 1, "price": -Infinity}}'),
        ("debezium", b'{"op": "c", "after": {"id": 1, "price": Infinity}, "source": {}}'),
        (
            "cloudevents",
            b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t", '
            b'"data": {"price": NaN}}',
        ),
    ],
)
def test_non_finite_numbers_are_decode_errors(fmt: str, value: bytes) -> None:
    # Not JSON; such a row could never be routed, so it must go to the dead letter
    # instead of being retried forever (stalling its partition).
    with pytest.raises(DecodeError, match="not a JSON number"):
        decode(fmt, value)


def test_epoch_offsets_cross_the_day() -> None:
    got = _decode_mod.event_from_json({"id": "x", "occurred_at": "1970-01-01T00:30:00+01:00"})
    assert got.occurred_at.ToDatetime() == datetime(1970, 1, 1) - timedelta(minutes=30)
