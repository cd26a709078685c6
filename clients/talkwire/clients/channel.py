"""What ChatClient and AdminClient share: the channel and the call metadata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

__all__ = ["call_metadata", "channel_credentials", "open_channel"]


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


def channel_credentials(
    *,
    tls: bool = False,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files (``ca_file``/``cert_file`` imply TLS); ``None``: plaintext."""
    if not (tls or ca_file or cert_file):
        return None

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as fh:
            return fh.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file),
        private_key=read(key_file),
        certificate_chain=read(cert_file),
    )
