"""The server's error tree and the one place errors become gRPC statuses.

Each class carries the ``grpc.StatusCode`` it maps to and whether the caller
may retry. ``ConfigError`` is the one config error of the whole tree, defined
beside the reader in ``talkwire.connectors`` (which must not import the
server) and re-exported here. :func:`status_for` also understands the connectors' error tree
(``talkwire.connectors.errors``), so the edge never sends ``UNKNOWN`` or a
traceback: anything unexpected becomes ``INTERNAL`` with a generic message.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from talkwire.connectors.errors import ConfigError, ConnectorError

__all__ = [
    "AlreadyExistsError",
    "ConfigError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "Status",
    "SupersededError",
    "TalkwireError",
    "UnauthenticatedError",
    "UnavailableError",
    "status_for",
]


class TalkwireError(Exception):
    """Base class of every error the server raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retriable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(TalkwireError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnauthenticatedError(TalkwireError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(TalkwireError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFoundError(TalkwireError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(TalkwireError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(TalkwireError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRangeError(TalkwireError):
    """Resume asked for frames older than the retained window."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhaustedError(TalkwireError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retriable = True


class UnavailableError(TalkwireError):
    code = grpc.StatusCode.UNAVAILABLE
    retriable = True


class SupersededError(TalkwireError):
    """A newer attachment took over this session."""

    code = grpc.StatusCode.ABORTED


class DeadlineExceededError(TalkwireError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retriable = True


class InternalError(TalkwireError):
    code = grpc.StatusCode.INTERNAL


@dataclass(frozen=True, slots=True)
class Status:
    """A status ready for the wire: code, client-safe message, retriable flag."""

    code: grpc.StatusCode
    message: str
    retriable: bool


def status_for(exc: BaseException) -> Status:
    """Translate any exception into a wire status (never UNKNOWN, never a traceback)."""
    if isinstance(exc, TalkwireError | ConnectorError | ConfigError):
        return Status(exc.code, exc.message, exc.retriable)
    return Status(grpc.StatusCode.INTERNAL, "internal error", False)
