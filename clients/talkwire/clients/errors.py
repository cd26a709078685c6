"""The client library's error tree.

Every error raised by :mod:`talkwire.clients` for a failed RPC is a
:class:`RpcError` carrying the gRPC status ``code`` and ``details``::

    TalkwireError
    ├── SessionClosed            the session was closed (by you, or ended cleanly by the server)
    ├── ProtocolError            the server broke the Converse protocol (e.g. a seq gap)
    └── RpcError                 an RPC ended with a non-OK status (code, details)
        └── SessionEnded         a Converse stream ended and will not be resumed
            ├── SessionSuperseded       ABORTED: a newer attachment took the session over
            ├── ResumeWindowExceeded    OUT_OF_RANGE / FAILED_PRECONDITION: resume would gap
            ├── SessionNotFound         NOT_FOUND: unknown or expired session
            ├── SessionPermissionDenied PERMISSION_DENIED: wrong resume token or subject
            ├── Unauthenticated         UNAUTHENTICATED: missing / invalid credentials
            ├── InvalidArgument         INVALID_ARGUMENT: the server refused a frame
            └── ReconnectExhausted      a retriable status, but the reconnect policy gave up

The admin client raises plain :class:`RpcError` (use ``.code``).
"""

from __future__ import annotations

import grpc

__all__ = [
    "InvalidArgument",
    "ProtocolError",
    "ReconnectExhausted",
    "ResumeWindowExceeded",
    "RpcError",
    "SessionClosed",
    "SessionEnded",
    "SessionNotFound",
    "SessionPermissionDenied",
    "SessionSuperseded",
    "TalkwireError",
    "Unauthenticated",
    "rpc_error_from",
    "session_ended_from",
]


class TalkwireError(Exception):
    """Base class of every error raised by ``talkwire.clients``."""


class SessionClosed(TalkwireError):
    """The session is closed: ``aclose()`` was called, or the server ended the stream with OK."""


class ProtocolError(TalkwireError):
    """The server violated the Converse protocol (missing ``opened``, a gap in ``seq``)."""


class RpcError(TalkwireError):
    """An RPC ended with a non-OK gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}" if details else code.name)

    @property
    def code_name(self) -> str:
        """The status name, e.g. ``"UNAVAILABLE"``."""
        return self.code.name


class SessionEnded(RpcError):
    """The Converse stream ended with a status the client does not retry."""


class SessionSuperseded(SessionEnded):
    """ABORTED: a newer attachment of the same session took over this stream."""


class ResumeWindowExceeded(SessionEnded):
    """OUT_OF_RANGE / FAILED_PRECONDITION: ``last_seq`` is outside the retained window."""


class SessionNotFound(SessionEnded):
    """NOT_FOUND: the session is unknown or expired."""


class SessionPermissionDenied(SessionEnded):
    """PERMISSION_DENIED: wrong resume token, or a different subject."""


class Unauthenticated(SessionEnded):
    """UNAUTHENTICATED: missing, invalid or expired credentials."""


class InvalidArgument(SessionEnded):
    """INVALID_ARGUMENT: the server refused a frame (e.g. oversized, malformed)."""


class ReconnectExhausted(SessionEnded):
    """The stream kept failing with retriable statuses until the reconnect policy gave up.

    ``code``/``details`` are those of the last failure; ``attempts`` is how many
    reconnect attempts were made.
    """

    def __init__(self, code: grpc.StatusCode, details: str = "", *, attempts: int = 0) -> None:
        super().__init__(code, details)
        self.attempts = attempts


_SESSION_ERRORS: dict[grpc.StatusCode, type[SessionEnded]] = {
    grpc.StatusCode.ABORTED: SessionSuperseded,
    grpc.StatusCode.OUT_OF_RANGE: ResumeWindowExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: ResumeWindowExceeded,
    grpc.StatusCode.NOT_FOUND: SessionNotFound,
    grpc.StatusCode.PERMISSION_DENIED: SessionPermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
}


def _code_and_details(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    code = exc.code()
    return (code if code is not None else grpc.StatusCode.UNKNOWN), exc.details() or ""


def session_ended_from(code: grpc.StatusCode, details: str = "") -> SessionEnded:
    """The typed :class:`SessionEnded` for a Converse stream status."""
    return _SESSION_ERRORS.get(code, SessionEnded)(code, details)


def rpc_error_from(exc: grpc.aio.AioRpcError) -> RpcError:
    """Wrap a grpc ``AioRpcError`` into an :class:`RpcError`."""
    code, details = _code_and_details(exc)
    return RpcError(code, details)
