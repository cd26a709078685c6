"""Connector contract and built-in connectors (``sql``, ``rest``, ``graphql``).

See :mod:`talkwire.connectors.base` for the contract,
:mod:`talkwire.connectors.registry` for loading and calling connectors, and
each connector module for its configuration.
"""

from talkwire.connectors.base import CallContext, Connector, ConnectorFactory, Operation, Parameter
from talkwire.connectors.errors import (
    BackendError,
    CircuitOpenError,
    ConnectorConfigError,
    ConnectorError,
    ConnectorNotFoundError,
    ConnectorTimeoutError,
    ConnectorUnavailableError,
    OperationNotFoundError,
    RejectedInputError,
    ResultNotFoundError,
)

__all__ = [
    "BackendError",
    "CallContext",
    "CircuitOpenError",
    "Connector",
    "ConnectorConfigError",
    "ConnectorError",
    "ConnectorFactory",
    "ConnectorNotFoundError",
    "ConnectorTimeoutError",
    "ConnectorUnavailableError",
    "Operation",
    "OperationNotFoundError",
    "Parameter",
    "RejectedInputError",
    "ResultNotFoundError",
]
