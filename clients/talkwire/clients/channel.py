"""What ChatClient and AdminClient share: the channel and the call metadata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

__all__ = ["call_metadata", "open_channel"]


def call_metadata(
    token: str | None, metadata: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    """``metadata`` plus ``authorization: Bearer <token>`` when a token is given."""
    bearer = (("authorization", f"Bearer {token}"),) if token else ()
    return (*metadata, *bearer)


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
) -> grpc.aio.Channel:
    """A TLS channel with ``credentials``, otherwise plaintext."""
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=list(options))
    return grpc.aio.insecure_channel(target, options=list(options))
