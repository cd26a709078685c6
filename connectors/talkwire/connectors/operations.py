"""Building an operation from its config section, shared by the built-in connectors.

Every built-in connector parses the common keys with
:func:`talkwire.connectors.spec.parse_operation`, then hands its own templates
(``path`` / ``query`` / ``body``, GraphQL ``variables``) and any claims it binds
otherwise (SQL ``:user_x``) to :func:`build_operation`, which checks that the
templates read only declared parameters or ``{user.*}`` and records the
claims the operation reads (part of its cache key). The response shaping of
the HTTP connectors (``select`` then ``fields`` then the declared ``result``)
lives here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from talkwire.connectors.base import Operation
from talkwire.connectors.errors import BackendError, ConnectorConfigError, ResultNotFoundError
from talkwire.connectors.paths import PathError, compile_path, map_fields, select, shape
from talkwire.connectors.spec import check_template_fields

__all__ = ["build_operation", "check_select", "shape_result"]


def build_operation(
    base: Operation,
    templates: Mapping[str, Any],
    where: str,
    *,
    claims: Iterable[str] = (),
) -> Operation:
    """``base`` with every caller claim its templates, cache keys and ``claims`` read.

    ``templates`` maps a config key (``path``, ``query``, ``variables``...) to its
    template or nested structure of templates; a field that is neither a
    declared parameter nor ``user.*`` is a :class:`ConnectorConfigError` naming
    ``where.<key>``.
    """
    declared = [p.name for p in base.parameters]
    read = set(claims)
    for key, template in templates.items():
        read |= check_template_fields(template, declared, f"{where}.{key}")
    for key in base.cache_keys:
        read |= check_template_fields(key, declared, f"{where}.cache_keys")
    for key in base.invalidates:
        read |= check_template_fields(key, declared, f"{where}.invalidates")
    return dataclasses.replace(base, claims=tuple(sorted(read)))


def check_select(section: Mapping[str, Any], where: str) -> tuple[str | None, dict[str, str]]:
    """The ``select`` path and ``fields`` mapping of an operation section, checked."""
    select_path = section.get("select")
    fields = section.get("fields") or {}
    try:
        if select_path is not None:
            if not isinstance(select_path, str):
                raise ConnectorConfigError(f"{where}.select", "must be a path expression")
            compile_path(select_path)
        if not isinstance(fields, Mapping):
            raise ConnectorConfigError(f"{where}.fields", "must map output names to paths")
        for out, path in fields.items():
            if not isinstance(path, str):
                raise ConnectorConfigError(f"{where}.fields.{out}", "must be a path expression")
            compile_path(path)
    except PathError as exc:
        raise ConnectorConfigError(where, str(exc)) from None
    return select_path, {str(k): v for k, v in fields.items()}


def shape_result(
    data: Any,
    select_path: str | None,
    fields: Mapping[str, str],
    op: Operation,
    *,
    connector: str,
) -> Any:
    """Apply ``select``, then ``fields``, then the declared result shape to a response."""
    if select_path:
        data = select(data, select_path)
    if fields:
        data = map_fields(data, fields)
    try:
        return shape(data, op.result)
    except LookupError:
        raise ResultNotFoundError(
            "the backend returned no result", connector=connector, operation=op.name
        ) from None
    except ValueError as exc:
        raise BackendError(
            f"unexpected response shape: {exc}", connector=connector, operation=op.name
        ) from None
