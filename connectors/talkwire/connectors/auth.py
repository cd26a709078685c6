"""Authentication for HTTP connectors.

``auth`` section, one of::

    {type: bearer, token: env:NAME}            # or "...", or file:/path
    {type: api_key, name: X-API-Key, value: "...", in: header}   # or in: query
    {type: basic, username: "...", password: file:/run/secrets/erp}
    {type: oauth2, token_url: "...", client_id: "...", client_secret: "...",
     scope: "a b", audience: "...", auth_method: client_secret_basic, refresh_margin: 30}

Every secret (``token``, ``password``, ``value``, ``client_secret``) follows the
one rule of :mod:`talkwire.connectors.sections`: inline, ``env:NAME`` (unset or
empty is an error naming the key) or ``file:PATH``. The old ``<key>_env: NAME``
and ``<key>_file: PATH`` are still read, with a deprecation warning in the log.
OAuth2 client-credentials tokens are cached and refreshed ``refresh_margin``
seconds before they expire, and once more when the backend answers 401.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from talkwire.connectors.errors import (
    BackendError,
    ConnectorConfigError,
    ConnectorUnavailableError,
)
from talkwire.connectors.spec import check_keys, get_number, secret

__all__ = ["ApiKeyAuth", "Auth", "OAuth2ClientCredentials", "StaticHeaderAuth", "build_auth"]


class Auth:
    """No authentication; base class of the others."""

    refreshable = False

    async def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        """Add credentials to the outgoing request's headers / query."""

    def invalidate(self) -> None:
        """Forget cached credentials (after a 401)."""


class StaticHeaderAuth(Auth):
    """Bearer token or basic credentials: one fixed header."""

    def __init__(self, header: str, value: str) -> None:
        self.header = header
        self.value = value

    async def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers[self.header] = self.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(header={self.header!r}, value=***)"


class ApiKeyAuth(Auth):
    def __init__(self, name: str, value: str, location: str) -> None:
        self.name = name
        self.value = value
        self.location = location

    async def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        if self.location == "query":
            params[self.name] = self.value
        else:
            headers[self.name] = self.value

    def __repr__(self) -> str:
        return f"ApiKeyAuth(name={self.name!r}, in={self.location!r}, value=***)"


class OAuth2ClientCredentials(Auth):
    """OAuth2 client-credentials grant with a cached token."""

    refreshable = True

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str = "",
        audience: str = "",
        auth_method: str = "client_secret_basic",
        refresh_margin: float = 30.0,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.audience = audience
        self.auth_method = auth_method
        self.refresh_margin = refresh_margin
        self.client = client
        self.clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"
        )

    def _valid(self) -> bool:
        return self._token is not None and self.clock() < self._expires_at - self.refresh_margin

    async def token(self) -> str:
        token = self._token
        if token is not None and self._valid():
            return token
        async with self._lock:
            token = self._token
            if token is not None and self._valid():
                return token
            return await self._fetch()

    async def _fetch(self) -> str:
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        if self.audience:
            data["audience"] = self.audience
        headers = {"Accept": "application/json"}
        if self.auth_method == "client_secret_post":
            data["client_id"] = self.client_id
            data["client_secret"] = self._client_secret
        else:
            raw = f"{self.client_id}:{self._client_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        self.fetches += 1
        try:
            resp = await self.client.post(self.token_url, data=data, headers=headers)
        except httpx.HTTPError as exc:
            raise ConnectorUnavailableError(f"OAuth2 token endpoint unreachable: {exc}") from None
        if resp.status_code >= 500:
            raise ConnectorUnavailableError(f"OAuth2 token endpoint answered {resp.status_code}")
        if resp.status_code != 200:
            raise BackendError(
                f"OAuth2 token request refused ({resp.status_code}): check client_id/secret"
            )
        try:
            body = resp.json()
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise BackendError("OAuth2 token endpoint returned no access_token") from None
        if not isinstance(token, str) or not token:
            raise BackendError("OAuth2 token endpoint returned no access_token")
        self._token = token
        self._expires_at = self.clock() + expires_in
        return token

    async def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers["Authorization"] = "Bearer " + await self.token()

    def invalidate(self) -> None:
        self._token = None
        self._expires_at = 0.0


def build_auth(raw: Any, where: str, client: httpx.AsyncClient) -> Auth:
    """Build the auth strategy of an ``auth`` section (``None`` -> no auth)."""
    if raw is None or raw is False:
        return Auth()
    if not isinstance(raw, Mapping):
        raise ConnectorConfigError(where, "must be a mapping with a 'type'")
    kind = raw.get("type")
    secrets_of = {
        "bearer": ("token",),
        "basic": ("password",),
        "api_key": ("value",),
        "oauth2": ("client_secret",),
    }
    if kind not in secrets_of:
        raise ConnectorConfigError(
            f"{where}.type", f"unknown auth type {kind!r}; one of bearer, api_key, basic, oauth2"
        )
    secret_keys = {f"{k}{suffix}" for k in secrets_of[kind] for suffix in ("", "_env", "_file")}
    if kind == "bearer":
        check_keys(raw, {"type"} | secret_keys, where)
        return StaticHeaderAuth("Authorization", "Bearer " + secret(raw, "token", where))
    if kind == "basic":
        check_keys(raw, {"type", "username"} | secret_keys, where)
        user = str(raw.get("username", ""))
        if not user or ":" in user:
            raise ConnectorConfigError(f"{where}.username", "required, without ':'")
        pair = f"{user}:{secret(raw, 'password', where)}".encode()
        return StaticHeaderAuth("Authorization", "Basic " + base64.b64encode(pair).decode())
    if kind == "api_key":
        check_keys(raw, {"type", "name", "in"} | secret_keys, where)
        location = raw.get("in", "header")
        if location not in ("header", "query"):
            raise ConnectorConfigError(f"{where}.in", "header or query")
        name = str(raw.get("name") or ("X-API-Key" if location == "header" else "api_key"))
        return ApiKeyAuth(name, secret(raw, "value", where), location)
    check_keys(
        raw,
        {"type", "token_url", "client_id", "scope", "audience", "auth_method", "refresh_margin"}
        | secret_keys,
        where,
    )
    token_url = raw.get("token_url")
    if not isinstance(token_url, str) or not token_url.startswith(("http://", "https://")):
        raise ConnectorConfigError(f"{where}.token_url", "required http(s) URL")
    method = raw.get("auth_method", "client_secret_basic")
    if method not in ("client_secret_basic", "client_secret_post"):
        raise ConnectorConfigError(
            f"{where}.auth_method", "client_secret_basic or client_secret_post"
        )
    scope = raw.get("scope", "")
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    return OAuth2ClientCredentials(
        token_url=token_url,
        client_id=str(raw.get("client_id") or ""),
        client_secret=secret(raw, "client_secret", where),
        scope=str(scope),
        audience=str(raw.get("audience", "")),
        auth_method=method,
        refresh_margin=get_number(raw, "refresh_margin", 30.0, where),
        client=client,
    )
