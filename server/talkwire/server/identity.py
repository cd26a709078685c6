"""The caller identity carried by every session and admin call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ADMIN_ROLE", "Identity"]

ADMIN_ROLE = "admin"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the subject, its claims and its roles.

    ``claims`` are what the authenticator verified (JWT claims, or the static
    token's configured claims); dialogue templates read them as ``{user.X}``.
    """

    subject: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "claims": dict(self.claims), "roles": sorted(self.roles)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Identity:
        return cls(
            subject=str(data.get("subject", "")),
            claims=dict(data.get("claims") or {}),
            roles=frozenset(data.get("roles") or ()),
        )
