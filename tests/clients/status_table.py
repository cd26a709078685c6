"""Every stream-ending status (and trailer) the server can send, and what a client must do.

Shared by the async client's tests (scripted grpc.aio server) and the blocking
client's (grpcio-testing's scripted channel): both must react the same way.
``trailer`` is the ``talkwire-retriable`` value (``None``: no trailer, as when
grpc-python masks the server's status with ``INTERNAL "Internal error from Core"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from talkwire.clients.errors import (
    InvalidArgument,
    ResumeWindowExceeded,
    SessionEnded,
    SessionNotFound,
    SessionPermissionDenied,
    SessionSuperseded,
    Unauthenticated,
)

__all__ = ["ENDINGS", "Ending"]

S = grpc.StatusCode


@dataclass(frozen=True)
class Ending:
    code: grpc.StatusCode
    details: str
    trailer: str | None
    resumes: bool
    error: type[SessionEnded] | None = None

    @property
    def trailers(self) -> tuple[tuple[str, str], ...]:
        return () if self.trailer is None else (("talkwire-retriable", self.trailer),)

    def __str__(self) -> str:
        return f"{self.code.name}-{self.trailer}"


ENDINGS = [
    Ending(S.UNAVAILABLE, "server is shutting down; resume on another server", "1", True),
    Ending(S.RESOURCE_EXHAUSTED, "the client is not reading fast enough", "1", True),
    Ending(S.DEADLINE_EXCEEDED, "the write timed out", "1", True),
    Ending(S.DATA_LOSS, "frames missing; resume", "1", True),
    Ending(S.INTERNAL, "Internal error from Core", None, True),  # a racing write hid the status
    Ending(S.CANCELLED, "connection dropped", None, True),
    Ending(S.INTERNAL, "internal error", "0", False, SessionEnded),  # a genuine server error
    Ending(S.UNAVAILABLE, "do not come back", "0", False, SessionEnded),  # the trailer vetoes
    Ending(S.OUT_OF_RANGE, "resume beyond the retained window", "0", False, ResumeWindowExceeded),
    Ending(S.FAILED_PRECONDITION, "retained window passed", "0", False, ResumeWindowExceeded),
    Ending(S.ABORTED, "superseded by a newer attachment", "0", False, SessionSuperseded),
    Ending(S.NOT_FOUND, "session closed", "0", False, SessionNotFound),
    Ending(S.PERMISSION_DENIED, "wrong resume token", "0", False, SessionPermissionDenied),
    Ending(S.UNAUTHENTICATED, "token expired", "0", False, Unauthenticated),
    Ending(S.UNAUTHENTICATED, "token expired", "1", False, Unauthenticated),  # never retried
    Ending(S.INVALID_ARGUMENT, "frame too large", "0", False, InvalidArgument),
    Ending(S.UNKNOWN, "no status", None, False, SessionEnded),
]
