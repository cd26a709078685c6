"""SSRF guard for HTTP connectors.

The check runs *at connect time*, inside the HTTP client's network backend:
the host name is resolved once with ``loop.getaddrinfo``, every resolved
address is checked, and the socket is opened to the checked address itself
(so a DNS answer cannot change between check and connect). Loopback,
link-local, private, unique-local, unspecified, multicast, reserved and other
non-global addresses are refused unless the connector sets
``allow_private: true`` or lists the host name in ``allow_hosts``. Because the
guard sits below the client, every connection is covered: the first request,
OAuth2 token requests and each redirect hop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

__all__ = ["BlockedAddressError", "GuardedBackend", "guarded_transport", "is_blocked_address"]


class BlockedAddressError(Exception):
    """A connection to a refused address was attempted (and not made)."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(
            f"refused to connect to {host} ({address}): private, loopback or link-local "
            "addresses need allow_private or allow_hosts"
        )
        self.host = host
        self.address = address


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_blocked_address(address: str | IPAddress) -> bool:
    """True for every address that is not a public unicast address."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None and is_blocked_address(mapped):
            return True
        if ip.teredo is not None:
            return True
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or not ip.is_global
    )


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks, then connects to the checked IP."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        allow_hosts: Iterable[str] = (),
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.allow_hosts = frozenset(h.lower().strip("[]") for h in allow_hosts)
        self.inner: httpcore.AsyncNetworkBackend = inner or httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return its addresses, refusing blocked ones."""
        bare = host.strip("[]")
        try:
            literal: IPAddress | None = ipaddress.ip_address(bare)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {bare}: {exc}") from exc
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if self.allow_private or bare.lower() in self.allow_hosts:
            return addresses
        for addr in addresses:
            if is_blocked_address(addr.split("%")[0]):
                raise BlockedAddressError(bare, addr)
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port)
        last: Exception | None = None
        for addr in addresses:
            try:
                return await self.inner.connect_tcp(
                    addr, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host}")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - never configured
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_transport(
    *,
    allow_private: bool,
    allow_hosts: Iterable[str] = (),
    limits: httpx.Limits | None = None,
    verify: bool | str = True,
    http2: bool = False,
    backend: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through :class:`GuardedBackend`."""
    limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
    transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits, http2=http2)
    ssl_context = transport._pool._ssl_context
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=http2,
        network_backend=backend
        or GuardedBackend(allow_private=allow_private, allow_hosts=allow_hosts),
    )
    return transport
