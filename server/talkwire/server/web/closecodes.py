"""How a session's final status becomes a WebSocket close code.

``4000 + gRPC code`` when the client should not retry as is, ``4100 + gRPC code``
when it should reconnect and resume (the status's ``retriable`` flag, the
``talkwire-retriable`` trailer of gRPC); ``1000`` for a normal end. The close
reason is the status message (cut to the 123 bytes a close frame allows).
The README has the table.
"""

from __future__ import annotations

import grpc

from talkwire.server.errors import Status

__all__ = ["NORMAL", "close_code", "close_reason", "status_of_close"]

NORMAL = 1000
_BASE = 4000
_RETRIABLE = 4100
_MAX_REASON = 123


def close_code(status: Status | None) -> int:
    """The close code for ``status`` (``None`` or OK: 1000)."""
    if status is None or status.code == grpc.StatusCode.OK:
        return NORMAL
    number = int(status.code.value[0])
    return (_RETRIABLE if status.retriable else _BASE) + number


def close_reason(status: Status | None) -> str:
    """The status message as a close reason (at most 123 bytes of UTF-8)."""
    if status is None:
        return ""
    data = status.message.encode()[:_MAX_REASON]
    return data.decode(errors="ignore")


def status_of_close(code: int) -> tuple[grpc.StatusCode, bool] | None:
    """The (status code, retriable) a close code stands for; ``None`` outside the table."""
    for base, retriable in ((_RETRIABLE, True), (_BASE, False)):
        number = code - base
        if 0 < number <= 16:
            for status in grpc.StatusCode:
                if status.value[0] == number:
                    return status, retriable
    return None
