"""Safe reply and parameter templates.

A template is text with ``{fields}``. A field is a dotted path into the values
the engine provides (``{result.status}``, ``{order_id}``, ``{user.customer_id}``,
``{result.0.id}``), optionally followed by filters::

    {result.balance|num:2}                 1234.5 -> "1,234.50"
    {result|each:"#{id} {status}", ", "}   one rendering per row, joined by ", "
    {result|count}                         number of rows
    {slots.subject|default:"(none)"}

Lookups only index mappings and sequences; attributes are never read and
nothing is ever called, so a template cannot run code. ``{{`` and ``}}`` are
literal braces. Filters:

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

Templates are compiled once (at bot load) so syntax errors surface as
configuration errors.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "MISSING",
    "Template",
    "TemplateError",
    "TemplateSyntaxError",
    "TemplateValueError",
    "compile_template",
    "json_safe",
    "lookup",
    "render",
]


class TemplateError(Exception):
    """Base class of template errors."""


class TemplateSyntaxError(TemplateError):
    """The template text cannot be parsed."""


class TemplateValueError(TemplateError):
    """A strict rendering referenced a value that is missing."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def lookup(values: Mapping[str, Any], path: str) -> Any:
    """Resolve a dotted ``path`` (mapping keys, sequence indexes); MISSING if absent."""
    current: Any = values
    for part in path.split("."):
        if isinstance(current, Mapping):
            if part not in current:
                return MISSING
            current = current[part]
        elif isinstance(current, Sequence) and not isinstance(current, str | bytes):
            try:
                current = current[int(part)]
            except (ValueError, IndexError):
                return MISSING
        else:
            return MISSING
    return current


@dataclass(frozen=True, slots=True)
class _Filter:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _Field:
    path: str
    filters: tuple[_Filter, ...]


_Part = str | _Field


def _is_ident_path(path: str) -> bool:
    return bool(path) and all(p and (p.isidentifier() or p.isdigit()) for p in path.split("."))


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


def _parse_field(body: str) -> _Field:
    pieces = _split_outside_quotes(body, "|")
    path = pieces[0].strip()
    if not _is_ident_path(path):
        raise TemplateSyntaxError(f"bad field name {path!r}")
    filters: list[_Filter] = []
    for piece in pieces[1:]:
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
        filters.append(_Filter(name, args))
    return _Field(path, tuple(filters))


def _parse(text: str) -> tuple[_Part, ...]:
    parts: list[_Part] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{":
            if i + 1 < n and text[i + 1] == "{":
                buf.append("{")
                i += 2
                continue
            j = i + 1
            quote = False
            while j < n:
                c = text[j]
                if quote:
                    if c == "\\":
                        j += 1
                    elif c == '"':
                        quote = False
                elif c == '"':
                    quote = True
                elif c == "}":
                    break
                elif c == "{":
                    raise TemplateSyntaxError(f"unexpected '{{' at offset {j}")
                j += 1
            if j >= n:
                raise TemplateSyntaxError(f"unclosed '{{' at offset {i}")
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(_parse_field(text[i + 1 : j]))
            i = j + 1
        elif ch == "}":
            if i + 1 < n and text[i + 1] == "}":
                buf.append("}")
                i += 2
                continue
            raise TemplateSyntaxError(f"single '}}' at offset {i} (write '}}}}')")
        else:
            buf.append(ch)
            i += 1
    if buf:
        parts.append("".join(buf))
    return tuple(parts)


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


def _fmt_num(value: Any, decimals: Any = None) -> str:
    number = _to_number(value)
    if number is None:
        return _to_text(value)
    if decimals is None:
        decimals = 0 if number == number.to_integral_value() and not isinstance(value, float) else 2
    places = int(decimals)
    return f"{number:,.{places}f}"


def _to_text(value: Any) -> str:
    if value is None or value is MISSING:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(json_safe(value), separators=(",", ":"), ensure_ascii=False)
    return str(value)


def json_safe(value: Any) -> Any:
    """Convert ``value`` into plain JSON types (Decimal -> float, dates -> ISO strings)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
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


def _rows(value: Any) -> list[Any]:
    if value is None or value is MISSING:
        return []
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return [value]


class Template:
    """A compiled template; render with :meth:`render` or :meth:`render_value`."""

    __slots__ = ("_parts", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self._parts = _parse(source)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    @property
    def fields(self) -> tuple[str, ...]:
        """The paths this template reads (top level only)."""
        return tuple(p.path for p in self._parts if isinstance(p, _Field))

    def render(self, values: Mapping[str, Any], *, strict: bool = False) -> str:
        """Render to text. ``strict`` raises :class:`TemplateValueError` on missing values."""
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(_to_text(self._eval(part, values, strict)))
        return "".join(out)

    def render_value(self, values: Mapping[str, Any], *, strict: bool = False) -> Any:
        """Like :meth:`render`, but a template that is exactly one field keeps the value's type."""
        if len(self._parts) == 1 and isinstance(self._parts[0], _Field):
            value = self._eval(self._parts[0], values, strict)
            return None if value is MISSING else value
        return self.render(values, strict=strict)

    def _eval(self, field: _Field, values: Mapping[str, Any], strict: bool) -> Any:
        value = lookup(values, field.path)
        has_default = any(f.name == "default" for f in field.filters)
        if value is MISSING and strict and not has_default:
            raise TemplateValueError(f"no value for {{{field.path}}}", field.path)
        for flt in field.filters:
            value = _FILTERS[flt.name](value, flt.args, values)
        return value


def _f_each(value: Any, args: tuple[Any, ...], outer: Mapping[str, Any]) -> str:
    tmpl = compile_template(str(args[0]))
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


def _f_default(value: Any, args: tuple[Any, ...], _: Mapping[str, Any]) -> Any:
    return args[0] if value is MISSING or value is None or value == "" else value


_FILTERS: dict[str, Callable[[Any, tuple[Any, ...], Mapping[str, Any]], Any]] = {
    "num": lambda v, a, _: _fmt_num(v, a[0] if a else None),
    "int": lambda v, a, _: str(int(n)) if (n := _to_number(v)) is not None else _to_text(v),
    "upper": lambda v, a, _: _to_text(v).upper(),
    "lower": lambda v, a, _: _to_text(v).lower(),
    "title": lambda v, a, _: _to_text(v).title(),
    "strip": lambda v, a, _: _to_text(v).strip(),
    "default": _f_default,
    "each": _f_each,
    "join": lambda v, a, _: (str(a[0]) if a else ", ").join(_to_text(x) for x in _rows(v)),
    "count": lambda v, a, _: len(_rows(v)),
    "first": lambda v, a, _: (_rows(v) or [MISSING])[0],
    "json": lambda v, a, _: json.dumps(
        json_safe(None if v is MISSING else v), separators=(",", ":"), ensure_ascii=False
    ),
}

_CACHE: dict[str, Template] = {}


def compile_template(source: str) -> Template:
    """Compile (and cache) ``source``; raises :class:`TemplateSyntaxError`."""
    tmpl = _CACHE.get(source)
    if tmpl is None:
        tmpl = Template(source)
        if len(_CACHE) < 4096:
            _CACHE[source] = tmpl
    return tmpl


def render(source: str, values: Mapping[str, Any], *, strict: bool = False) -> str:
    """Compile and render ``source`` in one step."""
    return compile_template(source).render(values, strict=strict)
