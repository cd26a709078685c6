"""Authenticators: who is calling, from the call metadata.

``none`` (development: every caller is the configured demo identity),
``static`` (bearer tokens from config, env or files) and ``jwt`` (PyJWT:
HS256/RS256/ES256, a key, key file, JWKS file or JWKS URL; ``iss``/``aud``/``exp``
checked; ``alg=none`` refused).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import jwt

from talkwire.connectors.sections import resolve_secret
from talkwire.server.config import AuthConfig
from talkwire.server.errors import ConfigError, UnauthenticatedError
from talkwire.server.identity import Identity

__all__ = [
    "Authenticator",
    "JwtAuthenticator",
    "NoneAuthenticator",
    "StaticTokenAuthenticator",
    "bearer_token",
    "build_authenticator",
]

log = logging.getLogger(__name__)

Metadata = Iterable[tuple[str, str | bytes]]


class Authenticator(Protocol):
    """Turns call metadata into an :class:`Identity` or raises ``UnauthenticatedError``."""

    def authenticate(self, metadata: Metadata) -> Identity: ...


def bearer_token(metadata: Metadata) -> str | None:
    """The token of an ``authorization: Bearer ...`` header, if any."""
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise UnauthenticatedError("authorization header must be 'Bearer <token>'")
    return None


class NoneAuthenticator:
    """Development only: every caller is the configured demo identity."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def authenticate(self, metadata: Metadata) -> Identity:
        return self.identity


class StaticTokenAuthenticator:
    """Bearer tokens listed in the config, each mapped to a subject, claims and roles."""

    def __init__(self, tokens: Mapping[str, Identity]) -> None:
        self._tokens = dict(tokens)

    def authenticate(self, metadata: Metadata) -> Identity:
        token = bearer_token(metadata)
        if token is None:
            raise UnauthenticatedError("missing bearer token")
        for known, identity in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return identity
        raise UnauthenticatedError("invalid token")


def _roles_from_claim(value: object, claim: str, subject: str) -> frozenset[str]:
    """The roles a verified token's ``claim`` grants.

    A list of strings, or one space-separated string (as OAuth scopes are);
    a missing or null claim grants nothing. Any other shape (a mapping, a
    number, a list holding anything but strings) grants nothing at all and is
    logged with its type only, never the token or the claim's values.
    """
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(r, str) for r in value):
        return frozenset(r for r in value if r)
    log.warning(
        "token of %r: claim %r is a %s, not a list of strings or a space-separated string; "
        "it grants no roles",
        subject,
        claim,
        type(value).__name__,
    )
    return frozenset()


def _configured_roles(value: object, key: str) -> frozenset[str]:
    """A static token's ``roles``: a list of strings or a space-separated string, else refused."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple) and all(isinstance(r, str) for r in value):
        return frozenset(r for r in value if r)
    raise ConfigError(f"{key}: must be a list of strings or a space-separated string")


class JwtAuthenticator:
    """Verifies JWTs with PyJWT; ``alg=none`` is never accepted."""

    def __init__(self, config: AuthConfig) -> None:
        algorithms = [a for a in config.algorithms if a.lower() != "none"]
        if not algorithms:
            raise ConfigError("auth.algorithms: at least one algorithm other than none is needed")
        self._algorithms = algorithms
        self._config = config
        self._key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_client: jwt.PyJWKClient | None = None
        if config.key:
            self._key = resolve_secret(config.key, "auth.key")
        elif config.key_file:
            self._key = resolve_secret("file:" + config.key_file, "auth.key_file")
        elif config.jwks_file:
            try:
                self._jwks = jwt.PyJWKSet.from_dict(json.loads(Path(config.jwks_file).read_text()))
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(f"auth.jwks_file: cannot load {config.jwks_file}: {exc}") from exc
        elif config.jwks_url:
            self._jwks_client = jwt.PyJWKClient(config.jwks_url, cache_keys=True)
        else:
            raise ConfigError("auth: jwt needs one of key, key_file, jwks_file or jwks_url")

    def _signing_key(self, token: str) -> Any:
        if self._key is not None:
            return self._key
        if self._jwks_client is not None:
            return self._jwks_client.get_signing_key_from_jwt(token).key
        if self._jwks is None:
            raise UnauthenticatedError("no verification key configured")
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._jwks.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise UnauthenticatedError("token signed with an unknown key")

    def authenticate(self, metadata: Metadata) -> Identity:
        token = bearer_token(metadata)
        if token is None:
            raise UnauthenticatedError("missing bearer token")
        cfg = self._config
        try:
            header = jwt.get_unverified_header(token)
            if str(header.get("alg", "")).lower() == "none":
                raise UnauthenticatedError("unsigned tokens (alg=none) are refused")
            options: dict[str, Any] = {"require": ["exp", cfg.subject_claim]}
            claims = jwt.decode(
                token,
                self._signing_key(token),
                algorithms=self._algorithms,
                audience=cfg.audience or None,
                issuer=cfg.issuer or None,
                leeway=cfg.leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError as exc:
            raise UnauthenticatedError("token expired") from exc
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError(f"invalid token: {exc}") from exc
        subject = str(claims[cfg.subject_claim])
        return Identity(
            subject=subject,
            claims=claims,
            roles=_roles_from_claim(claims.get(cfg.roles_claim), cfg.roles_claim, subject),
        )


def build_authenticator(config: AuthConfig) -> Authenticator:
    """Build the authenticator named by ``auth.kind``."""
    if config.kind == "none":
        log.warning(
            "AUTHENTICATION IS OFF (auth.kind=none): every caller acts as %r with admin rights. "
            "Development only.",
            config.demo_subject,
        )
        claims = {"sub": config.demo_subject, **dict(config.demo_claims)}
        return NoneAuthenticator(
            Identity(config.demo_subject, claims, frozenset(config.demo_roles))
        )
    if config.kind == "static":
        if not config.tokens:
            raise ConfigError("auth.tokens: static auth needs at least one token")
        tokens: dict[str, Identity] = {}
        for raw_token, spec in config.tokens.items():
            # A literal token is a secret: name it by its first characters only.
            shown = raw_token if raw_token.startswith(("env:", "file:")) else raw_token[:4] + "..."
            if not isinstance(spec, Mapping) or "subject" not in spec:
                raise ConfigError(f"auth.tokens.{shown}: needs a subject")
            subject = str(spec["subject"])
            claims = {"sub": subject, **dict(spec.get("claims") or {})}
            tokens[resolve_secret(raw_token, f"auth.tokens.{shown}")] = Identity(
                subject, claims, _configured_roles(spec.get("roles"), f"auth.tokens.{shown}.roles")
            )
        return StaticTokenAuthenticator(tokens)
    if config.kind == "jwt":
        return JwtAuthenticator(config)
    raise ConfigError(f"auth.kind: unknown kind {config.kind!r} (known: none, static, jwt)")
