"""What ChatClient and AdminClient share: the channel and the call metadata."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
import grpc.aio

__all__ = ["ServiceClient", "call_metadata", "channel_credentials", "open_channel"]

StubT = TypeVar("StubT")


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


class ServiceClient(Generic[StubT]):
    """A typed client of one gRPC service; an async context manager owning its channel.

    Subclasses name the service (``_service``, for messages) and build the stub from a
    channel (``_make_stub``); the channel opens on first use.
    """

    _service = "client"

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = 30.0,
    ) -> None:
        self.target = target
        self._credentials = credentials
        self._options = list(options)
        self._metadata = call_metadata(token, metadata)
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: StubT | None = None
        self._closed = False

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata every RPC carries (the bearer token among them)."""
        return self._metadata

    async def __aenter__(self) -> Self:
        self._get_stub()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    def _make_stub(self, channel: grpc.aio.Channel) -> StubT:
        raise NotImplementedError

    def _get_stub(self) -> StubT:
        if self._closed:
            from talkwire.clients.errors import SessionClosed

            raise SessionClosed(f"the {self._service} is closed")
        if self._stub is None:
            self._channel = open_channel(self.target, self._credentials, self._options)
            self._stub = self._make_stub(self._channel)
        return self._stub
