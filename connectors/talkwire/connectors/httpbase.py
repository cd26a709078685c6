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
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from talkwire.connectors.auth import build_auth
from talkwire.connectors.base import CallContext, Operation
from talkwire.connectors.breaker import CircuitBreaker
from talkwire.connectors.caller import context_scope
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


@dataclass(frozen=True, slots=True)
class _Request:
    """What every attempt of one call sends (auth is applied per attempt)."""

    method: str
    url: str
    query: dict[str, Any] | None
    headers: dict[str, str] | None
    content: bytes | None


def _retriable_status(status: int) -> bool:
    """5xx, 408 and 429 are worth another attempt (for idempotent calls)."""
    return status >= 500 or status in (408, 429)


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
        """The operation's parameters plus the caller scope as ``user``."""
        return {**params, "user": context_scope(ctx)}

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
        budget = self._budget(budget, ctx, operation)
        content = json.dumps(body, separators=(",", ":")).encode() if has_body else None
        send = _Request(method, url, query, headers, content)
        attempts = self.retry.attempts if idempotent else 1
        try:
            async with asyncio.timeout(budget):
                return await self._attempts(operation, send, attempts)
        except TimeoutError:
            raise ConnectorTimeoutError(
                f"no answer within {budget:.3g}s", connector=self.name, operation=operation
            ) from None

    def _budget(self, budget: float | None, ctx: CallContext | None, operation: str) -> float:
        """Seconds left for the call: the operation's timeout, cut by the caller's deadline."""
        left = self.timeout if budget is None else budget
        if ctx is not None and ctx.deadline is not None:
            left = min(left, ctx.deadline - time.monotonic())
        if left <= 0:
            raise ConnectorTimeoutError(
                "deadline already expired", connector=self.name, operation=operation
            )
        return left

    async def _attempts(self, operation: str, send: _Request, attempts: int) -> HttpResponse:
        """Attempt until a final answer, ``attempts`` failures, or the caller's deadline."""
        auth_retried = False
        attempt = 0
        while True:
            self._admit(operation)
            error: ConnectorError
            try:
                result = await self._attempt(operation, send)
            except ConnectorUnavailableError as exc:
                error = exc
            else:
                if result.status == 401 and self.auth.refreshable and not auth_retried:
                    auth_retried = True  # a stale token: refresh once, not counted as an attempt
                    self.auth.invalidate()
                    self._release()
                    continue
                if not self._record_status(result.status) or attempt + 1 >= attempts:
                    return result
                error = ConnectorUnavailableError(
                    f"backend unavailable ({result.status})",
                    connector=self.name,
                    operation=operation,
                )
            attempt += 1
            if attempt >= attempts:
                raise error
            await self._backoff(attempt - 1)

    def _admit(self, operation: str) -> None:
        """Breaker: let the attempt through or fail fast with :class:`CircuitOpenError`."""
        if self.breaker is None:
            return
        try:
            self.breaker.before_call()
        except CircuitOpenError as exc:
            exc.connector, exc.operation = self.name, operation
            raise

    def _record_status(self, status: int) -> bool:
        """Breaker verdict on a status; True when the status is worth retrying."""
        retry = _retriable_status(status)
        if self.breaker is not None:
            if status == 429:
                self.breaker.release()  # the backend is up, just busy
            elif retry:
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
        return retry

    def _release(self) -> None:
        if self.breaker is not None:
            self.breaker.release()

    def _failed(self) -> None:
        if self.breaker is not None:
            self.breaker.record_failure()

    async def _backoff(self, failed_attempt: int) -> None:
        """Jittered exponential backoff after ``failed_attempt`` (0-based)."""
        await asyncio.sleep(self.retry.delay(failed_attempt))

    async def _attempt(self, operation: str, send: _Request) -> HttpResponse:
        """One request; transport failures are :class:`ConnectorUnavailableError` (breaker told).

        A cancelled attempt (the deadline) or a refused address leaves the breaker without a
        verdict.
        """
        try:
            return await self._send(operation, send)
        except BlockedAddressError as exc:
            self._release()
            raise RejectedInputError(str(exc), connector=self.name, operation=operation) from None
        except httpx.HTTPError as exc:
            self._failed()
            raise ConnectorUnavailableError(
                f"backend unreachable ({type(exc).__name__})",
                connector=self.name,
                operation=operation,
            ) from None
        except ConnectorUnavailableError as exc:  # e.g. OAuth2 token endpoint down
            self._failed()
            exc.connector, exc.operation = self.name, operation
            raise
        except BaseException:
            self._release()
            raise

    async def _send(self, operation: str, send: _Request) -> HttpResponse:
        h = dict(self.static_headers)
        if send.headers:
            h.update(send.headers)
        q = dict(send.query) if send.query else {}
        await self.auth.apply(h, q)
        if send.content is not None:
            h["Content-Type"] = "application/json"
        request = self.client.build_request(
            send.method, send.url, params=q or None, headers=h, content=send.content
        )
        resp = await self.client.send(request, stream=True)
        try:
            data = await self._read(resp, operation)
        finally:
            await resp.aclose()
        return HttpResponse(resp.status_code, resp.headers, data)

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
