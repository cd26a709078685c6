"""talkwire Python client library: ``ChatClient`` (Converse sessions) and ``AdminClient``.

Imports only ``talkwire.v1`` and third-party packages, never the server.
"""

from talkwire.clients.admin import AdminClient, change_event
from talkwire.clients.chat import ChatClient, ChatSession, SessionState
from talkwire.clients.convert import from_struct, from_value, to_struct, to_value
from talkwire.clients.errors import (
    InvalidArgument,
    ProtocolError,
    ReconnectExhausted,
    ResumeWindowExceeded,
    RpcError,
    SessionClosed,
    SessionEnded,
    SessionNotFound,
    SessionPermissionDenied,
    SessionSuperseded,
    TalkwireError,
    Unauthenticated,
)
from talkwire.clients.reconnect import (
    NEVER_RETRIED,
    RETRIABLE_CODES,
    ConnectionEvent,
    ConnectionEventKind,
    ReconnectPolicy,
)

__all__ = [
    "NEVER_RETRIED",
    "RETRIABLE_CODES",
    "AdminClient",
    "ChatClient",
    "ChatSession",
    "ConnectionEvent",
    "ConnectionEventKind",
    "InvalidArgument",
    "ProtocolError",
    "ReconnectExhausted",
    "ReconnectPolicy",
    "ResumeWindowExceeded",
    "RpcError",
    "SessionClosed",
    "SessionEnded",
    "SessionNotFound",
    "SessionPermissionDenied",
    "SessionState",
    "SessionSuperseded",
    "TalkwireError",
    "Unauthenticated",
    "change_event",
    "from_struct",
    "from_value",
    "to_struct",
    "to_value",
]
