"""Parsing of the configuration shared by every built-in connector.

Operation sections look like::

    order_status:
      description: Status of one order of the caller
      params:
        order_id: {type: integer, description: The order number}
        customer_id: {type: string}
        verbose: {type: boolean, required: false, default: false}
      result: row          # rows | row | object | value
      write: false
      cache_ttl: 30        # seconds, 0 = no caching (writes are never cached)
      cache_keys: ["order:{order_id}"]

Parameters may also be given as a list of names (all required strings).
Values of parameters are checked by :func:`validate_params`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, cast, get_args

from talkwire.connectors.base import Operation, Parameter, ParameterType
from talkwire.connectors.errors import ConnectorConfigError, RejectedInputError
from talkwire.connectors.sections import Section, locate, secret_value
from talkwire.connectors.templates import TemplateError, template_fields

__all__ = [
    "COMMON_OPERATION_KEYS",
    "check_keys",
    "check_template_fields",
    "claims_used",
    "coerce",
    "get_bool",
    "get_number",
    "parameters_schema",
    "parse_invalidates",
    "parse_operation",
    "parse_parameters",
    "reader",
    "secret",
    "validate_params",
]

log = logging.getLogger(__name__)

PARAMETER_TYPES: tuple[str, ...] = get_args(ParameterType)
RESULTS = ("rows", "row", "object", "value")
COMMON_OPERATION_KEYS = frozenset(
    {
        "description",
        "params",
        "parameters",
        "result",
        "write",
        "cache_ttl",
        "cache_keys",
        "invalidates",
    }
)
_PARAM_KEYS = frozenset({"type", "required", "default", "description"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"\s*[+-]?\d{1,30}\s*\Z")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _connector_error(key: str, message: str, location: str) -> ConnectorConfigError:
    return ConnectorConfigError(key, message, location=location)


def reader(section: Any, where: str, *, known: Iterable[str] | None = None) -> Section:
    """The one section reader (:mod:`talkwire.connectors.sections`) for connector config:
    its errors are :class:`ConnectorConfigError`."""
    return Section(section, where, known=known, error=_connector_error)


def check_keys(section: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse unknown keys (typos) in a config section."""
    reader(section, where, known=allowed)


def get_bool(section: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    return reader(section, where).flag(key, default)


def get_number(
    section: Mapping[str, Any],
    key: str,
    default: float,
    where: str,
    *,
    minimum: float = 0.0,
    integer: bool = False,
) -> float:
    sec = reader(section, where)
    value = sec.number(key, default, minimum=minimum)
    if integer and not value.is_integer():
        raise sec.error(key, f"expected an integer, got {sec.get(key)!r}")
    return value


def secret(section: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    """A secret by the one rule: inline, ``env:NAME`` or ``file:PATH`` under ``key``.

    The old spellings ``<key>_env: NAME`` and ``<key>_file: PATH`` still work
    (read as ``env:NAME`` / ``file:PATH``) and log a deprecation warning.
    """
    used, value = key, section.get(key)
    for suffix, prefix in (("_env", "env:"), ("_file", "file:")):
        old = section.get(f"{key}{suffix}")
        if value is None and old:
            used, value = f"{key}{suffix}", f"{prefix}{old}"
            log.warning("%s.%s is deprecated: write %s: %s%s", where, used, key, prefix, old)
    if value is None or value == "":
        if not required:
            return ""
        message = "required (a value, env:NAME or file:PATH)"
        raise ConnectorConfigError(f"{where}.{key}", message, location=locate(section, key))
    try:
        return secret_value(value)
    except ValueError as exc:
        at = locate(section, used)
        raise ConnectorConfigError(f"{where}.{used}", str(exc), location=at) from None


def parse_parameters(raw: Any, where: str) -> tuple[Parameter, ...]:
    if raw is None:
        return ()
    if isinstance(raw, list | tuple):
        raw = {str(n): {} for n in raw}
    if not isinstance(raw, Mapping):
        raise ConnectorConfigError(where, "must be a mapping of parameter name -> declaration")
    out: list[Parameter] = []
    for name, decl in raw.items():
        pwhere = f"{where}.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConnectorConfigError(pwhere, "parameter names must be identifiers")
        if name == "user":
            raise ConnectorConfigError(pwhere, "'user' is reserved for caller claims")
        if isinstance(decl, str):
            decl = {"type": decl}
        decl = decl or {}
        check_keys(decl, _PARAM_KEYS, pwhere)
        ptype = decl.get("type", "string")
        if ptype not in PARAMETER_TYPES:
            raise ConnectorConfigError(
                f"{pwhere}.type", f"unknown type {ptype!r}; one of {', '.join(PARAMETER_TYPES)}"
            )
        has_default = "default" in decl
        required = decl.get("required", not has_default)
        if not isinstance(required, bool):
            raise ConnectorConfigError(f"{pwhere}.required", "must be true or false")
        default = decl.get("default")
        if default is not None:
            try:
                default = coerce(Parameter(name, ptype), default)
            except RejectedInputError as exc:
                raise ConnectorConfigError(f"{pwhere}.default", exc.message) from None
        out.append(
            Parameter(
                name=name,
                type=cast(ParameterType, ptype),
                required=required,
                description=str(decl.get("description", "")),
                default=default,
            )
        )
    return tuple(out)


def parse_operation(
    name: str, section: Mapping[str, Any], where: str, *, write_default: bool = False
) -> Operation:
    """Parse the common operation keys (connectors check their own extra keys)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConnectorConfigError(where, "operation names must be identifiers")
    if not isinstance(section, Mapping):
        raise ConnectorConfigError(where, "must be a mapping")
    params = parse_parameters(section.get("params", section.get("parameters")), f"{where}.params")
    write = get_bool(section, "write", write_default, where)
    result = section.get("result", "object" if write else "rows")
    if result not in RESULTS:
        raise ConnectorConfigError(f"{where}.result", f"one of {', '.join(RESULTS)}")
    cache_ttl = get_number(section, "cache_ttl", 0.0, where)
    if write and cache_ttl:
        raise ConnectorConfigError(f"{where}.cache_ttl", "write operations are never cached")
    keys = section.get("cache_keys", ())
    if isinstance(keys, str):
        keys = (keys,)
    if not isinstance(keys, list | tuple) or not all(isinstance(k, str) for k in keys):
        raise ConnectorConfigError(f"{where}.cache_keys", "must be a list of key templates")
    declared = {p.name for p in params}
    for i, key in enumerate(keys):
        check_template_fields(key, declared, f"{where}.cache_keys[{i}]")
    invalidates = parse_invalidates(section, declared, where, write=write)
    return Operation(
        name=name,
        parameters=params,
        description=str(section.get("description", "")),
        write=write,
        result=result,
        cache_ttl=cache_ttl,
        cache_keys=tuple(keys),
        invalidates=invalidates,
    )


def parse_invalidates(
    section: Mapping[str, Any], declared: Iterable[str], where: str, *, write: bool
) -> tuple[str, ...]:
    """``invalidates: ["customer:{customer_id}"]``: key templates a successful write drops."""
    raw = section.get("invalidates", ())
    if isinstance(raw, str):
        raw = (raw,)
    if not isinstance(raw, list | tuple) or not all(isinstance(k, str) and k for k in raw):
        raise ConnectorConfigError(f"{where}.invalidates", "must be a list of key templates")
    if raw and not write:
        raise ConnectorConfigError(f"{where}.invalidates", "only write operations invalidate")
    names = set(declared)
    for i, key in enumerate(raw):
        check_template_fields(key, names, f"{where}.invalidates[{i}]")
    return tuple(raw)


def check_template_fields(template: Any, declared: Iterable[str], where: str) -> set[str]:
    """Check a template only uses declared parameters or ``user.*``; returns the claims used."""
    try:
        fields = template_fields(template)
    except TemplateError as exc:
        raise ConnectorConfigError(where, str(exc)) from None
    declared_set = set(declared)
    claims: set[str] = set()
    for f in fields:
        head, _, rest = f.partition(".")
        if head == "user" and rest:
            claims.add(rest.split(".")[0])
        elif f not in declared_set:
            raise ConnectorConfigError(
                where, f"template references {{{f}}} which is not a declared parameter"
            )
    return claims


def claims_used(templates: Iterable[Any]) -> tuple[str, ...]:
    """Claim names referenced as ``{user.x}`` by any of ``templates``."""
    out: set[str] = set()
    for t in templates:
        for f in template_fields(t):
            head, _, rest = f.partition(".")
            if head == "user" and rest:
                out.add(rest.split(".")[0])
    return tuple(sorted(out))


def _reject(p: Parameter, why: str) -> RejectedInputError:
    return RejectedInputError(f"parameter '{p.name}' {why}")


def coerce(p: Parameter, value: Any) -> Any:
    """Check / convert one value to the parameter's declared type."""
    t = p.type
    if t == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _reject(p, f"must be a string, got {type(value).__name__}")
    if t == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT.match(value):
            return int(value)
        raise _reject(p, f"must be an integer, got {value!r:.40}")
    if t == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise _reject(p, "must be a finite number")
            return value
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(f):
                    return int(f) if _INT.match(value) else f
        raise _reject(p, f"must be a number, got {value!r:.40}")
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _reject(p, f"must be a boolean, got {value!r:.40}")
    if t == "object":
        if isinstance(value, Mapping):
            return dict(value)
        raise _reject(p, "must be an object")
    if t == "array":
        if isinstance(value, list | tuple):
            return list(value)
        raise _reject(p, "must be an array")
    raise _reject(p, f"has unsupported type {t}")  # pragma: no cover


def validate_params(operation: Operation, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the operation's declared parameters.

    Unknown names, missing required values and wrong types raise
    :class:`RejectedInputError` naming the parameter; integer-like strings are
    coerced (``"1001"`` -> ``1001``); absent optional parameters get their default.
    """
    declared = operation.parameters
    out: dict[str, Any] = {}
    for p in declared:
        value = params.get(p.name)
        if value is None:
            if p.required and p.default is None:
                raise RejectedInputError(
                    f"missing required parameter '{p.name}'", operation=operation.name
                )
            out[p.name] = p.default
            continue
        try:
            out[p.name] = coerce(p, value)
        except RejectedInputError as exc:
            exc.operation = operation.name
            raise
    if len(params) > len(out) or any(k not in out for k in params):
        names = {p.name for p in declared}
        extra = sorted(str(k) for k in params if k not in names)
        if extra:
            raise RejectedInputError(
                f"unknown parameter '{extra[0]}' (declared: {', '.join(sorted(names)) or 'none'})",
                operation=operation.name,
            )
    return out


_JSON_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "object": "object",
    "array": "array",
}


def parameters_schema(operation: Operation) -> dict[str, Any]:
    """The JSON schema of an operation's parameters (for LLM tools and admin listings)."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for p in operation.parameters:
        prop: dict[str, Any] = {"type": _JSON_TYPES[p.type]}
        if p.description:
            prop["description"] = p.description
        if p.default is not None:
            prop["default"] = p.default
        props[p.name] = prop
        if p.required and p.default is None:
            required.append(p.name)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema
