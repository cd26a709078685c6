"""Path expressions that pick values out of a response.

Syntax: dot-separated keys with optional bracketed indexes, e.g.
``data.items[0].status``, ``results[-1]``, ``["key.with.dots"].x``. ``[*]``
maps the rest of the path over every element of a list. An empty path selects
the whole document. Missing keys or out-of-range indexes select ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["PathError", "compile_path", "map_fields", "select", "shape"]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<key>[A-Za-z_$@][\w$@\-]*)          # bare key
      | \[\s*(?P<idx>-?\d+)\s*\]               # [0]
      | \[\s*(?P<star>\*)\s*\]                 # [*]
      | \[\s*(?P<q>["'])(?P<qkey>.*?)(?P=q)\s*\]  # ["key"]
    )\s*(?P<dot>\.)?""",
    re.VERBOSE,
)


class PathError(ValueError):
    """A malformed path expression."""


_STAR = object()


@lru_cache(maxsize=1024)
def compile_path(path: str) -> tuple[Any, ...]:
    """Parse a path into steps (``str`` key, ``int`` index or the star marker)."""
    steps: list[Any] = []
    pos = 0
    path = path.strip()
    expect_more = False
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None or m.end() == pos:
            raise PathError(f"invalid path expression {path!r} at offset {pos}")
        if m.group("key") is not None:
            steps.append(m.group("key"))
        elif m.group("idx") is not None:
            steps.append(int(m.group("idx")))
        elif m.group("star") is not None:
            steps.append(_STAR)
        else:
            steps.append(m.group("qkey"))
        expect_more = m.group("dot") is not None
        pos = m.end()
    if expect_more:
        raise PathError(f"invalid path expression {path!r}: trailing '.'")
    return tuple(steps)


def _walk(data: Any, steps: tuple[Any, ...], start: int) -> Any:
    cur = data
    for i in range(start, len(steps)):
        step = steps[i]
        if step is _STAR:
            if not isinstance(cur, list):
                return None
            return [_walk(item, steps, i + 1) for item in cur]
        if isinstance(step, int):
            if isinstance(cur, list) and -len(cur) <= step < len(cur):
                cur = cur[step]
            else:
                return None
        elif isinstance(cur, Mapping):
            cur = cur.get(step)
        else:
            return None
    return cur


def select(data: Any, path: str | None) -> Any:
    """Pick the value at ``path`` in ``data`` (``None`` when absent)."""
    if not path:
        return data
    return _walk(data, compile_path(path), 0)


def map_fields(data: Any, fields: Mapping[str, str]) -> Any:
    """Build ``{out_name: select(item, path)}``; applied per item when ``data`` is a list."""
    if isinstance(data, list):
        return [map_fields(item, fields) for item in data]
    if data is None:
        return None
    return {name: select(data, path) for name, path in fields.items()}


def shape(data: Any, result: str) -> Any:
    """Fit ``data`` into an operation's declared result shape.

    Raises ``ValueError`` for data that cannot have that shape and
    ``LookupError`` when an ``object`` result is absent.
    """
    if result == "value":
        return data
    if result == "rows":
        if data is None:
            return []
        if isinstance(data, Mapping):
            return [dict(data)]
        if isinstance(data, list):
            return data
        raise ValueError(f"expected a list of records, got {type(data).__name__}")
    if result == "row":
        if isinstance(data, list):
            data = data[0] if data else None
        if data is None or isinstance(data, Mapping):
            return data
        raise ValueError(f"expected a record, got {type(data).__name__}")
    # object
    if data is None:
        raise LookupError("no result")
    if isinstance(data, list):
        if not data:
            raise LookupError("no result")
        data = data[0]
    if isinstance(data, Mapping):
        return data
    raise ValueError(f"expected an object, got {type(data).__name__}")
