"""The ``graphql`` connector: named GraphQL documents with variables.

Example::

    connectors:
      shop:
        type: graphql
        url: https://shop.example.com/graphql
        auth: {type: bearer, token: env:SHOP_TOKEN}
        operations:
          order:
            document: "query Order($id: ID!) { order(id: $id) { id status eta } }"
            variables: {id: "{order_id}"}
            params: {order_id: {type: string}}
            select: order          # relative to the response's "data"
            result: row
          cancel:
            document: "mutation Cancel($id: ID!) { cancelOrder(id: $id) { ok } }"
            variables: {id: "{order_id}"}
            params: {order_id: string}
            write: true

Connection settings are those of the ``rest`` connector (auth, timeout,
retries, breaker, SSRF guard; see :mod:`talkwire.connectors.httpbase`).
Queries are retried like idempotent requests; mutations (``write: true``) send
an ``Idempotency-Key`` header and are retried with it. A response carrying
``errors`` raises :class:`BackendError` with the messages, or
:class:`ResultNotFoundError` when an error has ``extensions.code`` NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from talkwire.connectors.base import CallContext, Operation
from talkwire.connectors.errors import (
    BackendError,
    ConnectorConfigError,
    RejectedInputError,
    ResultNotFoundError,
)
from talkwire.connectors.httpbase import HTTP_CONNECTION_KEYS, HttpConnectorBase
from talkwire.connectors.operations import build_operation, check_select, shape_result
from talkwire.connectors.spec import (
    COMMON_OPERATION_KEYS,
    check_keys,
    get_number,
    parse_operation,
    validate_params,
)
from talkwire.connectors.templates import TemplateError, render_value

__all__ = ["GraphQLConnector"]

_GQL_OP_KEYS = COMMON_OPERATION_KEYS | {
    "document",
    "variables",
    "operation_name",
    "select",
    "fields",
    "timeout",
}


@dataclass(frozen=True, slots=True)
class _GqlOp:
    op: Operation
    document: str
    variables: Mapping[str, Any]
    operation_name: str | None
    select: str | None
    fields: Mapping[str, str]
    timeout: float | None
    uses_user: bool


class GraphQLConnector(HttpConnectorBase):
    """Named GraphQL documents over HTTP POST."""

    type = "graphql"

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        where = f"connectors.{name}"
        check_keys(config, HTTP_CONNECTION_KEYS | {"url"}, where)
        super().__init__(name, config, url_key="url")
        self._ops: dict[str, _GqlOp] = {}
        self._add_operations(config, where)

    def _add(self, name: str, section: Mapping[str, Any], where: str) -> None:
        check_keys(section, _GQL_OP_KEYS, where)
        document = section.get("document")
        if not isinstance(document, str) or not document.strip():
            raise ConnectorConfigError(f"{where}.document", "a GraphQL document is required")
        is_mutation = document.lstrip().startswith("mutation")
        base = parse_operation(name, section, where, write_default=is_mutation)
        variables = section.get("variables") or {}
        if not isinstance(variables, Mapping):
            raise ConnectorConfigError(f"{where}.variables", "must be a mapping")
        op = build_operation(base, {"variables": variables}, where)
        select_path, fields = check_select(section, where)
        op_name = section.get("operation_name")
        self._operations[name] = op
        self._ops[name] = _GqlOp(
            op=op,
            document=document,
            variables=dict(variables),
            operation_name=str(op_name) if op_name else None,
            select=select_path,
            fields=fields,
            timeout=get_number(section, "timeout", 0.0, where) or None,
            uses_user=bool(op.claims),
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
            variables = render_value(spec.variables, values)
        except TemplateError as exc:
            raise RejectedInputError(
                f"cannot build the variables: {exc}", connector=self.name, operation=operation
            ) from None
        payload: dict[str, Any] = {"query": spec.document, "variables": variables}
        if spec.operation_name:
            payload["operationName"] = spec.operation_name
        headers: dict[str, str] | None = None
        if spec.op.write:
            headers = {self.idempotency_header: self.idempotency_key(ctx)}
        resp = await self.request(
            operation,
            "POST",
            self.url,
            headers=headers,
            body=payload,
            has_body=True,
            idempotent=True,
            ctx=ctx,
            budget=spec.timeout,
        )
        if resp.status >= 500 or resp.status in (408, 429):
            self.map_status(resp, operation)
        try:
            data = resp.decode()
        except BackendError:
            if 200 <= resp.status < 300:
                raise
            data = None
        if isinstance(data, Mapping) and data.get("errors"):
            self._raise_errors(data["errors"], operation)
        self.map_status(resp, operation)
        if not isinstance(data, Mapping) or "data" not in data:
            raise BackendError(
                "GraphQL response without data", connector=self.name, operation=operation
            )
        return shape_result(data["data"], spec.select, spec.fields, spec.op, connector=self.name)

    def _raise_errors(self, errors: Any, operation: str) -> None:
        messages: list[str] = []
        not_found = False
        for err in errors if isinstance(errors, list) else [errors]:
            if isinstance(err, Mapping):
                messages.append(str(err.get("message", "error"))[:200])
                ext = err.get("extensions")
                if isinstance(ext, Mapping) and ext.get("code") in ("NOT_FOUND", "NOTFOUND"):
                    not_found = True
            else:
                messages.append(str(err)[:200])
        text = "; ".join(messages[:5]) or "GraphQL error"
        cls = ResultNotFoundError if not_found else BackendError
        raise cls(text, connector=self.name, operation=operation)
