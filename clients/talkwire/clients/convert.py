"""Conversions between Python values and ``google.protobuf.Struct`` / ``Value``.

Public helpers (the server may reuse them). Mapping rules, Python -> protobuf:

* ``None`` -> null; ``bool`` -> bool; ``int``/``float`` -> number (a double:
  an ``int`` beyond +/-2**53 cannot be represented exactly and raises
  ``ValueError`` -- pass it as a string); ``str`` -> string;
* ``Mapping`` -> struct (keys converted with ``str()``); ``list``/``tuple``/
  ``set``/``frozenset`` -> list;
* ``datetime``/``date``/``time`` -> ISO 8601 string; ``Decimal`` -> number
  (same 2**53 rule for integral values); ``UUID`` -> string; ``bytes`` ->
  base64 string; ``Enum`` -> its ``value``;
* NaN and infinities raise ``ValueError`` (JSON has no such numbers);
* anything else raises ``TypeError``.

Protobuf -> Python: struct -> ``dict``, list -> ``list``, null -> ``None``;
numbers come back as ``float`` except that integral numbers become ``int``
when ``integral_floats=True`` (the default), so ``{"order_id": 1001}``
round-trips unchanged.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import math
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from google.protobuf.struct_pb2 import NULL_VALUE, ListValue, Struct, Value

__all__ = ["from_struct", "from_value", "to_list_value", "to_struct", "to_value"]

_MAX_EXACT = 2**53


def _number(value: float, original: object) -> float:
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{original!r} is not a finite number")
    return value


def _int_number(value: int) -> float:
    if abs(value) > _MAX_EXACT:
        raise ValueError(f"integer {value} is not exactly representable as a double; pass a str")
    return float(value)


def to_value(obj: object) -> Value:
    """Convert a JSON-like Python value into a ``google.protobuf.Value``."""
    out = Value()
    _fill_value(out, obj)
    return out


def _fill_value(out: Value, obj: object) -> None:
    if obj is None:
        out.null_value = NULL_VALUE
    elif isinstance(obj, bool):
        out.bool_value = obj
    elif isinstance(obj, enum.Enum):
        _fill_value(out, obj.value)
    elif isinstance(obj, int):
        out.number_value = _int_number(obj)
    elif isinstance(obj, float):
        out.number_value = _number(obj, obj)
    elif isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError(f"{obj!r} is not a finite number")
        if obj == obj.to_integral_value():
            out.number_value = _int_number(int(obj))
        else:
            out.number_value = float(obj)
    elif isinstance(obj, str):
        out.string_value = obj
    elif isinstance(obj, Mapping):
        _fill_struct(out.struct_value, obj)
    elif isinstance(obj, list | tuple | set | frozenset):
        _fill_list(out.list_value, obj)
    elif isinstance(obj, dt.datetime | dt.date | dt.time):
        out.string_value = obj.isoformat()
    elif isinstance(obj, uuid.UUID):
        out.string_value = str(obj)
    elif isinstance(obj, bytes | bytearray | memoryview):
        out.string_value = base64.b64encode(bytes(obj)).decode("ascii")
    elif isinstance(obj, Value):
        out.CopyFrom(obj)
    elif isinstance(obj, Struct):
        out.struct_value.CopyFrom(obj)
    elif isinstance(obj, ListValue):
        out.list_value.CopyFrom(obj)
    else:
        raise TypeError(f"cannot convert {type(obj).__name__} to google.protobuf.Value")


def _fill_struct(out: Struct, obj: Mapping[Any, Any]) -> None:
    for key, item in obj.items():
        _fill_value(out.fields[str(key)], item)


def _fill_list(out: ListValue, items: Iterable[Any]) -> None:
    for item in items:
        _fill_value(out.values.add(), item)


def to_struct(obj: Mapping[str, Any] | None) -> Struct:
    """Convert a mapping into a ``google.protobuf.Struct`` (``None`` -> empty struct)."""
    out = Struct()
    if obj is not None:
        if not isinstance(obj, Mapping):
            raise TypeError(f"expected a mapping, got {type(obj).__name__}")
        _fill_struct(out, obj)
    return out


def to_list_value(items: list[Any] | tuple[Any, ...]) -> ListValue:
    """Convert a sequence into a ``google.protobuf.ListValue``."""
    out = ListValue()
    _fill_list(out, items)
    return out


def from_value(value: Value, *, integral_floats: bool = True) -> Any:
    """Convert a ``google.protobuf.Value`` into a plain Python value."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        number = value.number_value
        if integral_floats and number.is_integer() and abs(number) <= _MAX_EXACT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return from_struct(value.struct_value, integral_floats=integral_floats)
    return [from_value(item, integral_floats=integral_floats) for item in value.list_value.values]


def from_struct(struct: Struct, *, integral_floats: bool = True) -> dict[str, Any]:
    """Convert a ``google.protobuf.Struct`` into a ``dict``."""
    return {
        key: from_value(item, integral_floats=integral_floats)
        for key, item in struct.fields.items()
    }
