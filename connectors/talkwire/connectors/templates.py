"""A small, safe string template language shared by connectors and dialogue.

``{name}`` substitutes a value; dotted names (``{user.sub}``, ``{after.id}``)
walk nested *mappings* only (never attributes, never indexing into objects), so
a template cannot reach into Python internals. There are no format specs or
conversions: ``{x:>10}`` or ``{x!r}`` are syntax errors. ``{{`` and ``}}``
produce literal braces.

A template that is exactly ``"{x}"`` rendered with :func:`render_value` keeps
the native type of ``x`` (an ``int`` stays an ``int``); embedded in other text
it is stringified (``None`` -> ``""``, booleans -> ``true``/``false``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

__all__ = [
    "MISSING",
    "Template",
    "TemplateError",
    "compile_template",
    "lookup",
    "render",
    "render_value",
    "stringify",
    "template_fields",
]

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*\Z")


class TemplateError(ValueError):
    """A template is malformed or references a value that is not there."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def lookup(values: Mapping[str, Any], name: str) -> Any:
    """Resolve a dotted ``name`` through nested mappings; :data:`MISSING` if absent."""
    if name in values:
        return values[name]
    cur: Any = values
    for part in name.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return MISSING
    return cur


def stringify(value: Any) -> str:
    """How a value appears inside a larger string."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


class Template:
    """A parsed template; :meth:`render` is cheap (no re-parsing)."""

    __slots__ = ("_parts", "_single", "fields", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        parts: list[str | tuple[str]] = []
        fields: list[str] = []
        pos = 0
        buf: list[str] = []
        for m in _FIELD.finditer(source):
            buf.append(source[pos : m.start()])
            pos = m.end()
            tok = m.group(0)
            if tok == "{{":
                buf.append("{")
            elif tok == "}}":
                buf.append("}")
            elif m.group(1) is None:
                raise TemplateError(f"unbalanced brace in template {source!r}")
            else:
                name = m.group(1).strip()
                if not _NAME.match(name):
                    raise TemplateError(
                        f"invalid field {{{m.group(1)}}} in template {source!r}: only names "
                        "and dotted names are allowed",
                        field=name,
                    )
                text = "".join(buf)
                if text:
                    parts.append(text)
                buf = []
                parts.append((name,))
                fields.append(name)
        buf.append(source[pos:])
        tail = "".join(buf)
        if tail:
            parts.append(tail)
        self._parts: tuple[str | tuple[str], ...] = tuple(parts)
        self.fields: tuple[str, ...] = tuple(fields)
        single = self._parts[0] if len(self._parts) == 1 else None
        self._single: str | None = single[0] if isinstance(single, tuple) else None

    @property
    def is_single_field(self) -> bool:
        """True when the whole template is one ``{field}``."""
        return self._single is not None

    def _get(self, values: Mapping[str, Any], name: str) -> Any:
        value = lookup(values, name)
        if value is MISSING:
            raise TemplateError(f"no value for {{{name}}}", field=name)
        return value

    def render(self, values: Mapping[str, Any], escape: Callable[[Any], str] | None = None) -> str:
        """Render to a string; ``escape`` (e.g. URL quoting) is applied to each value."""
        out: list[str] = []
        conv = escape or stringify
        for part in self._parts:
            if isinstance(part, tuple):
                out.append(conv(self._get(values, part[0])))
            else:
                out.append(part)
        return "".join(out)

    def render_value(self, values: Mapping[str, Any]) -> Any:
        """Render, keeping the native type when the template is exactly ``{x}``."""
        if self._single is not None:
            return self._get(values, self._single)
        return self.render(values)


@lru_cache(maxsize=4096)
def compile_template(source: str) -> Template:
    """Parse (and cache) a template."""
    return Template(source)


def template_fields(template: Any) -> set[str]:
    """Every field name referenced by a template or a nested structure of templates."""
    out: set[str] = set()
    if isinstance(template, str):
        out.update(compile_template(template).fields)
    elif isinstance(template, Mapping):
        for v in template.values():
            out |= template_fields(v)
    elif isinstance(template, list | tuple):
        for v in template:
            out |= template_fields(v)
    return out


def render(
    template: str, values: Mapping[str, Any], escape: Callable[[Any], str] | None = None
) -> str:
    """Render ``template`` to a string with ``values``.

    Raises :class:`TemplateError` for malformed templates or missing values.
    """
    return compile_template(template).render(values, escape)


def render_value(template: Any, values: Mapping[str, Any]) -> Any:
    """Render a template or a nested structure (dicts / lists) of templates.

    Strings that are exactly ``"{x}"`` keep the native type of ``x``; other
    strings are rendered as text; non-string leaves are returned unchanged.
    """
    if isinstance(template, str):
        return compile_template(template).render_value(values)
    if isinstance(template, Mapping):
        return {k: render_value(v, values) for k, v in template.items()}
    if isinstance(template, list | tuple):
        return [render_value(v, values) for v in template]
    return template
