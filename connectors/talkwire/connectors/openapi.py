"""The ``openapi`` connector: operations imported from an OpenAPI 3.0 / 3.1 document.

Example::

    connectors:
      erp:
        type: openapi
        spec: ./erp-openapi.yaml          # or an https:// URL (fetched at start, SSRF-guarded)
        base_url: https://erp.example.com/api   # optional: overrides the spec's servers[0]
        security: {bearerAuth: {token_env: ERP_TOKEN}}   # a securitySchemes entry + secrets
        bind: {customer_id: "{user.customer_id}"}        # identity-bound parameters
        operations:                       # the operationIds to expose (nothing by default)
          getBalance: {cache_ttl: 10, cache_keys: ["balance:{customer_id}"]}
          createPayment: {invalidates: ["balance:{customer_id}"], fields: {balance: balance}}
        include: ["list*"]                # and/or glob patterns over operationIds
        exclude: ["*Internal"]
        timeout: 5                        # + every rest connection setting (retries, breaker...)

Each exposed operation keeps its operationId as name (characters that are not
allowed in identifiers become ``_``). Its path, query and header parameters and
the properties of a JSON request body become declared parameters with the types
of their schemas; ``enum``, ``minimum`` / ``maximum``, ``minLength`` /
``maxLength`` and ``pattern`` are checked per call (``INVALID_ARGUMENT``); an
``Idempotency-Key`` header parameter is left to the machinery (it sends the
call's key). A
body whose schema is not an object becomes one parameter ``body``. ``$ref`` s
inside the document are followed. Per-operation overrides: ``name``,
``description``, ``result`` (default: ``rows`` for an array response, else
``object``), ``select``, ``fields``, ``write``, ``idempotent``, ``timeout``,
``cache_ttl``, ``cache_keys``, ``invalidates``, ``bind``.

``bind`` maps a parameter to a template of the caller's claims: the parameter is
removed from the declared ones (so neither a user's words nor an LLM policy can
fill it, and it is not listed in tools) and the server fills it on each call.

``security`` names one of the document's ``securitySchemes`` and gives its
secrets: ``http`` bearer (``token``), ``http`` basic (``username``, ``password``),
``apiKey`` in a header or the query (``value``) and ``oauth2`` client
credentials (``client_id``, ``client_secret``, ``scope``; the flow's ``tokenUrl``
is used); each secret may be ``<key>_env`` / ``<key>_file``. An explicit
``auth:`` section (see :mod:`talkwire.connectors.auth`) is accepted instead.

Everything past the import is the ``rest`` connector: the generated operations
run through :class:`~talkwire.connectors.rest.RestConnector` (auth, retries only
for idempotent calls, breaker, total deadline, idempotency keys, SSRF guard).
The spec's server address is checked by the SSRF guard at start, so a
``servers`` entry on a private address is refused unless ``allow_private`` /
``allow_hosts`` allow it.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import httpx
import yaml

from talkwire.connectors.base import CallContext
from talkwire.connectors.errors import ConnectorConfigError, RejectedInputError
from talkwire.connectors.httpbase import HTTP_CONNECTION_KEYS
from talkwire.connectors.rest import RestConnector
from talkwire.connectors.spec import check_keys, check_template_fields, get_bool, get_number
from talkwire.connectors.ssrf import BlockedAddressError, GuardedBackend, guarded_transport

__all__ = [
    "OpenApiConnector",
    "OpenApiDocument",
    "SpecError",
    "constraint_violation",
    "describe_document",
    "load_document",
    "schema_type",
]

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_CONNECTOR_KEYS = (HTTP_CONNECTION_KEYS - {"operations"}) | {
    "spec",
    "base_url",
    "server",
    "operations",
    "include",
    "exclude",
    "security",
    "bind",
}
_OVERRIDE_KEYS = frozenset(
    {
        "name",
        "description",
        "result",
        "select",
        "fields",
        "write",
        "idempotent",
        "timeout",
        "cache_ttl",
        "cache_keys",
        "invalidates",
        "bind",
    }
)
_CONSTRAINTS = ("enum", "minimum", "maximum", "minLength", "maxLength", "pattern")
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")
_SPEC_LIMIT = 5 * 1024 * 1024


class SpecError(ValueError):
    """The document cannot be used: not OpenAPI 3, a broken ``$ref``, an unmappable schema."""


def _ident(name: str) -> str:
    out = _NOT_IDENT.sub("_", name).strip("_") or "_"
    return f"_{out}" if out[0].isdigit() else out


# -- the document ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpecParameter:
    """One declared parameter of an imported operation."""

    name: str  # our (identifier) name
    wire: str  # its name on the wire (path / query / header name, body property)
    location: str  # path | query | header | body | whole-body
    type: str
    required: bool
    description: str
    default: Any
    constraints: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SpecOperation:
    """An operation of the document, mapped onto our types (``problem`` when it cannot be)."""

    operation_id: str
    method: str
    path: str
    summary: str
    parameters: tuple[SpecParameter, ...] = ()
    result: str = "object"
    security: tuple[str, ...] = ()
    problem: str = ""


@dataclass(slots=True)
class OpenApiDocument:
    """A parsed OpenAPI 3.0 / 3.1 document with its ``$ref`` s resolvable."""

    raw: Mapping[str, Any]
    source: str
    operations: dict[str, SpecOperation] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.raw.get("openapi", ""))

    def servers(self) -> list[str]:
        out: list[str] = []
        for server in self.raw.get("servers") or []:
            if isinstance(server, Mapping) and isinstance(server.get("url"), str):
                url = server["url"]
                for var, decl in (server.get("variables") or {}).items():
                    if isinstance(decl, Mapping) and "default" in decl:
                        url = url.replace("{" + str(var) + "}", str(decl["default"]))
                out.append(url)
        return out

    def security_schemes(self) -> dict[str, Mapping[str, Any]]:
        schemes = (self.raw.get("components") or {}).get("securitySchemes") or {}
        return {str(k): self.resolve(v) for k, v in schemes.items()}

    def resolve(self, node: Any, _seen: frozenset[str] = frozenset()) -> Any:
        """Follow a local ``$ref`` (``#/components/...``) until a non-reference node."""
        while isinstance(node, Mapping) and "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/"):
                raise SpecError(f"only local $ref are supported, got {ref!r}")
            if ref in _seen:
                raise SpecError(f"circular $ref {ref}")
            _seen = _seen | {ref}
            target: Any = self.raw
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, Mapping) or part not in target:
                    raise SpecError(f"$ref {ref} points at nothing")
                target = target[part]
            node = target
        return node


def load_document(text: str | bytes, source: str) -> OpenApiDocument:
    """Parse a YAML or JSON OpenAPI 3.x document and map its operations."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{source} does not parse as YAML/JSON{where}") from None
    if not isinstance(raw, Mapping):
        raise SpecError(f"{source} is not an OpenAPI document (not a mapping)")
    version = str(raw.get("openapi", raw.get("swagger", "")))
    if not version.startswith("3."):
        raise SpecError(
            f"{source} is not an OpenAPI 3.0/3.1 document (openapi: {version or 'missing'})"
        )
    if not isinstance(raw.get("paths") or {}, Mapping):
        raise SpecError(f"{source}: 'paths' must be a mapping")
    doc = OpenApiDocument(raw, source)
    for path, item in (raw.get("paths") or {}).items():
        try:
            item = doc.resolve(item)
        except SpecError:
            continue
        if not isinstance(item, Mapping):
            continue
        for method in _METHODS:
            op = item.get(method)
            if isinstance(op, Mapping) and isinstance(op.get("operationId"), str):
                mapped = _map_operation(doc, str(path), method, item, op)
                doc.operations[mapped.operation_id] = mapped
    return doc


def _map_operation(
    doc: OpenApiDocument, path: str, method: str, item: Mapping[str, Any], op: Mapping[str, Any]
) -> SpecOperation:
    op_id = str(op["operationId"])
    summary = str(op.get("summary") or op.get("description") or "").strip()
    security = tuple(
        str(name)
        for req in (op.get("security", doc.raw.get("security")) or [])
        if isinstance(req, Mapping)
        for name in req
    )
    base = SpecOperation(op_id, method.upper(), path, summary, security=security)
    try:
        params = _parameters(doc, item, op)
        result = _result_shape(doc, op)
    except SpecError as exc:
        return SpecOperation(op_id, base.method, path, summary, security=security, problem=str(exc))
    return SpecOperation(op_id, base.method, path, summary, params, result, security)


def _parameters(
    doc: OpenApiDocument, item: Mapping[str, Any], op: Mapping[str, Any]
) -> tuple[SpecParameter, ...]:
    merged: dict[tuple[str, str], Mapping[str, Any]] = {}
    for raw in [*(item.get("parameters") or []), *(op.get("parameters") or [])]:
        p = doc.resolve(raw)
        if not isinstance(p, Mapping) or "name" not in p or "in" not in p:
            raise SpecError("a parameter without name/in")
        merged[(str(p["name"]), str(p["in"]))] = p
    out: list[SpecParameter] = []
    for (wire, location), p in merged.items():
        if location not in ("path", "query", "header"):
            raise SpecError(f"parameter '{wire}' in {location} is not supported")
        schema = doc.resolve(p.get("schema") or {"type": "string"})
        ptype, constraints = schema_type(doc, schema, f"parameter '{wire}'")
        if ptype in ("object", "array") and location != "query":
            raise SpecError(
                f"parameter '{wire}': {ptype} values in the {location} are not supported"
            )
        required = bool(p.get("required", location == "path"))
        out.append(
            SpecParameter(
                _ident(wire),
                wire,
                location,
                ptype,
                required,
                str(p.get("description", "")),
                schema.get("default"),
                constraints,
            )
        )
    out.extend(_body_parameters(doc, op))
    names = [p.name for p in out]
    for name in names:
        if names.count(name) > 1:
            raise SpecError(f"two parameters map onto the name '{name}'")
        if name == "user":
            raise SpecError("a parameter named 'user' clashes with caller claims")
    return tuple(out)


def _json_media(content: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for media, body in content.items():
        kind = str(media).split(";")[0].strip().lower()
        if kind == "application/json" or kind.endswith("+json"):
            return body if isinstance(body, Mapping) else {}
    return None


def _body_parameters(doc: OpenApiDocument, op: Mapping[str, Any]) -> list[SpecParameter]:
    if "requestBody" not in op:
        return []
    body = doc.resolve(op["requestBody"])
    content = body.get("content") or {} if isinstance(body, Mapping) else {}
    media = _json_media(content)
    if media is None:
        kinds = ", ".join(str(k) for k in content) or "none"
        raise SpecError(f"request body media type {kinds} is not supported (JSON only)")
    schema = doc.resolve(media.get("schema") or {})
    body_required = bool(body.get("required", False))
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if isinstance(props, Mapping) and props:
        required = set(schema.get("required") or [])
        out: list[SpecParameter] = []
        for wire, prop in props.items():
            prop = doc.resolve(prop)
            if isinstance(prop, Mapping) and (prop.get("readOnly") is True):
                continue
            ptype, constraints = schema_type(doc, prop, f"body property '{wire}'")
            out.append(
                SpecParameter(
                    _ident(str(wire)),
                    str(wire),
                    "body",
                    ptype,
                    body_required and wire in required,
                    str(prop.get("description", "")) if isinstance(prop, Mapping) else "",
                    prop.get("default") if isinstance(prop, Mapping) else None,
                    constraints,
                )
            )
        return out
    ptype, constraints = schema_type(doc, schema, "request body")
    return [SpecParameter("body", "", "whole-body", ptype, body_required, "", None, constraints)]


def schema_type(doc: OpenApiDocument, schema: Any, what: str) -> tuple[str, dict[str, Any]]:
    """Our parameter type and the checked constraints of a JSON schema (``SpecError`` if none).

    Shared with the ``mcp`` connector (tool input schemas are JSON Schema too).
    """
    schema = doc.resolve(schema)
    if not isinstance(schema, Mapping):
        raise SpecError(f"{what}: schema is not an object")
    kind = schema.get("type")
    if isinstance(kind, list):  # 3.1: ["string", "null"]
        kinds = [k for k in kind if k != "null"]
        if len(kinds) != 1:
            raise SpecError(f"{what}: cannot map a schema of several types {kind}")
        kind = kinds[0]
    if kind is None:
        for combinator in ("oneOf", "anyOf", "allOf"):
            if combinator in schema:
                variants = [doc.resolve(v) for v in schema[combinator] or []]
                types = {v.get("type") for v in variants if isinstance(v, Mapping)}
                types.discard("null")
                if len(types) != 1 or None in types:
                    raise SpecError(f"{what}: cannot map a {combinator} of different types")
                kind = types.pop()
                break
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema:
            kind = "array"
        elif isinstance(schema.get("enum"), list) and schema["enum"]:
            kind = "string" if all(isinstance(v, str) for v in schema["enum"]) else None
        if kind is None:
            raise SpecError(f"{what}: schema has no type we can map")
    if kind not in ("string", "integer", "number", "boolean", "object", "array"):
        raise SpecError(f"{what}: unsupported type {kind!r}")
    constraints = {k: schema[k] for k in _CONSTRAINTS if k in schema}
    if "pattern" in constraints:
        try:
            re.compile(str(constraints["pattern"]))
        except re.error:
            raise SpecError(f"{what}: invalid pattern") from None
    return str(kind), constraints


def _result_shape(doc: OpenApiDocument, op: Mapping[str, Any]) -> str:
    responses = op.get("responses") or {}
    for code in sorted(str(c) for c in responses):
        if not (code.startswith("2")):
            continue
        resp = doc.resolve(
            responses.get(code, responses.get(int(code) if code.isdigit() else code))
        )
        media = (
            _json_media((resp or {}).get("content") or {}) if isinstance(resp, Mapping) else None
        )
        if media is None:
            return "object" if code != "204" else "value"
        schema = doc.resolve(media.get("schema") or {})
        kind = schema.get("type") if isinstance(schema, Mapping) else None
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        if kind == "array":
            return "rows"
        if kind in ("string", "integer", "number", "boolean"):
            return "value"
        return "object"
    return "object"


def describe_document(doc: OpenApiDocument) -> list[dict[str, Any]]:
    """What a document offers (``talkwire connectors inspect --openapi``)."""
    return [
        {
            "operation_id": op.operation_id,
            "method": op.method,
            "path": op.path,
            "summary": op.summary,
            "result": op.result,
            "security": list(op.security),
            "parameters": [
                {
                    "name": p.name,
                    "in": p.location,
                    "type": p.type,
                    "required": p.required,
                }
                for p in op.parameters
            ],
            "problem": op.problem,
        }
        for op in doc.operations.values()
    ]


# -- the connector -------------------------------------------------------------------


class OpenApiConnector(RestConnector):
    """``rest`` operations generated from an OpenAPI document; see the module docstring."""

    type = "openapi"

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        where = f"connectors.{name}"
        check_keys(config, _CONNECTOR_KEYS, where)
        self.name = name
        self._config = config
        self._constraints: dict[str, dict[str, tuple[str, Mapping[str, Any]]]] = {}
        self._built = False
        spec = config.get("spec")
        if not isinstance(spec, str) or not spec:
            raise ConnectorConfigError(f"{where}.spec", "a file path or http(s) URL is required")
        self.spec_source = spec
        if not spec.startswith(("http://", "https://")):
            try:
                text = Path(spec).read_bytes()
            except OSError as exc:
                raise ConnectorConfigError(
                    f"{where}.spec", f"cannot read {spec}: {exc.strerror}"
                ) from None
            self._build(self._parse(text, where), where)

    # -- building -----------------------------------------------------------------

    def _parse(self, text: bytes, where: str) -> OpenApiDocument:
        try:
            return load_document(text, self.spec_source)
        except SpecError as exc:
            raise ConnectorConfigError(f"{where}.spec", str(exc)) from None

    def _build(self, doc: OpenApiDocument, where: str) -> None:
        config = self._config
        selected = self._select(doc, where)
        rest_ops: dict[str, Any] = {}
        conn_bind = self._binds(config.get("bind"), f"{where}.bind")
        for op_id, overrides in selected.items():
            op = doc.operations[op_id]
            owhere = f"{where}.operations.{op_id}"
            if op.problem:
                raise ConnectorConfigError(owhere, f"cannot import: {op.problem}")
            check_keys(overrides, _OVERRIDE_KEYS, owhere)
            op_name = str(overrides.get("name") or _ident(op_id))
            binds = {**conn_bind, **self._binds(overrides.get("bind"), f"{owhere}.bind")}
            for bound in self._binds(overrides.get("bind"), f"{owhere}.bind"):
                if bound not in {p.name for p in op.parameters}:
                    raise ConnectorConfigError(
                        f"{owhere}.bind.{bound}", "the operation has no such parameter"
                    )
            idem = str(config.get("idempotency_header", "Idempotency-Key"))
            rest_ops[op_name] = self._rest_section(op, overrides, binds, idem)
            declared = rest_ops[op_name]["params"]
            self._constraints[op_name] = {
                p.name: (p.type, p.constraints)
                for p in op.parameters
                if p.constraints and p.name in declared
            }
        section = {k: v for k, v in config.items() if k in HTTP_CONNECTION_KEYS}
        section["type"] = "rest"
        section["base_url"] = self._base_url(doc, where)
        section["operations"] = rest_ops
        auth = self._auth(doc, where)
        if auth is not None:
            section["auth"] = auth
        if not rest_ops:
            raise ConnectorConfigError(
                f"{where}.operations", "no operation selected (list operationIds or include)"
            )
        super().__init__(self.name, section)
        self._built = True

    def _select(self, doc: OpenApiDocument, where: str) -> dict[str, Mapping[str, Any]]:
        raw = self._config.get("operations") or {}
        if isinstance(raw, list):
            raw = {str(k): {} for k in raw}
        if not isinstance(raw, Mapping):
            raise ConnectorConfigError(
                f"{where}.operations",
                "a list of operationIds or a mapping operationId -> overrides",
            )
        chosen: dict[str, Mapping[str, Any]] = {}
        for op_id, overrides in raw.items():
            if op_id not in doc.operations:
                have = ", ".join(sorted(doc.operations)) or "none"
                raise ConnectorConfigError(
                    f"{where}.operations.{op_id}",
                    f"operationId not in {self.spec_source} (has: {have})",
                )
            chosen[str(op_id)] = overrides or {}
        patterns = []
        for key in ("include", "exclude"):
            value = self._config.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConnectorConfigError(f"{where}.{key}", "must be a list of glob patterns")
            patterns.append(value)
        include, exclude = patterns
        for op_id, op in doc.operations.items():
            if op_id in chosen or not any(fnmatch.fnmatchcase(op_id, p) for p in include):
                continue
            if op.problem:
                continue  # patterns skip what cannot be imported; inspect shows why
            chosen[op_id] = {}
        return {
            k: v for k, v in chosen.items() if not any(fnmatch.fnmatchcase(k, p) for p in exclude)
        }

    @staticmethod
    def _binds(raw: Any, where: str) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise ConnectorConfigError(where, "must map parameter names to claim templates")
        out: dict[str, str] = {}
        for name, template in raw.items():
            if not isinstance(template, str):
                raise ConnectorConfigError(f"{where}.{name}", "must be a template like {user.sub}")
            if not check_template_fields(template, (), f"{where}.{name}"):
                raise ConnectorConfigError(
                    f"{where}.{name}", "must use the caller's claims {user.x}"
                )
            out[str(name)] = template
        return out

    @staticmethod
    def _rest_section(
        op: SpecOperation,
        overrides: Mapping[str, Any],
        binds: Mapping[str, str],
        idempotency_header: str,
    ) -> dict[str, Any]:
        path = op.path
        query: dict[str, str] = {}
        headers: dict[str, str] = {}
        body: dict[str, str] = {}
        whole_body: str | None = None
        params: dict[str, Any] = {}
        for p in op.parameters:
            if p.location == "header" and p.wire.lower() == idempotency_header.lower():
                continue  # the rest machinery sends the call's idempotency key itself
            value = binds.get(p.name, "{" + p.name + "}")
            if p.name not in binds:
                decl: dict[str, Any] = {"type": p.type, "required": p.required}
                if p.description:
                    decl["description"] = p.description
                if p.default is not None and not p.required:
                    decl["default"] = p.default
                params[p.name] = decl
            if p.location == "path":
                path = path.replace("{" + p.wire + "}", value)
            elif p.location == "query":
                query[p.wire] = value
            elif p.location == "header":
                headers[p.wire] = value
            elif p.location == "body":
                body[p.wire] = value
            else:
                whole_body = value
        section: dict[str, Any] = {
            "method": op.method,
            "path": path,
            "params": params,
            "result": op.result,
            "description": op.summary,
            "drop_nulls": True,
        }
        if query:
            section["query"] = query
        if headers:
            section["headers"] = headers
        if whole_body is not None:
            section["body"] = whole_body
        elif body:
            section["body"] = body
        for key in _OVERRIDE_KEYS - {"name", "bind"}:
            if key in overrides:
                section[key] = overrides[key]
        return section

    def _base_url(self, doc: OpenApiDocument, where: str) -> str:
        base = self._config.get("base_url")
        if base is not None:
            if not isinstance(base, str):
                raise ConnectorConfigError(f"{where}.base_url", "must be an http(s) URL")
            return base
        servers = doc.servers()
        index = int(get_number(self._config, "server", 0, where, integer=True))
        if index >= len(servers):
            raise ConnectorConfigError(
                f"{where}.base_url", f"the spec has {len(servers)} servers entries; give base_url"
            )
        url = servers[index]
        if not url.startswith(("http://", "https://")):
            if not self.spec_source.startswith(("http://", "https://")):
                raise ConnectorConfigError(
                    f"{where}.base_url", f"servers[{index}] is relative ({url!r}); give base_url"
                )
            url = urljoin(self.spec_source, url)
        return url

    def _auth(self, doc: OpenApiDocument, where: str) -> dict[str, Any] | None:
        security = self._config.get("security")
        if security is None:
            return None
        if "auth" in self._config:
            raise ConnectorConfigError(f"{where}.security", "give either security or auth")
        if not isinstance(security, Mapping) or len(security) != 1:
            raise ConnectorConfigError(
                f"{where}.security", "one securitySchemes name mapped to its secrets"
            )
        ((scheme_name, secrets),) = security.items()
        swhere = f"{where}.security.{scheme_name}"
        schemes = doc.security_schemes()
        scheme = schemes.get(str(scheme_name))
        if scheme is None:
            have = ", ".join(sorted(schemes)) or "none"
            raise ConnectorConfigError(swhere, f"not in the spec's securitySchemes (has: {have})")
        if not isinstance(secrets, Mapping):
            raise ConnectorConfigError(swhere, "must be a mapping of secrets")
        kind = scheme.get("type")
        http_scheme = str(scheme.get("scheme", "")).lower()
        if kind == "http" and http_scheme == "bearer":
            return {"type": "bearer", **secrets}
        if kind == "http" and http_scheme == "basic":
            return {"type": "basic", **secrets}
        if kind == "apiKey" and scheme.get("in") in ("header", "query"):
            return {"type": "api_key", "name": scheme.get("name"), "in": scheme["in"], **secrets}
        flows = scheme.get("flows") or {}
        if kind == "oauth2" and isinstance(flows.get("clientCredentials"), Mapping):
            token_url = str(flows["clientCredentials"].get("tokenUrl", ""))
            base = self._base_url(doc, where)
            return {"type": "oauth2", "token_url": urljoin(base + "/", token_url), **secrets}
        raise ConnectorConfigError(
            swhere,
            f"scheme type {kind!r} is not supported (http bearer/basic, apiKey in header/query, "
            "oauth2 clientCredentials)",
        )

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        where = f"connectors.{self.name}"
        if not self._built:
            self._build(self._parse(await self._fetch_spec(where), where), where)
        await self._check_server(where)
        return self

    async def aclose(self) -> None:
        if self._built:
            await super().aclose()

    @property
    def operations(self) -> Mapping[str, Any]:
        return self._operations if self._built else {}

    def _guard(self) -> tuple[bool, list[str]]:
        allow_private = get_bool(self._config, "allow_private", False, f"connectors.{self.name}")
        hosts = self._config.get("allow_hosts") or []
        return allow_private, [str(h) for h in hosts] if isinstance(hosts, list) else []

    async def _fetch_spec(self, where: str) -> bytes:
        allow_private, hosts = self._guard()
        transport = guarded_transport(allow_private=allow_private, allow_hosts=hosts)
        timeout = get_number(self._config, "timeout", 10.0, where)
        async with httpx.AsyncClient(
            transport=transport, timeout=timeout, trust_env=False, follow_redirects=False
        ) as client:
            try:
                resp = await client.get(self.spec_source)
            except BlockedAddressError as exc:
                raise ConnectorConfigError(f"{where}.spec", str(exc)) from None
            except httpx.HTTPError as exc:
                raise ConnectorConfigError(
                    f"{where}.spec", f"cannot fetch {self.spec_source} ({type(exc).__name__})"
                ) from None
        if resp.status_code != 200:
            raise ConnectorConfigError(
                f"{where}.spec", f"fetching {self.spec_source} answered {resp.status_code}"
            )
        if len(resp.content) > _SPEC_LIMIT:
            raise ConnectorConfigError(f"{where}.spec", "document larger than 5 MiB")
        return resp.content

    async def _check_server(self, where: str) -> None:
        """Refuse, at start, a base URL on an address the SSRF guard would refuse per call."""
        allow_private, hosts = self._guard()
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            await GuardedBackend(allow_private=allow_private, allow_hosts=hosts).resolve(host, port)
        except BlockedAddressError as exc:
            raise ConnectorConfigError(f"{where}.base_url", str(exc)) from None
        except Exception:  # noqa: BLE001 - unresolvable now: calls will say UNAVAILABLE
            return

    # -- calls --------------------------------------------------------------------------

    async def invoke(
        self, operation: str, params: Mapping[str, Any], ctx: CallContext | None = None
    ) -> Any:
        checks = self._constraints.get(operation)
        if checks:
            for name, (ptype, constraints) in checks.items():
                value = params.get(name)
                if value is not None:
                    problem = constraint_violation(ptype, value, constraints)
                    if problem:
                        raise RejectedInputError(
                            f"parameter '{name}' {problem}",
                            connector=self.name,
                            operation=operation,
                        )
        return await super().invoke(operation, params, ctx)


def constraint_violation(ptype: str, value: Any, c: Mapping[str, Any]) -> str:
    """Why ``value`` breaks the schema constraints ``c`` ("" when it does not)."""
    enum = c.get("enum")
    if isinstance(enum, list) and value not in enum:
        return f"must be one of {', '.join(map(str, enum))}"
    if ptype in ("integer", "number") and isinstance(value, int | float):
        lo, hi = c.get("minimum"), c.get("maximum")
        if isinstance(lo, int | float) and value < lo:
            return f"must be >= {lo}"
        if isinstance(hi, int | float) and value > hi:
            return f"must be <= {hi}"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be finite"
    if ptype == "string" and isinstance(value, str):
        lo, hi = c.get("minLength"), c.get("maxLength")
        if isinstance(lo, int) and len(value) < lo:
            return f"must be at least {lo} characters"
        if isinstance(hi, int) and len(value) > hi:
            return f"must be at most {hi} characters"
        pattern = c.get("pattern")
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            return f"must match {pattern}"
    return ""
