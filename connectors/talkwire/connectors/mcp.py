"""The ``mcp`` connector: tools of a Model Context Protocol server as named operations.

Needs the official SDK (``pip install 'talkwire[mcp]'``). Example::

    connectors:
      hubspot:
        type: mcp
        url: https://mcp.example.com/mcp      # Streamable HTTP (SSRF-guarded) ...
        # command: [python, -m, acme_mcp]     # ... or a local server over stdio
        # env: {ACME_TOKEN: "..."}            # stdio only; cwd: /srv/acme
        auth: {type: bearer, token_env: HUBSPOT_TOKEN}   # HTTP only (see auth.py)
        headers: {X-Client: talkwire}
        bind: {customer_id: "{user.customer_id}"}        # identity-bound arguments
        tools:                                # the allow-list (nothing else is exposed)
          get_balance: {cache_ttl: 10, cache_keys: ["balance:{customer_id}"]}
          make_payment: {invalidates: ["balance:{customer_id}"], fields: {balance: balance}}
        timeout: 10                           # total deadline per call
        connect_timeout: 10
        retries: {attempts: 3}                # only for read-only / idempotent tools
        breaker: {failures: 5, reset_after: 30}
        allow_private: false                  # SSRF guard, as for rest
        allow_hosts: []

Each allow-listed tool becomes an operation with its input schema's properties
as declared parameters (types, ``required``, defaults; ``enum``, bounds, lengths
and ``pattern`` checked per call). A tool whose schema has no single type we can
map, or an allow-listed tool the server does not offer, is an error at start
naming it. Tools annotated ``readOnlyHint`` are reads, everything else a write
(confirmed by the LLM policy, never cached, retried only with
``idempotentHint``); ``write`` / ``idempotent`` override. Per-tool keys: ``name``,
``description``, ``result`` (default from the output schema), ``select``,
``fields``, ``write``, ``idempotent``, ``timeout``, ``bind``, ``cache_ttl``,
``cache_keys``, ``invalidates``.

``bind`` removes the parameter from the declared ones (not listed in tools, not
fillable from user words or an LLM) and fills it from the caller's claims.

Results: ``structuredContent`` when the server sends it (FastMCP's
``{"result": x}`` wrapping is undone), else the text content (parsed as JSON
when it is JSON); then ``select`` / ``fields`` / ``result`` like ``rest``. A tool
answering ``isError`` raises ``BackendError`` (``FAILED_PRECONDITION``) with its
text. A server that is down, or answers something that is not MCP, is
``UNAVAILABLE``; the connector reconnects on the next call (through the circuit
breaker, so a server that keeps failing is not dialled per call). One MCP session is
held per connector, owned by a task of the connector's TaskGroup.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import httpx
from mcp import ClientSession, McpError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent, Tool

from talkwire.connectors.auth import build_auth
from talkwire.connectors.base import CallContext, Operation
from talkwire.connectors.breaker import CircuitBreaker
from talkwire.connectors.errors import (
    BackendError,
    CircuitOpenError,
    ConnectorConfigError,
    ConnectorError,
    ConnectorTimeoutError,
    ConnectorUnavailableError,
    OperationNotFoundError,
    RejectedInputError,
    ResultNotFoundError,
)
from talkwire.connectors.openapi import (
    OpenApiDocument,
    SpecError,
    constraint_violation,
    schema_type,
)
from talkwire.connectors.operations import check_select
from talkwire.connectors.paths import map_fields, select, shape
from talkwire.connectors.retry import RetryPolicy
from talkwire.connectors.spec import (
    check_keys,
    check_template_fields,
    claims_used,
    get_bool,
    get_number,
    parse_operation,
    validate_params,
)
from talkwire.connectors.ssrf import BlockedAddressError, guarded_transport
from talkwire.connectors.templates import TemplateError, compile_template

__all__ = ["McpConnector"]

log = logging.getLogger(__name__)

_CONNECTOR_KEYS = frozenset(
    {
        "type",
        "description",
        "url",
        "command",
        "env",
        "cwd",
        "auth",
        "headers",
        "bind",
        "tools",
        "timeout",
        "connect_timeout",
        "retries",
        "breaker",
        "allow_private",
        "allow_hosts",
    }
)
_TOOL_KEYS = frozenset(
    {
        "name",
        "description",
        "result",
        "select",
        "fields",
        "write",
        "idempotent",
        "timeout",
        "bind",
        "cache_ttl",
        "cache_keys",
        "invalidates",
    }
)


_COMMON_PASSED = ("write", "cache_ttl", "cache_keys", "invalidates")


@dataclass(frozen=True, slots=True)
class _ToolOp:
    op: Operation
    tool: str
    wire: Mapping[str, str]  # our parameter name -> argument name
    binds: Mapping[str, str]  # argument name -> claim template
    constraints: Mapping[str, tuple[str, Mapping[str, Any]]]
    select: str | None
    fields: Mapping[str, str]
    idempotent: bool
    timeout: float | None
    unwrap: bool


class _Link:
    """One live MCP session (owned by a task that keeps its transport open).

    The SDK reports a transport failure (server gone, not MCP) as a message, not
    by failing the requests in flight; :meth:`fail` ends those at once by firing
    the timeout scope each call runs in.
    """

    __slots__ = ("calls", "failure", "session", "stop", "tools")

    def __init__(self) -> None:
        self.session: ClientSession | None = None
        self.tools: dict[str, Tool] = {}
        self.stop = asyncio.Event()
        self.failure: BaseException | None = None
        self.calls: set[asyncio.Timeout] = set()

    def fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self.stop.set()
        now = asyncio.get_running_loop().time()
        for scope in list(self.calls):
            with contextlib.suppress(RuntimeError):  # that call has just finished
                scope.reschedule(now)

    async def on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.fail(message)


def _transport_failure(exc: BaseException) -> bool:
    """True for what a broken link raises (the SDK wraps them in exception groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_transport_failure(e) for e in exc.exceptions)
    return isinstance(exc, httpx.HTTPError | OSError | EOFError) or type(exc).__module__.startswith(
        "anyio"
    )


class McpConnector:
    """MCP tools as operations; see the module docstring for the configuration."""

    type = "mcp"

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        where = f"connectors.{name}"
        self._where = where
        check_keys(config, _CONNECTOR_KEYS, where)
        url, command = config.get("url"), config.get("command")
        if (url is None) == (command is None):
            raise ConnectorConfigError(where, "give exactly one of url (HTTP) or command (stdio)")
        self.url: str | None = None
        self._stdio: StdioServerParameters | None = None
        if url is not None:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConnectorConfigError(f"{where}.url", "required http(s) URL")
            self.url = url
        else:
            self._stdio = self._stdio_params(config, where)
        self.timeout = get_number(config, "timeout", 10.0, where)
        self.connect_timeout = get_number(config, "connect_timeout", 10.0, where)
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ConnectorConfigError(f"{where}.timeout", "timeouts must be > 0")
        self.retry = RetryPolicy.from_config(config.get("retries"), f"{where}.retries")
        self.breaker = CircuitBreaker.from_config(
            config.get("breaker"), f"{where}.breaker", name=name
        )
        self.allow_private = get_bool(config, "allow_private", False, where)
        hosts = config.get("allow_hosts") or []
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise ConnectorConfigError(f"{where}.allow_hosts", "must be a list of host names")
        self.allow_hosts: list[str] = hosts
        headers = config.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ConnectorConfigError(f"{where}.headers", "must be a mapping")
        self._headers = {str(k): str(v) for k, v in headers.items()}
        # Credentials are computed into headers at each connect (OAuth2 tokens refresh then).
        self._auth_client = httpx.AsyncClient(transport=self._transport(), trust_env=False)
        self._auth = build_auth(config.get("auth"), f"{where}.auth", self._auth_client)
        self._bind = self._parse_binds(config.get("bind"), f"{where}.bind")
        tools = config.get("tools")
        if isinstance(tools, list):
            tools = {str(t): {} for t in tools}
        if not isinstance(tools, Mapping) or not tools:
            raise ConnectorConfigError(f"{where}.tools", "the allow-list of tools is required")
        for tool, section in tools.items():
            check_keys(section or {}, _TOOL_KEYS, f"{where}.tools.{tool}")
        self._allowed: dict[str, Mapping[str, Any]] = {str(k): v or {} for k, v in tools.items()}
        self._operations: dict[str, Operation] = {}
        self._ops: dict[str, _ToolOp] = {}
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._tasks: asyncio.TaskGroup | None = None
        self._closed = False

    # -- configuration ---------------------------------------------------------------

    @staticmethod
    def _stdio_params(config: Mapping[str, Any], where: str) -> StdioServerParameters:
        command = config.get("command")
        if isinstance(command, str):
            command = [command]
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) for c in command)
        ):
            raise ConnectorConfigError(f"{where}.command", "a command as a list of strings")
        env = config.get("env")
        if env is not None and not isinstance(env, Mapping):
            raise ConnectorConfigError(f"{where}.env", "must be a mapping")
        cwd = config.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ConnectorConfigError(f"{where}.cwd", "must be a directory path")
        return StdioServerParameters(
            command=command[0],
            args=command[1:],
            env={str(k): str(v) for k, v in env.items()} if env else None,
            cwd=cwd,
        )

    @staticmethod
    def _parse_binds(raw: Any, where: str) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise ConnectorConfigError(where, "must map argument names to claim templates")
        out: dict[str, str] = {}
        for name, template in raw.items():
            if not isinstance(template, str) or not check_template_fields(
                template, (), f"{where}.{name}"
            ):
                raise ConnectorConfigError(f"{where}.{name}", "must use caller claims {user.x}")
            out[str(name)] = template
        return out

    def _transport(self) -> httpx.AsyncHTTPTransport:
        return guarded_transport(allow_private=self.allow_private, allow_hosts=self.allow_hosts)

    def _build_operations(self, tools: Mapping[str, Tool], *, at_start: bool) -> None:
        ops: dict[str, _ToolOp] = {}
        for tool_name, section in self._allowed.items():
            twhere = f"{self._where}.tools.{tool_name}"
            tool = tools.get(tool_name)
            if tool is None:
                have = ", ".join(sorted(tools)) or "none"
                if at_start:
                    raise ConnectorConfigError(
                        twhere, f"the MCP server has no such tool (has: {have})"
                    )
                log.warning("%s: the MCP server no longer offers tool %s", self._where, tool_name)
                continue
            spec = self._map_tool(tool, section, twhere)
            ops[spec.op.name] = spec
        self._ops = ops
        self._operations = {k: v.op for k, v in ops.items()}

    def _map_tool(self, tool: Tool, section: Mapping[str, Any], where: str) -> _ToolOp:
        schema = dict(tool.inputSchema or {})
        resolver = OpenApiDocument(schema, tool.name)
        binds = {**self._bind, **self._parse_binds(section.get("bind"), f"{where}.bind")}
        props = schema.get("properties") or {}
        if schema.get("type", "object") != "object" or not isinstance(props, Mapping):
            raise ConnectorConfigError(where, "cannot map the tool: its input schema is no object")
        required = set(schema.get("required") or [])
        params: dict[str, Any] = {}
        wire: dict[str, str] = {}
        constraints: dict[str, tuple[str, Mapping[str, Any]]] = {}
        tool_binds: dict[str, str] = {}
        for arg, prop in props.items():
            arg = str(arg)
            if arg in binds:
                tool_binds[arg] = binds[arg]
                continue
            try:
                ptype, checks = schema_type(resolver, prop, f"argument '{arg}'")
            except SpecError as exc:
                raise ConnectorConfigError(where, f"cannot map the tool: {exc}") from None
            name = "".join(c if c.isalnum() or c == "_" else "_" for c in arg)
            prop = resolver.resolve(prop)
            decl: dict[str, Any] = {"type": ptype, "required": arg in required}
            if prop.get("description"):
                decl["description"] = str(prop["description"])
            if "default" in prop and prop["default"] is not None and arg not in required:
                decl["default"] = prop["default"]
            params[name] = decl
            wire[name] = arg
            if checks:
                constraints[name] = (ptype, checks)
        for arg in section.get("bind") or {}:
            if arg not in props:
                raise ConnectorConfigError(f"{where}.bind.{arg}", "the tool has no such argument")
        hints = tool.annotations
        read_only = bool(hints and hints.readOnlyHint)
        op_section = {
            "description": section.get("description", tool.description or ""),
            "params": params,
            "result": section.get("result", self._default_result(tool)),
            **{
                k: section[k]
                for k in ("write", "cache_ttl", "cache_keys", "invalidates")
                if k in section
            },
        }
        name = str(section.get("name") or tool.name)
        op = parse_operation(name, op_section, where, write_default=not read_only)
        # Bound arguments read caller claims: they are part of the cache key.
        op = dataclasses.replace(op, claims=claims_used(tool_binds.values()))
        select_path, fields = check_select(section, where)
        idempotent = section.get("idempotent")
        if idempotent is None:
            idempotent = read_only or bool(hints and hints.idempotentHint)
        if not isinstance(idempotent, bool):
            raise ConnectorConfigError(f"{where}.idempotent", "must be true or false")
        timeout = get_number(section, "timeout", 0.0, where) or None
        out_props = (tool.outputSchema or {}).get("properties") or {}
        return _ToolOp(
            op=op,
            tool=tool.name,
            wire=wire,
            binds=tool_binds,
            constraints=constraints,
            select=select_path,
            fields=fields,
            idempotent=idempotent,
            timeout=timeout,
            unwrap=set(out_props) == {"result"},
        )

    @staticmethod
    def _default_result(tool: Tool) -> str:
        out: Mapping[str, Any] = tool.outputSchema or {}
        props = out.get("properties") or {}
        if set(props) == {"result"}:
            out = props["result"] if isinstance(props["result"], Mapping) else {}
        kind = out.get("type")
        if kind == "array":
            return "rows"
        if kind == "object":
            return "object"
        return "value"

    # -- lifecycle -------------------------------------------------------------------

    @property
    def operations(self) -> Mapping[str, Operation]:
        return self._operations

    async def __aenter__(self) -> Self:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        try:
            link = await self._connect_guarded()
            self._build_operations(link.tools, at_start=True)
        except ConnectorUnavailableError as exc:
            # The server may come later: calls say UNAVAILABLE and reconnect meanwhile.
            log.warning("%s: %s; will retry on the next call", self._where, exc.message)
        except RejectedInputError as exc:  # the SSRF guard refused the address
            await self.aclose()
            raise ConnectorConfigError(f"{self._where}.url", exc.message) from None
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the MCP session (and stop a stdio server). Idempotent."""
        if self._closed:
            return
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            link.stop.set()
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            await tasks.__aexit__(None, None, None)
        await self._auth_client.aclose()

    async def ready(self) -> None:
        """Connect if there is no live session (operations are known after that)."""
        if self._link is None:
            link = await self._connect_guarded()
            try:
                self._build_operations(link.tools, at_start=False)
            except ConnectorConfigError as exc:
                self._drop_link()
                raise ConnectorUnavailableError(
                    f"cannot use the MCP server's tools: {exc}", connector=self.name
                ) from None

    async def _connect_guarded(self) -> _Link:
        """Connect through the breaker: a server that keeps failing is not dialled per call."""
        breaker = self.breaker
        if breaker is None:
            return await self._connect()
        try:
            breaker.before_call()
        except CircuitOpenError as exc:
            exc.connector = self.name
            raise
        try:
            link = await self._connect()
        except ConnectorUnavailableError:
            breaker.record_failure()
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.release()  # connected; the calls themselves give the verdicts
        return link

    async def _connect(self) -> _Link:
        async with self._lock:
            if self._link is not None:
                return self._link
            if self._closed or self._tasks is None:
                raise ConnectorUnavailableError(
                    f"connector '{self.name}' is closed", connector=self.name
                )
            ready: asyncio.Future[_Link] = asyncio.get_running_loop().create_future()
            task = self._tasks.create_task(self._hold(ready))
            try:
                async with asyncio.timeout(self.connect_timeout):
                    link = await asyncio.shield(ready)
            except TimeoutError:
                task.cancel()
                raise ConnectorUnavailableError(
                    f"MCP server did not complete the handshake within {self.connect_timeout:g}s",
                    connector=self.name,
                ) from None
            self._link = link
            return link

    async def _hold(self, ready: asyncio.Future[_Link]) -> None:
        """Own one session: open transport + session, publish it, keep it until told to stop."""
        link = _Link()
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._open_transport(stack)
                session = await stack.enter_async_context(
                    ClientSession(
                        read,
                        write,
                        read_timeout_seconds=timedelta(seconds=self.timeout),
                        message_handler=link.on_message,
                    )
                )
                async with asyncio.timeout(None) as scope:
                    link.calls.add(scope)
                    try:
                        await session.initialize()
                        link.tools = await self._list_tools(session)
                    finally:
                        link.calls.discard(scope)
                link.session = session
                if not ready.done():
                    ready.set_result(link)
                await link.stop.wait()
        except Exception as exc:  # noqa: BLE001 - reported to the caller waiting for the link
            cause: BaseException = exc
            if isinstance(exc, TimeoutError) and link.failure is not None:
                cause = link.failure
            link.fail(cause)
            if not ready.done():
                ready.set_exception(self._unavailable(cause))
            else:
                log.info("%s: MCP session ended (%s)", self._where, type(cause).__name__)
        finally:
            if self._link is link:
                self._link = None
            # Calls still in flight on this session end now (UNAVAILABLE), not at their deadline.
            link.fail(link.failure or EOFError("the MCP session ended"))
            if not ready.done():
                ready.set_exception(self._unavailable(link.failure or EOFError()))

    async def _open_transport(self, stack: contextlib.AsyncExitStack) -> tuple[Any, Any]:
        if self._stdio is not None:
            read, write = await stack.enter_async_context(stdio_client(self._stdio))
            return read, write
        headers = dict(self._headers)
        await self._auth.apply(headers, {})
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=self._transport(),
                headers=headers,
                # SSE streams stay open between events: only connect / write are bounded here,
                # each call has its own total deadline.
                timeout=httpx.Timeout(self.timeout, read=None),
                follow_redirects=False,
                trust_env=False,
            )
        )
        read, write, _ = await stack.enter_async_context(
            streamable_http_client(self.url or "", http_client=client)
        )
        return read, write

    @staticmethod
    async def _list_tools(session: ClientSession) -> dict[str, Tool]:
        tools: dict[str, Tool] = {}
        cursor: str | None = None
        for _ in range(100):
            page = await session.list_tools(cursor)
            tools.update({t.name: t for t in page.tools})
            cursor = page.nextCursor
            if not cursor:
                break
        return tools

    def _unavailable(self, exc: BaseException) -> ConnectorError:
        if isinstance(exc, BaseExceptionGroup):
            blocked = exc.subgroup(BlockedAddressError)
            if blocked is not None:
                return RejectedInputError(str(blocked.exceptions[0]), connector=self.name)
            first: BaseException = exc.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            exc = first
        if isinstance(exc, BlockedAddressError):
            return RejectedInputError(str(exc), connector=self.name)
        if isinstance(exc, ConnectorError):
            return exc
        if isinstance(exc, McpError):
            reason = f"MCP server refused the handshake: {exc.error.message[:200]}"
        elif _transport_failure(exc):
            reason = f"MCP server unreachable ({type(exc).__name__})"
        else:
            reason = f"MCP server answered something that is not MCP ({type(exc).__name__})"
        return ConnectorUnavailableError(reason, connector=self.name)

    # -- calls -----------------------------------------------------------------------

    async def invoke(
        self, operation: str, params: Mapping[str, Any], ctx: CallContext | None = None
    ) -> Any:
        await self.ready()
        spec = self._ops.get(operation)
        if spec is None:
            raise OperationNotFoundError(
                f"connector '{self.name}' has no operation '{operation}'",
                connector=self.name,
                operation=operation,
            )
        values = validate_params(spec.op, params)
        args = self._arguments(spec, values, ctx, operation)
        budget = spec.timeout or self.timeout
        if ctx is not None and ctx.deadline is not None:
            budget = min(budget, ctx.deadline - time.monotonic())
        if budget <= 0:
            raise ConnectorTimeoutError(
                "deadline already expired", connector=self.name, operation=operation
            )
        try:
            async with asyncio.timeout(budget):
                result = await self._attempts(spec, args, operation)
        except TimeoutError:
            if self.breaker is not None:
                self.breaker.record_failure()
            raise ConnectorTimeoutError(
                f"no answer within {budget:.3g}s", connector=self.name, operation=operation
            ) from None
        return self._shape(spec, result, operation)

    def _arguments(
        self, spec: _ToolOp, values: Mapping[str, Any], ctx: CallContext | None, operation: str
    ) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            checks = spec.constraints.get(name)
            if checks is not None:
                problem = constraint_violation(checks[0], value, checks[1])
                if problem:
                    raise RejectedInputError(
                        f"parameter '{name}' {problem}", connector=self.name, operation=operation
                    )
            args[spec.wire[name]] = value
        if spec.binds:
            user = dict(ctx.claims) if ctx is not None else {}
            if ctx is not None and ctx.subject:
                user["sub"] = ctx.subject
            for arg, template in spec.binds.items():
                try:
                    args[arg] = compile_template(template).render_value({"user": user})
                except TemplateError as exc:
                    raise RejectedInputError(
                        f"cannot fill '{arg}' from the caller's claims: {exc}",
                        connector=self.name,
                        operation=operation,
                    ) from None
                if args[arg] is None:
                    raise RejectedInputError(
                        f"caller claim for '{arg}' is required",
                        connector=self.name,
                        operation=operation,
                    )
        return args

    async def _attempts(self, spec: _ToolOp, args: dict[str, Any], operation: str) -> Any:
        attempts = self.retry.attempts if spec.idempotent else 1
        breaker = self.breaker
        for attempt in range(attempts):
            if breaker is not None:
                try:
                    breaker.before_call()
                except CircuitOpenError as exc:
                    exc.connector, exc.operation = self.name, operation
                    raise
            link: _Link | None = None
            try:
                link = await self._connect()
                result = await self._call(link, spec.tool, args)
            except McpError as exc:
                if breaker is not None:
                    breaker.record_success()  # it answered: the server is alive
                code = exc.error.code
                cls = RejectedInputError if code == -32602 else BackendError
                raise cls(
                    f"MCP server refused the call: {exc.error.message[:200]}",
                    connector=self.name,
                    operation=operation,
                ) from None
            except ConnectorError as exc:
                if breaker is not None:
                    breaker.record_failure()
                exc.connector, exc.operation = self.name, operation
                error = exc
            except Exception as failure:  # noqa: BLE001 - a broken link: reconnect, maybe retry
                if breaker is not None:
                    breaker.record_failure()
                cause: BaseException = failure
                if link is not None and link.failure is not None:
                    cause = link.failure
                self._drop_link()
                error = self._unavailable(cause)
                error.operation = operation
            except BaseException:
                if breaker is not None:
                    breaker.release()
                raise
            else:
                if breaker is not None:
                    breaker.record_success()
                return result
            if attempt + 1 >= attempts or not error.retriable:
                raise error
            await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _call(link: _Link, tool: str, args: dict[str, Any]) -> CallToolResult:
        """One tools/call; a link failure while it runs ends it with ``TimeoutError``."""
        if link.session is None or link.failure is not None:
            raise EOFError("the MCP session is closed")
        async with asyncio.timeout(None) as scope:
            link.calls.add(scope)
            try:
                return await link.session.call_tool(tool, args)
            finally:
                link.calls.discard(scope)

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.stop.set()

    def _shape(self, spec: _ToolOp, result: CallToolResult, operation: str) -> Any:
        texts = [c.text for c in result.content if isinstance(c, TextContent)]
        if result.isError:
            detail = " ".join(texts)[:200] or "no detail"
            raise BackendError(f"tool failed: {detail}", connector=self.name, operation=operation)
        data: Any
        if result.structuredContent is not None:
            data = result.structuredContent
            if spec.unwrap and isinstance(data, Mapping) and set(data) == {"result"}:
                data = data["result"]
        elif len(texts) == 1:
            try:
                data = json.loads(texts[0])
            except ValueError:
                data = texts[0]
        elif texts:
            data = "\n".join(texts)
        else:
            data = None
        if spec.select:
            data = select(data, spec.select)
        if spec.fields:
            data = map_fields(data, spec.fields)
        try:
            return shape(data, spec.op.result)
        except LookupError:
            raise ResultNotFoundError(
                "the tool returned no result", connector=self.name, operation=operation
            ) from None
        except ValueError as exc:
            raise BackendError(
                f"unexpected tool result shape: {exc}", connector=self.name, operation=operation
            ) from None
