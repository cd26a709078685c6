"""The caller scope: how templates and connectors see who is calling.

Every template that may read the caller (bot parameters and replies, policy
rules, connector paths / bodies / variables, cache keys) sees the same
``user`` mapping, built by :func:`caller_scope`: the caller's verified claims,
with the subject as ``user.sub`` (``{user.sub}``, ``{user.customer_id}``). The
subject always wins over a ``sub`` claim, so ``{user.sub}`` is the identity the
session belongs to even when ``auth.subject_claim`` names another claim.

``{user.subject}`` is the deprecated spelling of ``{user.sub}``: templates
using it render the same value, and the first one compiled logs a
``DeprecationWarning``. SQL binds follow suit (``:user_sub``, deprecated
``:user_subject``).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping
from typing import Any

from talkwire.connectors.base import CallContext

__all__ = [
    "DEPRECATED_SUBJECT_FIELD",
    "SUBJECT_CLAIM",
    "SUBJECT_FIELD",
    "caller_scope",
    "canonical_field",
    "context_scope",
]

log = logging.getLogger(__name__)

SUBJECT_CLAIM = "sub"
SUBJECT_FIELD = f"user.{SUBJECT_CLAIM}"
DEPRECATED_SUBJECT_FIELD = "user.subject"


def caller_scope(subject: str, claims: Mapping[str, Any]) -> dict[str, Any]:
    """The ``user`` mapping templates read: ``claims`` plus the subject as ``sub``."""
    user = dict(claims)
    if subject:
        user[SUBJECT_CLAIM] = subject
    return user


def context_scope(ctx: CallContext | None) -> dict[str, Any]:
    """:func:`caller_scope` of a call's context (empty without one)."""
    if ctx is None:
        return {}
    return caller_scope(ctx.subject, ctx.claims)


def canonical_field(path: str) -> str:
    """The documented spelling of a template field path (``user.subject`` -> ``user.sub``)."""
    old = DEPRECATED_SUBJECT_FIELD
    if path == old or path.startswith(old + "."):
        _warn_deprecated(old, SUBJECT_FIELD)
        return SUBJECT_FIELD + path[len(old) :]
    return path


@functools.cache
def _warn_deprecated(old: str, new: str) -> None:
    """Log (and raise as a ``DeprecationWarning``) once per process and spelling."""
    message = f"template field {{{old}}} is deprecated; write {{{new}}} (same value)"
    log.warning("%s", message)
    warnings.warn(message, DeprecationWarning, stacklevel=7)
