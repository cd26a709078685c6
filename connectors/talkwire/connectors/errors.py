"""The connector error tree.

Every error a connector raises is a :class:`ConnectorError`. Each class carries
the gRPC status it maps to at the edge (``code``) and whether the caller may
retry (``retriable``). The server translates them in one place
(``talkwire.server.errors.status_for``).
"""

from __future__ import annotations

import grpc

__all__ = [
    "BackendError",
    "CircuitOpenError",
    "ConfigError",
    "ConnectorConfigError",
    "ConnectorError",
    "ConnectorNotFoundError",
    "ConnectorTimeoutError",
    "ConnectorUnavailableError",
    "OperationNotFoundError",
    "RejectedInputError",
    "ResultNotFoundError",
]


class ConnectorError(Exception):
    """Base class of every connector error."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retriable: bool = False

    def __init__(self, message: str, *, connector: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.connector = connector
        self.operation = operation


class ConnectorNotFoundError(ConnectorError):
    """No connector with that name is configured."""

    code = grpc.StatusCode.NOT_FOUND


class OperationNotFoundError(ConnectorError):
    """The connector has no operation with that name."""

    code = grpc.StatusCode.NOT_FOUND


class ResultNotFoundError(ConnectorError):
    """The backend answered that the requested record does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class RejectedInputError(ConnectorError):
    """Parameters are missing, of the wrong type, or refused by policy (SSRF, read-only)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ConnectorTimeoutError(ConnectorError):
    """The call did not finish within its total deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retriable = True


class ConnectorUnavailableError(ConnectorError):
    """The backend cannot be reached or answered with a transient failure."""

    code = grpc.StatusCode.UNAVAILABLE
    retriable = True


class CircuitOpenError(ConnectorUnavailableError):
    """The connector's circuit breaker is open: the call failed fast."""


class BackendError(ConnectorError):
    """The backend answered with a permanent error (4xx, SQL error, GraphQL errors)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ConfigError(ValueError):
    """A configuration section is invalid (raised at start, never per call).

    The one config error of the whole tree: the server's
    ``talkwire.server.errors.ConfigError`` is this class. ``message`` is the
    whole line a user sees, ``"<dotted key> (<file>, line <n>): <what is wrong>"``
    (the location only when the section came from a YAML file); ``key`` is the
    dotted key alone.
    """

    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    retriable: bool = False

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.key = key


class ConnectorConfigError(ConfigError):
    """A connector's configuration section is invalid.

    ``key`` is the dotted path of the offending setting, e.g.
    ``connectors.crm.operations.order_status.sql``; ``reason`` what is wrong
    with it; ``location`` the ``(file, line N)`` when known.
    """

    def __init__(self, key: str, message: str, *, location: str = "") -> None:
        where = f"{key} {location}" if key and location else (key or location)
        super().__init__(f"{where}: {message}" if where else message, key=key)
        self.reason = message
        self.location = location

    def located(self, location: str) -> ConnectorConfigError:
        """The same error with ``location`` (a no-op when it has one already)."""
        if self.location or not location:
            return self
        return ConnectorConfigError(self.key, self.reason, location=location)
