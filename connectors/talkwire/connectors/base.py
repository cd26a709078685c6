"""The connector contract.

A connector is a plugin found through the entry-point group
``talkwire.connectors``. The entry point names a factory (usually the class)
called as ``factory(name, config)`` where ``config`` is the connector's section
of the configuration file. The result is an async context manager exposing
named :class:`Operation` s; callers pass only an operation name and parameters,
never raw SQL or URLs.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

__all__ = [
    "CallContext",
    "Connector",
    "ConnectorFactory",
    "Operation",
    "Parameter",
    "ParameterType",
    "RemoteOperations",
]

ParameterType = Literal["string", "integer", "number", "boolean", "object", "array"]


@dataclass(frozen=True, slots=True)
class Parameter:
    """A declared operation parameter."""

    name: str
    type: ParameterType = "string"
    required: bool = True
    description: str = ""
    default: Any = None


@dataclass(frozen=True, slots=True)
class Operation:
    """A named operation a connector exposes.

    ``result`` describes the shape of what :meth:`Connector.invoke` returns:
    ``"rows"`` (a list of mappings), ``"row"`` (one mapping or ``None``),
    ``"object"`` (a mapping) or ``"value"`` (any JSON value). ``write`` marks
    operations that change backend data (they are never cached, and the LLM
    policy asks the user to confirm them).
    """

    name: str
    parameters: tuple[Parameter, ...] = ()
    description: str = ""
    write: bool = False
    result: Literal["rows", "row", "object", "value"] = "rows"
    cache_ttl: float = 0.0
    cache_keys: tuple[str, ...] = ()
    #: Caller claims (``{user.x}``) the operation reads; part of the cache key.
    claims: tuple[str, ...] = ()
    #: Key templates (``customer:{customer_id}``) whose cache entries a successful write drops.
    invalidates: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling and under which limits.

    ``claims`` are the caller's identity claims (subject included as ``sub``);
    ``deadline`` is an absolute ``time.monotonic()`` value or ``None``;
    ``idempotency_key`` is sent with writes so a retried call creates one record.
    """

    subject: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    idempotency_key: str | None = None


@runtime_checkable
class Connector(Protocol):
    """What every connector implements."""

    name: str
    type: str

    @property
    def operations(self) -> Mapping[str, Operation]:
        """The operations this connector exposes, by name."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None:
        """Release pools and clients. Idempotent."""
        ...

    async def invoke(
        self, operation: str, params: Mapping[str, Any], ctx: CallContext | None = None
    ) -> Any:
        """Run ``operation`` with ``params``; raise a ``ConnectorError`` on failure."""
        ...


@runtime_checkable
class RemoteOperations(Protocol):
    """Optional: a connector whose operations are discovered from a remote server (``mcp``).

    The registry awaits :meth:`ready` before validating a call, so a server that
    was down at start is reconnected lazily and the caller gets ``UNAVAILABLE``
    (not "unknown parameter") while it stays down.
    """

    async def ready(self) -> None:
        """Connect (or reconnect) if needed; ``ConnectorUnavailableError`` when unreachable."""
        ...


class ConnectorFactory(Protocol):
    """What an entry point in ``talkwire.connectors`` resolves to."""

    def __call__(self, name: str, config: Mapping[str, Any]) -> Connector: ...
