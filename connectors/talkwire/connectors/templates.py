"""The one template language of talkwire (bot params and replies, cache keys, topic keys, policy).

A template is text with ``{fields}``. A field is a dotted path into the values
the caller provides (``{order_id}``, ``{user.sub}``, ``{after.id}``,
``{result.0.id}``), optionally followed by filters::

    {result.balance|num:2}                 1234.5 -> "1,234.50"
    {result|each:"#{id} {status}", ", "}   one rendering per row, joined by ", "
    {result|count}                         number of rows
    {slots.subject|default:"(none)"}

Lookups only index mappings (and sequences by number); attributes are never
read and nothing is ever called, so a template cannot run code. There are no
format specs or conversions (``{x:>10}`` and ``{x!r}`` are syntax errors).
``{{`` and ``}}`` are literal braces. A template that is exactly one field,
rendered with :meth:`Template.render_value`, keeps the value's type (an ``int``
stays an ``int``). Filters (``filters=False`` refuses them where they make no
sense, e.g. policy key patterns):

``num[:decimals]``  thousands separators (integers without decimals, other
                    numbers with 2 unless ``decimals`` is given);
``int``             integer, no separators;
``upper`` ``lower`` ``title`` ``strip``;
``default:"x"``     used when the value is missing, ``None`` or ``""``;
``each:"tmpl"[, "sep"]`` render ``tmpl`` per row of a list (row keys are in
                    scope, as are the outer values and ``index``, 1-based);
                    rows are joined with ``sep`` (default a newline);
``join[:"sep"]``    join a list of scalars (default ``", "``);
``count``           length of a list (0 for missing);
``first``           the first element of a list;
``json``            the value as compact JSON.

A template renders in a :class:`Mode`. :data:`STRICT` (the default; keys,
URLs, connector parameters, policy checks) raises :class:`TemplateValueError`
for a missing value and writes booleans as ``true`` / ``false``.
:data:`LENIENT` (what people read: bot replies, prompts, labels) renders a
missing value as nothing and writes booleans as ``yes`` / ``no``, dates in ISO
form and lists / mappings as JSON. The caller's identity is ``{user.sub}`` and
``{user.<claim>}`` (see :mod:`talkwire.connectors.caller`).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from talkwire.connectors.caller import canonical_field

__all__ = [
    "LENIENT",
    "MISSING",
    "STRICT",
    "Field",
    "Mode",
    "Template",
    "TemplateError",
    "TemplateSyntaxError",
    "TemplateValueError",
    "compile_template",
    "display_text",
    "json_safe",
    "lookup",
    "render",
    "render_value",
    "stringify",
    "template_fields",
]


class TemplateError(ValueError):
    """A template is malformed or references a value that is not there."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class TemplateSyntaxError(TemplateError):
    """The template text cannot be parsed."""


class TemplateValueError(TemplateError):
    """A strict rendering referenced a value that is missing."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def lookup(values: Mapping[str, Any], path: str) -> Any:
    """Resolve a dotted ``path`` (mapping keys, sequence indexes); :data:`MISSING` if absent."""
    if path in values:
        return values[path]
    current: Any = values
    for part in path.split("."):
        if isinstance(current, Mapping):
            if part not in current:
                return MISSING
            current = current[part]
        elif isinstance(current, Sequence) and not isinstance(current, str | bytes):
            if not part.isdigit() or int(part) >= len(current):
                return MISSING
            current = current[int(part)]
        else:
            return MISSING
    return current


# --------------------------------------------------------------------------- text


def json_safe(value: Any) -> Any:
    """Convert ``value`` into plain JSON types (Decimal -> float, dates -> ISO strings)."""
    if value is None or isinstance(value, bool | int | str | float):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _compact_json(value: Any) -> str:
    return json.dumps(json_safe(value), separators=(",", ":"), ensure_ascii=False)


def stringify(value: Any) -> str:
    """A value inside a key, URL or parameter (``None`` -> ``""``, ``True`` -> ``"true"``)."""
    if value is None or value is MISSING:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def display_text(value: Any) -> str:
    """A value inside text people read (``yes`` / ``no``, ISO dates, JSON for containers)."""
    if value is None or value is MISSING:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        return _compact_json(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Mode:
    """How a template renders: is a missing value an error, and how values become text."""

    strict: bool
    text: Callable[[Any], str]


STRICT = Mode(strict=True, text=stringify)
LENIENT = Mode(strict=False, text=display_text)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class _Filter:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Field:
    """One ``{path|filter...}`` of a template."""

    path: str
    filters: tuple[_Filter, ...] = ()


_Part = str | Field
_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+\Z")


def _is_path(path: str) -> bool:
    """``name`` or ``name.part.0``: parts are identifiers, digits or ``a-b``; never ``0.x``."""
    parts = path.split(".")
    return parts[0][:1].isidentifier() and all(p.isidentifier() or _SEGMENT.match(p) for p in parts)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    quote = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 1
            elif ch == '"':
                quote = False
        elif ch == '"':
            quote = True
            buf.append(ch)
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise TemplateSyntaxError("unterminated string in template field")
    parts.append("".join(buf))
    return parts


def _parse_arg(raw: str) -> Any:
    raw = raw.strip()
    if raw.startswith('"'):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TemplateSyntaxError(f"bad string argument {raw!r}") from exc
        if not isinstance(value, str):
            raise TemplateSyntaxError(f"bad string argument {raw!r}")
        return value
    try:
        return int(raw)
    except ValueError:
        pass
    if not raw:
        raise TemplateSyntaxError("empty filter argument")
    return raw


_FILTER_ARITY: dict[str, tuple[int, int]] = {
    "num": (0, 1),
    "int": (0, 0),
    "upper": (0, 0),
    "lower": (0, 0),
    "title": (0, 0),
    "strip": (0, 0),
    "default": (1, 1),
    "each": (1, 2),
    "join": (0, 1),
    "count": (0, 0),
    "first": (0, 0),
    "json": (0, 0),
}


def _parse_filter(piece: str) -> _Filter:
    name, _, argtext = piece.partition(":")
    name = name.strip()
    if name not in _FILTER_ARITY:
        raise TemplateSyntaxError(f"unknown filter {name!r}")
    args = tuple(_parse_arg(a) for a in _split_outside_quotes(argtext, ",")) if argtext else ()
    lo, hi = _FILTER_ARITY[name]
    if not lo <= len(args) <= hi:
        raise TemplateSyntaxError(f"filter {name!r} takes {lo}..{hi} arguments")
    if name == "each":
        compile_template(str(args[0]))  # validate the nested template now
    return _Filter(name, args)


def _parse_field(body: str, source: str, filters: bool) -> Field:
    pieces = _split_outside_quotes(body, "|")
    path = pieces[0].strip()
    if not _is_path(path):
        raise TemplateSyntaxError(
            f"invalid field {{{body}}} in template {source!r}: only names and dotted names "
            "(and filters after '|') are allowed",
            field=path,
        )
    if len(pieces) > 1 and not filters:
        raise TemplateSyntaxError(f"filters are not allowed here: {{{body}}}", field=path)
    return Field(canonical_field(path), tuple(_parse_filter(p) for p in pieces[1:]))


def _field_end(text: str, start: int) -> int:
    """Index of the ``}`` closing the field opened at ``start`` (quotes may hold braces)."""
    quote = False
    j = start + 1
    while j < len(text):
        c = text[j]
        if quote:
            if c == "\\":
                j += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
        elif c == "}":
            return j
        elif c == "{":
            raise TemplateSyntaxError(f"unexpected '{{' at offset {j} in template {text!r}")
        j += 1
    raise TemplateSyntaxError(f"unbalanced brace: unclosed '{{' at offset {start} in {text!r}")


def _parse(text: str, filters: bool) -> tuple[_Part, ...]:
    parts: list[_Part] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "{}" and text[i + 1 : i + 2] == ch:
            buf.append(ch)
            i += 2
        elif ch == "{":
            j = _field_end(text, i)
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(_parse_field(text[i + 1 : j], text, filters))
            i = j + 1
        elif ch == "}":
            raise TemplateSyntaxError(
                f"unbalanced brace: single '}}' at offset {i} in {text!r} (write '}}}}')"
            )
        else:
            buf.append(ch)
            i += 1
    if buf:
        parts.append("".join(buf))
    return tuple(parts)


# --------------------------------------------------------------------------- rendering


def _rows(value: Any) -> list[Any]:
    if value is None or value is MISSING:
        return []
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return [value]


class Template:
    """A parsed template; rendering never re-parses."""

    __slots__ = ("_single", "fields", "mode", "parts", "source")

    def __init__(self, source: str, *, mode: Mode = STRICT, filters: bool = True) -> None:
        self.source = source
        self.mode = mode
        self.parts: tuple[str | Field, ...] = _parse(source, filters)
        #: The paths this template reads (top level only, documented spelling).
        self.fields: tuple[str, ...] = tuple(p.path for p in self.parts if isinstance(p, Field))
        only = self.parts[0] if len(self.parts) == 1 else None
        self._single: Field | None = only if isinstance(only, Field) else None

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(
        self,
        values: Mapping[str, Any],
        *,
        strict: bool | None = None,
        text: Callable[[Any], str] | None = None,
    ) -> str:
        """Render to text; ``strict`` / ``text`` override the mode (``text``: e.g. URL quoting)."""
        out: list[str] = []
        conv = text or self.mode.text
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(conv(self._eval(part, values, strict)))
        return "".join(out)

    def render_value(self, values: Mapping[str, Any], *, strict: bool | None = None) -> Any:
        """Like :meth:`render`, but a template that is exactly one field keeps the value's type."""
        if self._single is not None:
            value = self._eval(self._single, values, strict)
            return None if value is MISSING else value
        return self.render(values, strict=strict)

    def _eval(self, field: Field, values: Mapping[str, Any], strict: bool | None) -> Any:
        value = lookup(values, field.path)
        if not field.filters:
            if value is MISSING and (self.mode.strict if strict is None else strict):
                raise TemplateValueError(f"no value for {{{field.path}}}", field=field.path)
            return value
        if (
            value is MISSING
            and (self.mode.strict if strict is None else strict)
            and not any(f.name == "default" for f in field.filters)
        ):
            raise TemplateValueError(f"no value for {{{field.path}}}", field=field.path)
        for flt in field.filters:
            value = _FILTERS[flt.name](value, flt.args, values, self.mode)
        return value


_FilterFn = Callable[[Any, tuple[Any, ...], Mapping[str, Any], Mode], Any]


def _to_number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return None
    if isinstance(value, str):
        try:
            return Decimal(value.strip().replace(",", ""))
        except InvalidOperation:
            return None
    return None


def _f_num(value: Any, args: tuple[Any, ...], _: Mapping[str, Any], mode: Mode) -> str:
    number = _to_number(value)
    if number is None:
        return mode.text(value)
    decimals = args[0] if args else None
    if decimals is None:
        decimals = 0 if number == number.to_integral_value() and not isinstance(value, float) else 2
    return f"{number:,.{int(decimals)}f}"


def _f_int(value: Any, _a: tuple[Any, ...], _: Mapping[str, Any], mode: Mode) -> str:
    number = _to_number(value)
    return str(int(number)) if number is not None else mode.text(value)


def _f_each(value: Any, args: tuple[Any, ...], outer: Mapping[str, Any], mode: Mode) -> str:
    tmpl = compile_template(str(args[0]), mode=mode)
    sep = str(args[1]) if len(args) > 1 else "\n"
    rendered: list[str] = []
    for index, row in enumerate(_rows(value), start=1):
        scope: dict[str, Any] = dict(outer)
        scope["row"] = row
        scope["index"] = index
        if isinstance(row, Mapping):
            scope.update({str(k): v for k, v in row.items()})
        rendered.append(tmpl.render(scope))
    return sep.join(rendered)


def _f_default(value: Any, args: tuple[Any, ...], _: Mapping[str, Any], _m: Mode) -> Any:
    return args[0] if value is MISSING or value is None or value == "" else value


def _f_join(value: Any, args: tuple[Any, ...], _: Mapping[str, Any], mode: Mode) -> str:
    return (str(args[0]) if args else ", ").join(mode.text(x) for x in _rows(value))


_FILTERS: dict[str, _FilterFn] = {
    "num": _f_num,
    "int": _f_int,
    "upper": lambda v, a, _, m: m.text(v).upper(),
    "lower": lambda v, a, _, m: m.text(v).lower(),
    "title": lambda v, a, _, m: m.text(v).title(),
    "strip": lambda v, a, _, m: m.text(v).strip(),
    "default": _f_default,
    "each": _f_each,
    "join": _f_join,
    "count": lambda v, a, _, m: len(_rows(v)),
    "first": lambda v, a, _, m: (_rows(v) or [MISSING])[0],
    "json": lambda v, a, _, m: _compact_json(None if v is MISSING else v),
}


@lru_cache(maxsize=4096)
def compile_template(source: str, *, mode: Mode = STRICT, filters: bool = True) -> Template:
    """Parse (and cache) a template; raises :class:`TemplateSyntaxError`."""
    return Template(source, mode=mode, filters=filters)


def template_fields(template: Any) -> set[str]:
    """Every field path referenced by a template or a nested structure of templates."""
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


def render(source: str, values: Mapping[str, Any], *, mode: Mode = STRICT) -> str:
    """Compile and render ``source`` in one step (strict by default)."""
    return compile_template(source, mode=mode).render(values)


def render_value(template: Any, values: Mapping[str, Any], *, mode: Mode = STRICT) -> Any:
    """Render a template or a nested structure (dicts / lists) of templates.

    Strings that are exactly ``"{x}"`` keep the native type of ``x``; other
    strings are rendered as text; non-string leaves are returned unchanged.
    """
    if isinstance(template, str):
        return compile_template(template, mode=mode).render_value(values)
    if isinstance(template, Mapping):
        return {k: render_value(v, values, mode=mode) for k, v in template.items()}
    if isinstance(template, list | tuple):
        return [render_value(v, values, mode=mode) for v in template]
    return template
