"""The ``rest`` connector: named HTTP operations over one base URL.

Example::

    connectors:
      erp:
        type: rest
        base_url: https://erp.example.com/api
        auth: {type: oauth2, token_url: https://erp.example.com/oauth/token,
               client_id: talkwire, client_secret: env:ERP_SECRET}
        timeout: 5
        retries: {attempts: 3, base_delay: 0.1}
        breaker: {failures: 5, reset_after: 30}
        operations:
          get_balance:
            method: GET
            path: /customers/{customer_id}/balance
            params: {customer_id: {type: string}}
            result: object
            fields: {balance: balance, currency: currency}
            cache_ttl: 10
            cache_keys: ["balance:{customer_id}"]
          pay:
            method: POST
            path: /payments
            write: true
            params: {customer_id: string, amount: number}
            body: {customer_id: "{customer_id}", amount: "{amount}", by: "{user.sub}"}

Operation keys: ``method`` (GET), ``path`` (template; values are URL-quoted),
``query`` / ``headers`` / ``body`` (templates; ``"{x}"`` keeps x's type; query
entries rendering to null are dropped), ``select`` (path expression into the
response, e.g. ``data.items[0]``), ``fields`` (``{out: path}`` mapping applied
after ``select``, per item for lists), ``idempotent`` (override the method's
default), ``drop_nulls`` (headers and top-level body entries rendering to null
are left out instead of sent empty / as null), ``timeout`` and the common keys
(``params``, ``result``, ``write``, ``cache_ttl``, ``cache_keys``, ``invalidates``,
``description``). Write operations with POST or
PATCH send an ``Idempotency-Key`` header (``CallContext.idempotency_key`` or a
fresh UUID kept across the retries of one call) and are therefore retried.
See :mod:`talkwire.connectors.httpbase` for the connection settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from talkwire.connectors.base import CallContext, Operation
from talkwire.connectors.errors import (
    ConnectorConfigError,
    RejectedInputError,
)
from talkwire.connectors.httpbase import HTTP_CONNECTION_KEYS, HttpConnectorBase
from talkwire.connectors.operations import build_operation, check_select, shape_result
from talkwire.connectors.retry import IDEMPOTENT_METHODS
from talkwire.connectors.spec import (
    COMMON_OPERATION_KEYS,
    check_keys,
    get_bool,
    get_number,
    parse_operation,
    validate_params,
)
from talkwire.connectors.templates import (
    Template,
    TemplateError,
    compile_template,
    render_value,
    stringify,
)

__all__ = ["RestConnector"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REST_OP_KEYS = COMMON_OPERATION_KEYS | {
    "method",
    "path",
    "query",
    "headers",
    "body",
    "select",
    "fields",
    "idempotent",
    "timeout",
    "drop_nulls",
}


def _quote_segment(value: Any) -> str:
    text = stringify(value)
    if text in ("", ".", ".."):
        raise RejectedInputError(f"path parameter value {text!r} is not allowed")
    return quote(text, safe="")


@dataclass(frozen=True, slots=True)
class _RestOp:
    op: Operation
    method: str
    path: Template
    query: Mapping[str, Any]
    headers: Mapping[str, Any]
    body: Any
    has_body: bool
    select: str | None
    fields: Mapping[str, str]
    idempotent: bool
    send_key: bool
    timeout: float | None
    uses_user: bool
    drop_nulls: bool = False


class RestConnector(HttpConnectorBase):
    """Named HTTP operations; see the module docstring for the configuration."""

    type = "rest"

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        where = f"connectors.{name}"
        check_keys(config, HTTP_CONNECTION_KEYS | {"base_url"}, where)
        super().__init__(name, config, url_key="base_url")
        self._ops: dict[str, _RestOp] = {}
        self._add_operations(config, where)

    def _add(self, name: str, section: Mapping[str, Any], where: str) -> None:
        check_keys(section, _REST_OP_KEYS, where)
        method = str(section.get("method", "GET")).upper()
        if method not in _METHODS:
            raise ConnectorConfigError(f"{where}.method", f"one of {', '.join(sorted(_METHODS))}")
        write_default = method in ("POST", "PUT", "PATCH", "DELETE")
        base = parse_operation(name, section, where, write_default=write_default)
        path = section.get("path", "")
        if not isinstance(path, str) or (path and not path.startswith("/")) or "://" in path:
            raise ConnectorConfigError(f"{where}.path", "must be a path starting with '/'")
        if "?" in path or "#" in path:
            raise ConnectorConfigError(f"{where}.path", "put query parameters under 'query'")
        query = section.get("query") or {}
        headers = section.get("headers") or {}
        if not isinstance(query, Mapping):
            raise ConnectorConfigError(f"{where}.query", "must be a mapping")
        if not isinstance(headers, Mapping):
            raise ConnectorConfigError(f"{where}.headers", "must be a mapping")
        has_body = "body" in section
        body = section.get("body")
        op = build_operation(
            base, {"path": path, "query": query, "headers": headers, "body": body}, where
        )
        select_path, fields = check_select(section, where)
        idempotent = section.get("idempotent")
        if idempotent is not None and not isinstance(idempotent, bool):
            raise ConnectorConfigError(f"{where}.idempotent", "must be true or false")
        send_key = base.write and method in ("POST", "PATCH")
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS or send_key
        timeout = get_number(section, "timeout", 0.0, where) or None
        self._operations[name] = op
        self._ops[name] = _RestOp(
            op=op,
            method=method,
            path=compile_template(path),
            query=dict(query),
            headers=dict(headers),
            body=body,
            has_body=has_body,
            select=select_path,
            fields=fields,
            idempotent=idempotent,
            send_key=send_key,
            timeout=timeout,
            uses_user=bool(op.claims),
            drop_nulls=get_bool(section, "drop_nulls", False, where),
        )

    async def invoke(
        self, operation: str, params: Mapping[str, Any], ctx: CallContext | None = None
    ) -> Any:
        self._operation(operation)
        spec = self._ops[operation]
        values = validate_params(spec.op, params)
        if spec.uses_user:
            values = self.template_values(values, ctx)
        try:
            url = self.url + spec.path.render(values, text=_quote_segment)
            query: dict[str, Any] | None = None
            if spec.query:
                query = {}
                for k, t in spec.query.items():
                    v = compile_template(t).render_value(values) if isinstance(t, str) else t
                    if v is not None:
                        query[k] = v
            headers: dict[str, str] | None = None
            if spec.headers or spec.send_key or (ctx is not None and ctx.idempotency_key):
                headers = {}
                for k, t in spec.headers.items():
                    raw = compile_template(t).render_value(values)
                    if raw is None and spec.drop_nulls:
                        continue
                    v = stringify(raw)
                    if "\r" in v or "\n" in v:
                        raise RejectedInputError(f"header {k} value contains a line break")
                    headers[k] = v
                if spec.send_key or (spec.op.write and ctx is not None and ctx.idempotency_key):
                    headers[self.idempotency_header] = self.idempotency_key(ctx)
            body = render_value(spec.body, values) if spec.has_body else None
            if spec.drop_nulls and isinstance(body, dict):
                body = {k: v for k, v in body.items() if v is not None}
        except TemplateError as exc:
            raise RejectedInputError(
                f"cannot build the request: {exc}", connector=self.name, operation=operation
            ) from None
        except RejectedInputError as exc:
            exc.connector, exc.operation = self.name, operation
            raise
        resp = await self.request(
            operation,
            spec.method,
            url,
            query=query,
            headers=headers,
            body=body,
            has_body=spec.has_body,
            idempotent=spec.idempotent,
            ctx=ctx,
            budget=spec.timeout,
        )
        self.map_status(resp, operation)
        return shape_result(resp.decode(), spec.select, spec.fields, spec.op, connector=self.name)
