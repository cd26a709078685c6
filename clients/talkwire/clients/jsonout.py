"""Messages as JSON for the CLI's ``--json`` output: the proto3 JSON mapping, numbers as numbers.

``json_format.MessageToDict`` writes 64-bit integers as strings (the canonical
proto3 mapping) and every number inside a ``Struct`` as a double (``1001.0``);
a ``seq`` of ``"7"`` or an ``order_id`` of ``1001.0`` is a trap for ``jq``
users, so :func:`message_dict` writes both as JSON integers (every proto3 JSON
parser accepts them). Field names are those of the ``.proto`` files.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["message_dict", "message_line"]

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_WELL_KNOWN = "google.protobuf."
_MAX_EXACT = 2**53
_DYNAMIC = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.lstrip("-").isdigit() else value


def _fix(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            value_field = message_type.fields_by_name["value"]
            data[field.name] = {k: _fix_value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            data[field.name] = [_fix_value(field, item) for item in value]
        else:
            data[field.name] = _fix_value(field, value)
    return data


def _integral(value: Any) -> Any:
    """Integral doubles (how a Struct carries 1001) as ints, all the way down."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _fix_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64:
        return _number(value)
    message_type = field.message_type
    if message_type is not None and message_type.full_name in _DYNAMIC:
        return _integral(value)
    if (
        message_type is not None
        and isinstance(value, dict)
        and not message_type.full_name.startswith(_WELL_KNOWN)
    ):
        return _fix(message_type, value)
    return value


def message_dict(message: Message) -> dict[str, Any]:
    """``message`` as a JSON-ready dict: proto field names, 64-bit integers as numbers."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return _fix(message.DESCRIPTOR, data)


def message_line(message: Message) -> str:
    """``message`` as one line of JSON (keys sorted)."""
    return json.dumps(message_dict(message), sort_keys=True, separators=(",", ":"))
