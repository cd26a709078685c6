"""Debezium MongoDB connector envelopes, brought to the relational Debezium shape.

The MongoDB connector differs from the SQL ones in three ways this module
undoes, so key templates, filters and update texts work unchanged:

- ``after`` / ``before`` are JSON *strings* of MongoDB Extended JSON. They are
  parsed and the extended types simplified: ``{"$oid": x}`` and ``{"$uuid": x}``
  become the string ``x``, ``$numberInt`` / ``$numberLong`` an integer,
  ``$numberDouble`` a float, ``$numberDecimal`` its exact decimal string and
  ``$date`` an RFC 3339 UTC string. Other ``$`` types stay as their objects.
- An update without the full document (the default ``capture.mode``) carries
  only ``updateDescription`` (``updatedFields`` as a JSON string or an object,
  ``removedFields``), or, from the 1.x oplog connector, a ``patch`` with
  ``$set`` / ``$unset``. ``after`` then holds the updated fields plus the
  document's ``_id`` (a partial document); ``before`` stays empty.
- A delete carries no document unless pre-images are on; ``before`` is then
  ``{"_id": ...}`` (so a topic's ``fields`` filter, which looks for the field
  in ``before``, lets such a delete through only when it lists ``_id``).

The document id comes from the record key (``{"id": "<Extended JSON>"}``,
with or without the ``schema`` / ``payload`` wrapper), else from the
document, else from the 1.x ``filter``. So ``order:{row._id}`` derives the
same key for a create, an update and a delete. Updated and removed field names
are kept in the ``debezium.updated_fields`` / ``debezium.removed_fields``
attributes (comma separated).

Shape errors raise ``ValueError`` with a reason; the decoder turns it into a
``DecodeError`` (a dead letter).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["POSITION", "is_mongo_envelope", "normalise", "simplify"]

# Source fields that together name one change in the oplog / change stream.
POSITION: Final = (
    "connector",
    "name",
    "rs",
    "db",
    "collection",
    "ts_ms",
    "ord",
    "txnNumber",
    "lsid",
)

_MISSING: Final = object()


def is_mongo_envelope(doc: Mapping[str, Any], source: Mapping[str, Any]) -> bool:
    """Whether ``doc`` comes from the MongoDB connector (rather than a SQL one)."""
    if source.get("connector") == "mongodb" or "collection" in source:
        return True
    if "updateDescription" in doc or "patch" in doc:
        return True
    return isinstance(doc.get("after"), str) or isinstance(doc.get("before"), str)


def normalise(doc: Mapping[str, Any], key: bytes | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The envelope with ``before`` / ``after`` as plain objects, and extra attributes."""
    op = doc.get("op")
    before = _document(doc.get("before"), "before")
    after = _document(doc.get("after"), "after")
    doc_id = _document_id(key, before, after, doc.get("filter"))
    attributes: dict[str, str] = {}
    updated, removed = _changes(doc)
    if updated is not None:
        attributes["debezium.updated_fields"] = ",".join(updated)
    if removed:
        attributes["debezium.removed_fields"] = ",".join(removed)
    if op == "u" and after is None:
        if updated is None:
            raise ValueError("an update without 'after', 'updateDescription' or 'patch'")
        after = dict(updated)
        if doc_id is not _MISSING:
            after.setdefault("_id", doc_id)
    if op == "d" and before is None:
        if doc_id is _MISSING:
            raise ValueError("a delete without 'before' and without an id in the record key")
        before = {"_id": doc_id}
    out = dict(doc)
    out["before"], out["after"] = before, after
    return out, attributes


def _parse(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid (Extended) JSON: {exc}") from None


def _document(value: Any, what: str) -> dict[str, Any] | None:
    parsed = _parse(value, what)
    if parsed is None:
        return None
    if not isinstance(parsed, Mapping):
        raise ValueError(f"{what} must be a document, got {type(parsed).__name__}")
    return _as_dict(parsed)


def _document_id(
    key: bytes | None,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    filter_: Any,
) -> Any:
    if key:
        try:
            parsed = json.loads(key)
        except (UnicodeDecodeError, json.JSONDecodeError):
            parsed = None
        if isinstance(parsed, Mapping) and set(parsed) <= {"schema", "payload"}:
            parsed = parsed.get("payload")
        if isinstance(parsed, Mapping) and parsed.get("id") is not None:
            raw = parsed["id"]
            try:
                return simplify(_parse(raw, "the record key id"))
            except ValueError:
                return raw  # a plain string id that is not JSON
    for document in (after, before):
        if document and "_id" in document:
            return document["_id"]
    found = _parse(filter_, "filter") if filter_ is not None else None
    if isinstance(found, Mapping) and "_id" in found:
        return simplify(found["_id"])
    return _MISSING


def _changes(doc: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """Updated fields (``None`` when the record has no description) and removed fields."""
    description = doc.get("updateDescription")
    if isinstance(description, Mapping):
        fields = _parse(description.get("updatedFields"), "updateDescription.updatedFields")
        if fields is not None and not isinstance(fields, Mapping):
            raise ValueError("updateDescription.updatedFields must be a document")
        removed = description.get("removedFields") or []
        if not isinstance(removed, list):
            raise ValueError("updateDescription.removedFields must be a list")
        return _as_dict(fields or {}), [str(f) for f in removed]
    if description is not None:
        raise ValueError("updateDescription must be an object")
    patch = _parse(doc.get("patch"), "patch")
    if isinstance(patch, Mapping):
        sets = patch.get("$set") or {}
        unsets = patch.get("$unset") or {}
        if not isinstance(sets, Mapping) or not isinstance(unsets, Mapping):
            raise ValueError("patch: $set and $unset must be documents")
        if "$set" in patch or "$unset" in patch:
            return _as_dict(sets), [str(f) for f in unsets]
        return _as_dict({k: v for k, v in patch.items() if not str(k).startswith("$")}), []
    return None, []


def _as_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    """A document's fields simplified (the document itself is never one extended value)."""
    return {str(k): simplify(v) for k, v in value.items()}


def simplify(value: Any) -> Any:
    """MongoDB Extended JSON (canonical or relaxed) as plain JSON values."""
    if isinstance(value, list):
        return [simplify(v) for v in value]
    if not isinstance(value, Mapping):
        return value
    if len(value) == 1:
        ((name, inner),) = value.items()
        plain = _extended(str(name), inner)
        if plain is not _MISSING:
            return plain
    return {str(k): simplify(v) for k, v in value.items()}


def _extended(name: str, inner: Any) -> Any:
    if name in ("$oid", "$uuid", "$symbol", "$numberDecimal") and isinstance(inner, str):
        return inner
    if name in ("$numberInt", "$numberLong") and isinstance(inner, str | int):
        try:
            return int(inner)
        except ValueError:
            return _MISSING
    if name == "$numberDouble" and isinstance(inner, str):
        try:
            number = float(inner)
        except ValueError:
            return _MISSING
        return number if math.isfinite(number) else inner
    if name == "$date":
        if isinstance(inner, Mapping):
            inner = simplify(inner)
        if isinstance(inner, int | float) and not isinstance(inner, bool):
            try:
                moment = datetime.fromtimestamp(inner / 1000, tz=UTC)
            except (OverflowError, OSError, ValueError):
                return _MISSING
            return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if isinstance(inner, str):
            return inner
    return _MISSING
