"""Subscription policy from config: which keys an identity may subscribe to.

::

    policy:
      default: deny                       # deny | allow (for keys no rule matches)
      rules:
        - key: "customer:{user.customer_id}"     # always: the caller's own customer
        - key: "order:{order_id}"                # binds order_id ...
          check:                                 # ... and asks a connector
            connector: crm
            operation: order_owner
            params: {order_id: "{order_id}"}
            expect: {customer_id: "{user.customer_id}"}

A rule's ``key`` is a pattern (no filters): ``{user.X}`` (the caller's claim
``X``; ``{user.sub}`` is the subject) must equal that part of the key; any other
``{name}`` binds the text there (non-empty, no ``:``) as a variable. A rule
without ``check`` allows every key it matches. With ``check``, the connector
operation is invoked with the rendered ``params`` (as the caller) and must
return a row (a mapping, or the first of a list of rows) whose fields equal the
rendered ``expect`` values (compared as text); no row, a mismatch or a
non-retriable connector error deny. Retriable connector errors propagate
(``UNAVAILABLE``: the client may retry). The first rule that allows wins.

With no ``policy`` section the default is deny for every key: a deployment
must say what may be subscribed (the embedded demo config allows
``customer:{user.customer_id}`` and ``order:{order_id}`` checked with
``crm.order_owner``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from talkwire.connectors.base import CallContext
from talkwire.connectors.caller import caller_scope
from talkwire.connectors.errors import ConnectorError
from talkwire.connectors.sections import Section
from talkwire.connectors.templates import (
    MISSING,
    TemplateError,
    compile_template,
    lookup,
    render_value,
    stringify,
)
from talkwire.server.errors import ConfigError
from talkwire.server.identity import Identity

__all__ = ["ConfigPolicy", "PolicyRule", "from_config"]

log = logging.getLogger(__name__)


class Invoker(Protocol):
    """What the policy needs from the connector registry."""

    async def invoke(
        self,
        connector: str,
        operation: str,
        params: Mapping[str, Any] | None = None,
        ctx: CallContext | None = None,
    ) -> Any: ...


def _identity_values(identity: Identity) -> dict[str, Any]:
    return {"user": caller_scope(identity.subject, identity.claims), "subject": identity.subject}


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ``policy.rules`` entry."""

    pattern: str
    parts: tuple[str | tuple[str], ...]
    connector: str = ""
    operation: str = ""
    params: Mapping[str, Any] | None = None
    expect: Mapping[str, Any] | None = None

    # Where the rule's check was configured ("policy.rules[0].check (talkwire.yaml, line 9)").
    where: str = field(default="", compare=False)

    @classmethod
    def from_config(cls, section: Any, where: str) -> PolicyRule:
        """Validate one rule (a mapping or its :class:`Section`); errors name key and line."""
        sec = section if isinstance(section, Section) else Section(section, where)
        sec.check_known(("check", "key"))
        pattern = sec.get("key")
        if not isinstance(pattern, str) or not pattern:
            raise sec.error("key", "expected a key pattern such as 'order:{order_id}'")
        try:
            template = compile_template(pattern, filters=False)
        except TemplateError as exc:
            raise sec.error("key", str(exc)) from None
        parts = tuple(p if isinstance(p, str) else (p.path,) for p in template.parts)
        if sec.get("check") is None:
            return cls(pattern=pattern, parts=parts)
        check = sec.section("check", known=("connector", "expect", "operation", "params"))
        for key in ("connector", "operation"):
            if not isinstance(check.get(key), str) or not check.get(key):
                raise check.error(key, "required")
        expect = check.section("expect").raw
        if not expect:
            raise check.error("expect", "expected a non-empty mapping")
        return cls(
            pattern=pattern,
            parts=parts,
            connector=check.text("connector"),
            operation=check.text("operation"),
            params=dict(check.section("params").raw),
            expect=dict(expect),
            where=check.where(),
        )

    def match(self, key: str, identity_values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Bind the pattern's variables against ``key``; ``None`` when it does not match."""
        regex: list[str] = []
        names: dict[str, str] = {}
        for part in self.parts:
            if isinstance(part, str):
                regex.append(re.escape(part))
                continue
            name = part[0]
            if name.startswith("user.") or name == "subject":
                value = lookup(identity_values, name)
                if value is MISSING or value is None or value == "":
                    return None
                regex.append(re.escape(stringify(value)))
            elif name in names:
                regex.append(f"(?P={names[name]})")
            else:
                group = f"g{len(names)}"
                names[name] = group
                regex.append(f"(?P<{group}>[^:]+)")
        m = re.fullmatch("".join(regex), key)
        if m is None:
            return None
        return {name: m.group(group) for name, group in names.items()}


class ConfigPolicy:
    """A :class:`talkwire.server.turns.SubscriptionPolicy` from the ``policy`` section."""

    def __init__(
        self,
        rules: Sequence[PolicyRule] | Sequence[Mapping[str, Any]],
        registry: Invoker | None = None,
        *,
        default: str = "deny",
    ) -> None:
        self.rules: tuple[PolicyRule, ...] = tuple(
            r if isinstance(r, PolicyRule) else PolicyRule.from_config(r, f"policy.rules[{i}]")
            for i, r in enumerate(rules)
        )
        if default not in ("deny", "allow"):
            raise ConfigError(f"policy.default: expected one of deny, allow, got {default!r}")
        self.default_allow = default == "allow"
        self.registry = registry
        for i, rule in enumerate(self.rules):
            if rule.connector and registry is None:
                where = rule.where or f"policy.rules[{i}].check"
                raise ConfigError(f"{where}: needs connectors (none are configured)")

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any] | None, registry: Invoker | None = None
    ) -> ConfigPolicy:
        """See :func:`from_config`."""
        return from_config(section, registry)

    async def allowed(self, identity: Identity, key: str) -> bool:
        values = _identity_values(identity)
        for rule in self.rules:
            bound = rule.match(key, values)
            if bound is None:
                continue
            if not rule.connector:
                return True
            if await self._check(rule, identity, {**values, **bound}):
                return True
        return self.default_allow

    async def _check(self, rule: PolicyRule, identity: Identity, values: Mapping[str, Any]) -> bool:
        assert self.registry is not None  # noqa: S101 - checked in __init__
        try:
            params = render_value(dict(rule.params or {}), values)
            expect = render_value(dict(rule.expect or {}), values)
        except TemplateError as exc:
            log.info("policy %s: cannot render check (%s): deny", rule.pattern, exc)
            return False
        ctx = CallContext(
            subject=identity.subject, claims=caller_scope(identity.subject, identity.claims)
        )
        try:
            result = await self.registry.invoke(rule.connector, rule.operation, params, ctx)
        except ConnectorError as exc:
            if exc.retriable:
                raise
            log.info(
                "policy %s: check %s.%s failed (%s): deny",
                rule.pattern,
                rule.connector,
                rule.operation,
                exc,
            )
            return False
        if isinstance(result, list | tuple):
            result = result[0] if result else None
        if not isinstance(result, Mapping):
            return False
        return all(
            name in result and stringify(result[name]) == stringify(want)
            for name, want in expect.items()
        )


def from_config(section: Mapping[str, Any] | None, registry: Invoker | None = None) -> ConfigPolicy:
    """The policy for the ``policy`` section (deny everything when it is absent)."""
    sec = Section(section, "policy", known=("default", "rules"))
    rules = [sec.item("rules", i) for i in range(len(sec.list_of("rules")))]
    return ConfigPolicy(
        [PolicyRule.from_config(rule, rule.key) for rule in rules],
        registry,
        default=sec.text("default", "deny", choices=("deny", "allow")),
    )
