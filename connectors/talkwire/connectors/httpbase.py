"""Shared machinery of the HTTP connectors (``rest`` and ``graphql``).

Connection-level settings (all optional except the URL)::

    timeout: 10            # seconds, TOTAL deadline per call: retries, backoff and body read
    retries: {attempts: 3, base_delay: 0.1, max_delay: 2}   # or an int; false = 1 attempt
    breaker: {failures: 5, reset_after: 30}                  # false disables it
    auth: {...}            # see talkwire.connectors.auth
    headers: {X-Client: talkwire}
    allow_private: false   # SSRF guard: refuse loopback/private/link-local addresses
    allow_hosts: []        # host names exempt from the guard
    follow_redirects: false  # when true, each hop is re-checked by the guard
    max_response_bytes: 10485760
    verify: true           # TLS verification (or a CA bundle path)
    pool: {max_connections: 100, max_keepalive: 20, keepalive_expiry: 5}
    idempotency_header: Idempotency-Key
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

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
from talkwire.connectors.retry import RetryPolicy
from talkwire.connectors.spec import check_keys, get_bool, get_number
from talkwire.connectors.ssrf import BlockedAddressError, guarded_transport

__all__ = ["HTTP_CONNECTION_KEYS", "HttpConnectorBase", "HttpResponse"]

HTTP_CONNECTION_KEYS = frozenset(
    {
        "type",
        "timeout",
        "retries",
        "breaker",
        "auth",
        "headers",
        "allow_private",
        "allow_hosts",
        "follow_redirects",
        "max_response_bytes",
        "verify",
        "pool",
        "idempotency_header",
        "operations",
        "description",
    }
)


class HttpResponse:
    """A fully read response."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: httpx.Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def decode(self) -> Any:
        """JSON when the body looks like JSON, text otherwise, ``None`` when empty."""
        if not self.body:
            return None
        ctype = self.headers.get("content-type", "")
        if "json" in ctype or self.body[:1] in (b"{", b"["):
            try:
                return json.loads(self.body)
            except ValueError:
                if "json" in ctype:
                    raise BackendError("backend returned invalid JSON") from None
        return self.body.decode("utf-8", errors="replace")

    def message(self) -> str:
        """A short, safe description of an error body."""
        try:
            data = self.decode()
        except BackendError:
            return ""
        if isinstance(data, Mapping):
            for key in ("message", "error_description", "error", "detail", "title"):
                value = data.get(key)
                if isinstance(value, str):
                    return value[:200]
        return ""


class _CallState:
    __slots__ = ("in_attempt",)

    def __init__(self) -> None:
        self.in_attempt = False


class HttpConnectorBase:
    """Client, auth, retries, breaker and deadline handling for HTTP connectors."""

    type = "http"

    def _add(self, name: str, section: Mapping[str, Any], where: str) -> None:
        """Parse and register one operation (each connector type defines its own)."""
        raise NotImplementedError

    def _add_operations(self, config: Mapping[str, Any], where: str) -> None:
        ops = config.get("operations") or {}
        if not isinstance(ops, Mapping) or not ops:
            raise ConnectorConfigError(f"{where}.operations", "at least one operation is required")
        for op_name, section in ops.items():
            self._add(str(op_name), section, f"{where}.operations.{op_name}")

    def __init__(self, name: str, config: Mapping[str, Any], *, url_key: str) -> None:
        self.name = name
        where = f"connectors.{name}"
        self._where = where
        url = config.get(url_key)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConnectorConfigError(f"{where}.{url_key}", "required http(s) URL")
        if "?" in url or "#" in url:
            raise ConnectorConfigError(f"{where}.{url_key}", "must not contain a query or fragment")
        self.url = url.rstrip("/")
        self.timeout = get_number(config, "timeout", 10.0, where)
        if self.timeout <= 0:
            raise ConnectorConfigError(f"{where}.timeout", "must be > 0")
        self.retry = RetryPolicy.from_config(config.get("retries"), f"{where}.retries")
        self.breaker = CircuitBreaker.from_config(
            config.get("breaker"), f"{where}.breaker", name=name
        )
        self.allow_private = get_bool(config, "allow_private", False, where)
        allow_hosts = config.get("allow_hosts") or []
        if not isinstance(allow_hosts, list) or not all(isinstance(h, str) for h in allow_hosts):
            raise ConnectorConfigError(f"{where}.allow_hosts", "must be a list of host names")
        self.follow_redirects = get_bool(config, "follow_redirects", False, where)
        self.max_response_bytes = int(
            get_number(config, "max_response_bytes", 10 * 1024 * 1024, where, integer=True)
        )
        headers = config.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ConnectorConfigError(f"{where}.headers", "must be a mapping")
        self.static_headers = {str(k): str(v) for k, v in headers.items()}
        self.idempotency_header = str(config.get("idempotency_header", "Idempotency-Key"))
        pool = config.get("pool") or {}
        check_keys(pool, {"max_connections", "max_keepalive", "keepalive_expiry"}, f"{where}.pool")
        limits = httpx.Limits(
            max_connections=int(get_number(pool, "max_connections", 100, where, integer=True)),
            max_keepalive_connections=int(
                get_number(pool, "max_keepalive", 20, where, integer=True)
            ),
            keepalive_expiry=get_number(pool, "keepalive_expiry", 5.0, where),
        )
        verify = config.get("verify", True)
        if not isinstance(verify, bool | str):
            raise ConnectorConfigError(f"{where}.verify", "true, false or a CA bundle path")
        transport = guarded_transport(
            allow_private=self.allow_private,
            allow_hosts=allow_hosts,
            limits=limits,
            verify=verify,
        )
        self.client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=self.follow_redirects,
            max_redirects=5,
            trust_env=False,
        )
        self.auth = build_auth(config.get("auth"), f"{where}.auth", self.client)
        self._operations: dict[str, Operation] = {}
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    @property
    def operations(self) -> Mapping[str, Operation]:
        return self._operations

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.client.aclose()

    # -- helpers -------------------------------------------------------------

    def _operation(self, operation: str) -> Operation:
        try:
            return self._operations[operation]
        except KeyError:
            raise OperationNotFoundError(
                f"connector '{self.name}' has no operation '{operation}'",
                connector=self.name,
                operation=operation,
            ) from None

    @staticmethod
    def template_values(params: Mapping[str, Any], ctx: CallContext | None) -> dict[str, Any]:
        values = dict(params)
        if ctx is not None:
            user = dict(ctx.claims)
            if ctx.subject:
                user["sub"] = ctx.subject
            values["user"] = user
        else:
            values["user"] = {}
        return values

    def idempotency_key(self, ctx: CallContext | None) -> str:
        if ctx is not None and ctx.idempotency_key:
            return ctx.idempotency_key
        return str(uuid.uuid4())

    def map_status(self, resp: HttpResponse, operation: str) -> None:
        """Raise the typed error for a non-2xx final status."""
        status = resp.status
        if 200 <= status < 300:
            return
        detail = resp.message()
        suffix = f": {detail}" if detail else ""
        if 300 <= status < 400:
            raise BackendError(
                f"backend answered a redirect ({status}) that is not followed",
                connector=self.name,
                operation=operation,
            )
        if status == 404:
            raise ResultNotFoundError(
                f"not found (404){suffix}", connector=self.name, operation=operation
            )
        if status in (401, 403):
            raise BackendError(
                f"backend refused our credentials ({status}); check the connector's auth{suffix}",
                connector=self.name,
                operation=operation,
            )
        if status < 500 and status not in (408, 429):
            raise BackendError(
                f"backend rejected the request ({status}){suffix}",
                connector=self.name,
                operation=operation,
            )
        raise ConnectorUnavailableError(
            f"backend unavailable ({status})", connector=self.name, operation=operation
        )

    # -- the call ------------------------------------------------------------

    async def request(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
        has_body: bool = False,
        idempotent: bool,
        ctx: CallContext | None,
        budget: float | None = None,
    ) -> HttpResponse:
        """Send with auth, retries, breaker and a total deadline; returns the final response.

        5xx / 408 / 429 / transport failures are retried when ``idempotent``;
        the final status is returned as is (callers map it with :meth:`map_status`).
        """
        if self._closed:
            raise ConnectorUnavailableError(
                f"connector '{self.name}' is closed", connector=self.name, operation=operation
            )
        now = time.monotonic()
        budget = self.timeout if budget is None else budget
        if ctx is not None and ctx.deadline is not None:
            budget = min(budget, ctx.deadline - now)
        if budget <= 0:
            raise ConnectorTimeoutError(
                "deadline already expired", connector=self.name, operation=operation
            )
        state = _CallState()
        try:
            async with asyncio.timeout(budget):
                return await self._attempts(
                    operation, method, url, query, headers, body, has_body, idempotent, state
                )
        except TimeoutError:
            if state.in_attempt and self.breaker is not None:
                self.breaker.record_failure()
            raise ConnectorTimeoutError(
                f"no answer within {budget:.3g}s", connector=self.name, operation=operation
            ) from None

    async def _attempts(
        self,
        operation: str,
        method: str,
        url: str,
        query: dict[str, Any] | None,
        headers: dict[str, str] | None,
        body: Any,
        has_body: bool,
        idempotent: bool,
        state: _CallState,
    ) -> HttpResponse:
        attempts = self.retry.attempts if idempotent else 1
        breaker = self.breaker
        auth_retried = False
        attempt = 0
        content = json.dumps(body, separators=(",", ":")).encode() if has_body else None
        while True:
            if breaker is not None:
                try:
                    breaker.before_call()
                except CircuitOpenError as exc:
                    exc.connector, exc.operation = self.name, operation
                    raise
            error: ConnectorError
            state.in_attempt = True
            try:
                h = dict(self.static_headers)
                if headers:
                    h.update(headers)
                q = dict(query) if query else {}
                await self.auth.apply(h, q)
                if content is not None:
                    h["Content-Type"] = "application/json"
                request = self.client.build_request(
                    method, url, params=q or None, headers=h, content=content
                )
                resp = await self.client.send(request, stream=True)
                try:
                    data = await self._read(resp, operation)
                finally:
                    await resp.aclose()
            except BlockedAddressError as exc:
                state.in_attempt = False
                if breaker is not None:
                    breaker.release()
                raise RejectedInputError(
                    str(exc), connector=self.name, operation=operation
                ) from None
            except httpx.HTTPError as exc:
                state.in_attempt = False
                if breaker is not None:
                    breaker.record_failure()
                error = ConnectorUnavailableError(
                    f"backend unreachable ({type(exc).__name__})",
                    connector=self.name,
                    operation=operation,
                )
            except ConnectorUnavailableError as exc:  # e.g. OAuth2 token endpoint down
                state.in_attempt = False
                if breaker is not None:
                    breaker.record_failure()
                exc.connector, exc.operation = self.name, operation
                error = exc
            except BaseException:
                state.in_attempt = False
                if breaker is not None:
                    breaker.release()
                raise
            else:
                state.in_attempt = False
                status = resp.status_code
                result = HttpResponse(status, resp.headers, data)
                if status == 401 and self.auth.refreshable and not auth_retried:
                    auth_retried = True
                    self.auth.invalidate()
                    if breaker is not None:
                        breaker.release()
                    continue
                if status >= 500 or status == 408:
                    if breaker is not None:
                        breaker.record_failure()
                elif status == 429:
                    if breaker is not None:
                        breaker.release()
                else:
                    if breaker is not None:
                        breaker.record_success()
                    return result
                if attempt + 1 >= attempts:
                    return result
                error = ConnectorUnavailableError(
                    f"backend unavailable ({status})", connector=self.name, operation=operation
                )
            attempt += 1
            if attempt >= attempts:
                raise error
            await asyncio.sleep(self.retry.delay(attempt - 1))

    async def _read(self, resp: httpx.Response, operation: str) -> bytes:
        limit = self.max_response_bytes
        length = resp.headers.get("content-length")
        if length is not None and length.isdigit():
            if int(length) > limit:
                raise BackendError(
                    f"response larger than max_response_bytes ({limit})",
                    connector=self.name,
                    operation=operation,
                )
            return await resp.aread()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise BackendError(
                    f"response larger than max_response_bytes ({limit})",
                    connector=self.name,
                    operation=operation,
                )
            chunks.append(chunk)
        return b"".join(chunks)
