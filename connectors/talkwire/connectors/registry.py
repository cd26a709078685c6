"""The connector registry: builds the configured connectors and routes calls.

``ConnectorRegistry(sections)`` takes the ``connectors:`` mapping of the config
file (name -> section with a ``type``), resolves each type through the
``talkwire.connectors`` entry-point group (only the types named in config are
imported), and builds the connectors. It is an async context manager; every
call goes through :meth:`ConnectorRegistry.invoke`, which validates parameters
against the declared :class:`Parameter` s, applies the opt-in per-operation
TTL cache and reports timings to an optional observer.

Cache: an operation with ``cache_ttl > 0`` (never a write) caches results by
connector + operation + validated parameters + the caller claims it reads.
Its ``cache_keys`` templates (``order:{order_id}``) name the business keys the
entry depends on; :meth:`invalidate` drops every entry whose keys intersect the
given ones (the event router calls it for each change event), and a call that
was in flight during an invalidation does not store its (possibly stale) result.

Writes: an operation's ``invalidates`` templates (``customer:{customer_id}``) are
rendered after each successful write and passed to :meth:`invalidate`, so a
read right after a payment never shows the old balance; change events with the
same keys invalidate too. A write called with ``CallContext.idempotency_key``
runs once per key (:mod:`talkwire.connectors.idempotency`; the store is injected
as ``idempotency=``, keys are kept ``idempotency_window`` seconds).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import TracebackType
from typing import Any, Self

from talkwire.connectors.base import (
    CallContext,
    Connector,
    ConnectorFactory,
    Operation,
    RemoteOperations,
)
from talkwire.connectors.breaker import BreakerState, CircuitBreaker
from talkwire.connectors.caller import context_scope
from talkwire.connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorNotFoundError,
    OperationNotFoundError,
)
from talkwire.connectors.idempotency import (
    DEFAULT_WINDOW,
    IdempotencyGuard,
    IdempotencyStore,
    MemoryIdempotencyStore,
    record_id,
)
from talkwire.connectors.sections import line_of, locate, split_key
from talkwire.connectors.spec import parameters_schema, validate_params
from talkwire.connectors.templates import TemplateError, compile_template

__all__ = ["ENTRY_POINT_GROUP", "CallRecord", "ConnectorRegistry", "available_types"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "talkwire.connectors"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")


def available_types() -> list[str]:
    """Connector types registered in the ``talkwire.connectors`` entry-point group."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What the observer hook receives after each call (for metrics / tracing)."""

    connector: str
    operation: str
    seconds: float
    cached: bool
    error: ConnectorError | None


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _copy(value: Any) -> Any:
    """Shallow-ish copy so callers cannot mutate a cached value."""
    if isinstance(value, list):
        return [dict(v) if isinstance(v, dict) else v for v in value]
    if isinstance(value, dict):
        return dict(value)
    return value


class _Entry:
    __slots__ = ("expires", "keys", "value")

    def __init__(self, value: Any, expires: float, keys: tuple[str, ...]) -> None:
        self.value = value
        self.expires = expires
        self.keys = keys


class ConnectorRegistry:
    """All configured connectors, with validation and caching in front of them."""

    def __init__(
        self,
        sections: Mapping[str, Mapping[str, Any]],
        *,
        factories: Mapping[str, ConnectorFactory] | None = None,
        cache_max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        observer: Callable[[CallRecord], None] | None = None,
        on_breaker: Callable[[str, BreakerState], None] | None = None,
        idempotency: IdempotencyStore | None = None,
        idempotency_window: float = DEFAULT_WINDOW,
    ) -> None:
        self._clock = clock
        self._idempotency = IdempotencyGuard(
            idempotency if idempotency is not None else MemoryIdempotencyStore(),
            window=idempotency_window,
        )
        self._remote: dict[str, RemoteOperations] = {}
        self._observer = observer
        self._on_breaker = on_breaker
        self._cache: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._by_key: dict[str, set[tuple[Any, ...]]] = {}
        self._cache_max = cache_max_entries
        self._epoch = 0
        self._connectors: dict[str, Connector] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._closed = False
        if not isinstance(sections, Mapping):
            raise ConnectorConfigError("connectors", "must be a mapping of name -> section")
        resolved = dict(factories or {})
        for name, section in sections.items():
            where = f"connectors.{name}"
            if not isinstance(name, str) or not _NAME.match(name):
                raise ConnectorConfigError(where, "connector names must be identifiers")
            if not isinstance(section, Mapping):
                raise ConnectorConfigError(where, "must be a mapping with a 'type'")
            kind = section.get("type")
            at = locate(section, "type") or locate(sections, name)
            if not isinstance(kind, str) or not kind:
                raise ConnectorConfigError(
                    f"{where}.type", self._unknown(None, resolved), location=at
                )
            if kind not in resolved:
                resolved[kind] = self._load(kind, where, resolved, at)
            try:
                connector = resolved[kind](name, section)
            except ConnectorConfigError as exc:
                # Connectors name the dotted key; the line is found here, once for all.
                path = split_key(exc.key)[1:]
                raise exc.located(line_of(sections, path)) from None
            self._connectors[name] = connector
            if isinstance(connector, RemoteOperations):
                self._remote[name] = connector
            self._watch_breaker(name, connector)

    def _watch_breaker(self, name: str, connector: Connector) -> None:
        """Report state changes of the connector's circuit breaker, if it has one."""
        breaker = getattr(connector, "breaker", None)
        report = self._on_breaker
        if report is None or not isinstance(breaker, CircuitBreaker):
            return
        chained = breaker.on_change

        def on_change(old: BreakerState, new: BreakerState) -> None:
            report(name, new)
            if chained is not None:
                chained(old, new)

        breaker.on_change = on_change
        report(name, breaker.state)

    @staticmethod
    def _unknown(kind: str | None, resolved: Mapping[str, Any]) -> str:
        types = sorted(set(available_types()) | set(resolved))
        what = f"unknown connector type {kind!r}" if kind else "a connector type is required"
        return f"{what}; available types: {', '.join(types) or 'none'}"

    def _load(
        self, kind: str, where: str, resolved: Mapping[str, Any], at: str = ""
    ) -> ConnectorFactory:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
        if not matches:
            raise ConnectorConfigError(f"{where}.type", self._unknown(kind, resolved), location=at)
        try:
            factory: ConnectorFactory = matches[0].load()
        except ImportError as exc:  # an optional dependency (e.g. the mcp SDK) is missing
            raise ConnectorConfigError(
                f"{where}.type",
                f"connector type {kind!r} cannot be loaded ({exc}); "
                f"install its extra, e.g. pip install 'talkwire[{kind}]'",
                location=at,
            ) from None
        return factory

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        try:
            for connector in self._connectors.values():
                await stack.enter_async_context(connector)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connector (idempotent)."""
        if self._closed:
            return
        self._closed = True
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        else:
            for connector in self._connectors.values():
                await connector.aclose()
        self._cache.clear()
        self._by_key.clear()

    # -- lookup ----------------------------------------------------------------

    def get(self, name: str) -> Connector:
        try:
            return self._connectors[name]
        except KeyError:
            raise ConnectorNotFoundError(
                f"no connector named '{name}' "
                f"(configured: {', '.join(self._connectors) or 'none'})",
                connector=name,
            ) from None

    def list(self) -> builtins.list[str]:
        return builtins.list(self._connectors)

    def operation(self, connector: str, operation: str) -> Operation:
        conn = self.get(connector)
        op = conn.operations.get(operation)
        if op is None:
            raise OperationNotFoundError(
                f"connector '{connector}' has no operation '{operation}' "
                f"(has: {', '.join(conn.operations) or 'none'})",
                connector=connector,
                operation=operation,
            )
        return op

    def describe(self, connector: str | None = None) -> builtins.list[dict[str, Any]]:
        """Metadata of every operation (or one connector's), with JSON-schema parameters."""
        names = [connector] if connector is not None else builtins.list(self._connectors)
        out: builtins.list[dict[str, Any]] = []
        for name in names:
            conn = self.get(name)
            for op in conn.operations.values():
                out.append(
                    {
                        "connector": name,
                        "type": conn.type,
                        "operation": op.name,
                        "description": op.description,
                        "write": op.write,
                        "result": op.result,
                        "cache_ttl": op.cache_ttl,
                        "cache_keys": builtins.list(op.cache_keys),
                        "parameters": parameters_schema(op),
                    }
                )
        return out

    def tools(self, connector: str | None = None) -> builtins.list[dict[str, Any]]:
        """OpenAI-style function tools (``name`` is ``connector__operation``)."""
        return [
            {
                "type": "function",
                "function": {
                    "name": f"{d['connector']}__{d['operation']}",
                    "description": d["description"] or f"{d['connector']} {d['operation']}",
                    "parameters": d["parameters"],
                },
            }
            for d in self.describe(connector)
        ]

    # -- calls -----------------------------------------------------------------

    async def invoke(
        self,
        connector: str,
        operation: str,
        params: Mapping[str, Any] | None = None,
        ctx: CallContext | None = None,
    ) -> Any:
        """Validate ``params`` and call ``connector.operation``; see the module docstring."""
        start = time.perf_counter()
        observer = self._observer
        try:
            conn = self.get(connector)
            remote = self._remote.get(connector)
            if remote is not None:
                await remote.ready()
            op = conn.operations.get(operation) or self.operation(connector, operation)
            try:
                values = validate_params(op, params or {})
            except ConnectorError as e:
                e.connector, e.operation = connector, operation
                raise
            if op.cache_ttl > 0 and not op.write:
                key = self._cache_key(connector, op, values, ctx)
                entry = self._cache.get(key)
                now = self._clock()
                if entry is not None:
                    if entry.expires > now:
                        self._cache.move_to_end(key)
                        if observer is not None:
                            observer(
                                CallRecord(
                                    connector, operation, time.perf_counter() - start, True, None
                                )
                            )
                        return _copy(entry.value)
                    self._drop(key)
                epoch = self._epoch
                result = await conn.invoke(operation, values, ctx)
                if epoch == self._epoch and not self._closed:
                    self._store(key, op, values, ctx, result, self._clock() + op.cache_ttl)
                result = _copy(result)
            elif op.write:
                result = await self._write(conn, connector, op, values, ctx)
            else:
                result = await conn.invoke(operation, values, ctx)
        except ConnectorError as e:
            if observer is not None:
                observer(CallRecord(connector, operation, time.perf_counter() - start, False, e))
            raise
        if observer is not None:
            observer(CallRecord(connector, operation, time.perf_counter() - start, False, None))
        return result

    async def _write(
        self,
        conn: Connector,
        connector: str,
        op: Operation,
        values: dict[str, Any],
        ctx: CallContext | None,
    ) -> Any:
        """A write: at most once per idempotency key, then drop what it invalidates."""
        if ctx is not None and ctx.idempotency_key:
            key = record_id(connector, op.name, ctx.subject, ctx.idempotency_key)
            try:
                result = await self._idempotency.run(
                    key,
                    values,
                    lambda: conn.invoke(op.name, values, ctx),
                    deadline=ctx.deadline,
                )
            except ConnectorError as e:
                e.connector, e.operation = e.connector or connector, e.operation or op.name
                raise
        else:
            result = await conn.invoke(op.name, values, ctx)
        if op.invalidates:
            self.invalidate(self._render_keys(op.invalidates, op, values, ctx))
        return result

    # -- cache -----------------------------------------------------------------

    def _render_keys(
        self,
        templates: tuple[str, ...],
        op: Operation,
        values: Mapping[str, Any],
        ctx: CallContext | None,
    ) -> builtins.list[str]:
        tv = dict(values)
        tv["user"] = context_scope(ctx)
        rendered: builtins.list[str] = []
        for t in templates:
            try:
                rendered.append(compile_template(t).render(tv))
            except TemplateError:
                log.debug("key %r of %s not rendered", t, op.name)
        return rendered

    def _cache_key(
        self, connector: str, op: Operation, values: Mapping[str, Any], ctx: CallContext | None
    ) -> tuple[Any, ...]:
        claims: tuple[Any, ...] = ()
        if op.claims:
            user = context_scope(ctx)
            claims = tuple(_freeze(user.get(c)) for c in op.claims)
        return (connector, op.name, _freeze(values), claims)

    def _store(
        self,
        key: tuple[Any, ...],
        op: Operation,
        values: Mapping[str, Any],
        ctx: CallContext | None,
        result: Any,
        expires: float,
    ) -> None:
        rendered = self._render_keys(op.cache_keys, op, values, ctx) if op.cache_keys else []
        self._drop(key)
        self._cache[key] = _Entry(_copy(result), expires, tuple(rendered))
        for k in rendered:
            self._by_key.setdefault(k, set()).add(key)
        while len(self._cache) > self._cache_max:
            oldest = next(iter(self._cache))
            self._drop(oldest)

    def _drop(self, key: tuple[Any, ...]) -> bool:
        entry = self._cache.pop(key, None)
        if entry is None:
            return False
        for k in entry.keys:
            bucket = self._by_key.get(k)
            if bucket is not None:
                bucket.discard(key)
                if not bucket:
                    del self._by_key[k]
        return True

    def invalidate(self, keys: Iterable[str]) -> int:
        """Drop cached results depending on any of ``keys``; returns how many were dropped."""
        self._epoch += 1
        dropped = 0
        for k in keys:
            bucket = self._by_key.get(k)
            if not bucket:
                continue
            for entry_key in builtins.list(bucket):
                if self._drop(entry_key):
                    dropped += 1
        return dropped

    def clear_cache(self) -> None:
        self._epoch += 1
        self._cache.clear()
        self._by_key.clear()

    @property
    def cache_size(self) -> int:
        return len(self._cache)
