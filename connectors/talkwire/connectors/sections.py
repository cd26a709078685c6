"""One reader for configuration sections, shared by the server and the connectors.

Every config section (``server``, ``store``, ``events``, ``webhooks``, ``bus``,
``policy``, ``bot``, each connector) is read through :class:`Section`: typed
getters, one unknown-key check, one secrets rule, and one error format::

    events.bootstrp (talkwire.yaml, line 12): unknown key (known: bootstrap, client_id, ...)

The location in parentheses is there whenever the section came from a YAML
file loaded with :func:`load_yaml`, whose mappings (:class:`YamlMapping`) and
lists (:class:`YamlList`) remember the line of every key and item. Sections
built in code (or from ``TALKWIRE_*`` environment variables) have no line and
the message starts with the dotted key alone.

Secrets (:func:`resolve_secret`): ``env:NAME`` is the environment variable
(unset or empty is an error naming the key), ``file:PATH`` is the file's
content with surrounding white space stripped (unreadable or empty is an
error), anything else is the literal value.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from talkwire.connectors.errors import ConfigError

__all__ = [
    "ErrorFactory",
    "KeyPath",
    "Section",
    "YamlList",
    "YamlMapping",
    "describe",
    "dotted",
    "line_of",
    "load_yaml",
    "locate",
    "resolve_secret",
    "secret_value",
    "split_key",
]

KeyPath = tuple[str | int, ...]

_INDEX = re.compile(r"\[(\d+)\]")


class YamlMapping(dict[Any, Any]):
    """A mapping loaded from YAML that remembers the line of each of its keys."""

    __slots__ = ("key_lines", "line", "source")

    def __init__(self, *args: Any, source: str = "", line: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source
        self.line = line
        self.key_lines: dict[Any, int] = {}

    def copy(self) -> YamlMapping:
        out = YamlMapping(self, source=self.source, line=self.line)
        out.key_lines = dict(self.key_lines)
        return out


class YamlList(list[Any]):
    """A list loaded from YAML that remembers the line of each item."""

    __slots__ = ("item_lines", "line", "source")

    def __init__(self, *args: Any, source: str = "", line: int = 0) -> None:
        super().__init__(*args)
        self.source = source
        self.line = line
        self.item_lines: list[int] = []


class _LineLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` building :class:`YamlMapping` / :class:`YamlList`."""

    source = "<yaml>"


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Iterator[YamlMapping]:
    data = YamlMapping(source=loader.source, line=node.start_mark.line + 1)
    yield data
    data.update(loader.construct_mapping(node))
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str | int):
            data.key_lines[key] = key_node.start_mark.line + 1


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> Iterator[YamlList]:
    data = YamlList(source=loader.source, line=node.start_mark.line + 1)
    yield data
    data.extend(loader.construct_sequence(node))
    data.item_lines = [item.start_mark.line + 1 for item in node.value]


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def load_yaml(text: str, *, source: str) -> Any:
    """Parse YAML (safe subset) into data whose mappings and lists know their lines.

    Raises :class:`ConfigError` naming ``source`` and the line for invalid YAML.
    """
    loader = _LineLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def locate(container: Any, key: str | int | None = None) -> str:
    """``"(file, line N)"`` for ``key`` of a YAML-loaded container, else ``""``."""
    line = 0
    if isinstance(container, YamlMapping):
        line = container.key_lines.get(key, container.line) if key is not None else container.line
    elif isinstance(container, YamlList):
        lines = container.item_lines
        in_range = isinstance(key, int) and 0 <= key < len(lines)
        line = lines[key] if in_range and isinstance(key, int) else container.line
    else:
        return ""
    return f"({container.source}, line {line})" if line else ""


def split_key(dotted: str) -> KeyPath:
    """``"a.b[2].c"`` -> ``("a", "b", 2, "c")``."""
    out: list[str | int] = []
    for part in dotted.split("."):
        head, *rest = _INDEX.split(part)
        if head:
            out.append(head)
        out.extend(int(r) for r in rest if r)
    return tuple(out)


def line_of(root: Any, path: KeyPath) -> str:
    """``"(file, line N)"`` of the deepest part of ``path`` found under ``root``, else ``""``."""
    node, where = root, ""
    for part in path:
        where = locate(node, part) or where
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
    return where


def dotted(path: KeyPath) -> str:
    """``("bot", "intents", "x", "examples", 0)`` -> ``"bot.intents.x.examples[0]"``."""
    return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")


def describe(root: Any, path: KeyPath) -> str:
    """The dotted key of ``path`` and, when ``root`` came from YAML, the line."""
    found = line_of(root, path)
    return f"{dotted(path)} {found}" if found else dotted(path)


def secret_value(value: Any, *, env: Mapping[str, str] | None = None) -> str:
    """The one secrets rule, without a key: raises ``ValueError`` saying what is wrong.

    ``env:NAME`` -> the variable (unset or empty: an error), ``file:PATH`` -> the
    file's content stripped (unreadable or empty: an error), else the literal value
    (empty: an error).
    """
    environ = os.environ if env is None else env
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value):
        raise ValueError("expected a non-empty secret (a value, env:NAME or file:PATH)")
    text = str(value)
    if text.startswith("env:"):
        name = text[4:]
        got = environ.get(name)
        if got is None:
            raise ValueError(f"environment variable {name} is not set")
        if not got:
            raise ValueError(f"environment variable {name} is empty")
        return got
    if text.startswith("file:"):
        path = Path(text[5:])
        try:
            got = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
        if not got:
            raise ValueError(f"secret file {path} is empty")
        return got
    return text


def resolve_secret(value: Any, key: str, *, env: Mapping[str, str] | None = None) -> str:
    """:func:`secret_value`, its errors a :class:`ConfigError` naming ``key``.

    ``key`` is what the message starts with (the dotted key, and its line when
    known). The result is never logged.
    """
    try:
        return secret_value(value, env=env)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}", key=key.partition(" ")[0]) from None


ErrorFactory = Callable[[str, str, str], ConfigError]
"""Builds the error for ``(dotted key, what is wrong, "(file, line N)" or "")``."""


def _config_error(key: str, message: str, location: str) -> ConfigError:
    where = f"{key} {location}" if key and location else (key or location)
    return ConfigError(f"{where}: {message}" if where else message, key=key)


class Section:
    """A read view of one config mapping whose errors name the key and the YAML line.

    ``known`` (when given) are the only keys allowed; any other is refused
    with the one wording ``unknown key (known: ...)``.
    """

    def __init__(
        self,
        raw: Any,
        key: str,
        *,
        known: Iterable[str] | None = None,
        error: ErrorFactory | None = None,
    ) -> None:
        self.key = key
        self._error = error or _config_error
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise self._error(key, f"expected a mapping, got {type(raw).__name__}", "")
        self.raw: Mapping[Any, Any] = raw
        if known is not None:
            self.check_known(known)

    # -- locating and failing

    def where(self, key: str | int | None = None) -> str:
        """``"events.bootstrp (talkwire.yaml, line 12)"``: the dotted key and its line."""
        name = self.key if key is None else self.child_key(key)
        found = locate(self.raw, key)
        return f"{name} {found}" if found else name

    def child_key(self, key: str | int) -> str:
        """The dotted key of ``key`` in this section (``"events.topics"``, ``"rules[0]"``)."""
        if isinstance(key, int):
            return f"{self.key}[{key}]"
        return f"{self.key}.{key}" if self.key else key

    def error(self, key: str | int | None, message: str) -> ConfigError:
        """The error to raise for ``key`` (``None``: the section itself)."""
        dotted_key = self.key if key is None else self.child_key(key)
        return self._error(dotted_key, message, locate(self.raw, key))

    def _child(self, raw: Any, key: str, known: Iterable[str] | None = None) -> Section:
        return Section(raw, key, known=known, error=self._error)

    def check_known(self, known: Iterable[str]) -> None:
        """Refuse keys not in ``known`` (the first one, in file order)."""
        allowed = set(known)
        for name in self.raw:
            if not isinstance(name, str):
                raise self.error(None, f"key {name!r} must be a string")
            if name not in allowed:
                raise self.error(name, f"unknown key (known: {', '.join(sorted(allowed))})")

    # -- raw access

    def get(self, key: str, default: Any = None) -> Any:
        """The raw value of ``key``; absent or null -> ``default``."""
        value = self.raw.get(key, default)
        return default if value is None else value

    # -- typed getters

    def text(self, key: str, default: str = "", *, choices: Sequence[str] = ()) -> str:
        """A string (numbers are accepted as their text); ``choices`` limits it."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(key, f"expected a string, got {value!r}")
        text = str(value)
        if choices and text not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        positive: bool = False,
    ) -> float:
        """A finite number; ``positive``: > 0; ``minimum``: >= it."""
        value = self.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.error(key, f"expected a number, got {value!r}")
        if positive and value <= 0:
            raise self.error(key, f"expected a positive number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected a number >= {minimum:g}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self.get(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def strings(
        self, key: str, default: Sequence[str] = (), *, split: bool = False
    ) -> tuple[str, ...]:
        """A list of strings; one string is a list of one (``split``: comma-separated)."""
        value = self.get(key, None)
        if value is None:
            return tuple(default)
        if isinstance(value, str):
            items = value.split(",") if split else [value]
        elif isinstance(value, list | tuple):
            bad = [v for v in value if isinstance(v, bool) or not isinstance(v, str | int | float)]
            if bad:
                raise self.error(key, f"expected a list of strings, got {bad[0]!r} in it")
            items = [str(v) for v in value]
        else:
            raise self.error(key, f"expected a list of strings, got {value!r}")
        if split:
            return tuple(s.strip() for s in items if s.strip())
        return tuple(items)

    def section(self, key: str, *, known: Iterable[str] | None = None) -> Section:
        """The mapping under ``key`` as a :class:`Section` (absent -> empty)."""
        value = self.raw.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise self.error(key, f"expected a mapping, got {type(value).__name__}")
        return self._child(value, self.child_key(key), known)

    def children(self) -> Iterator[tuple[str, Section]]:
        """``(name, Section)`` for each entry of this mapping of mappings."""
        for name, value in self.raw.items():
            if value is not None and not isinstance(value, Mapping):
                raise self.error(name, f"expected a mapping, got {type(value).__name__}")
            yield str(name), self._child(value, self.child_key(str(name)))

    def list_of(self, key: str) -> list[Any]:
        """The list under ``key`` (absent -> empty)."""
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise self.error(key, f"expected a list, got {type(value).__name__}")
        return list(value)

    def item(self, key: str, index: int, *, known: Iterable[str] | None = None) -> Section:
        """Item ``index`` of the list under ``key`` as a :class:`Section`."""
        items = self.raw.get(key)
        value = items[index] if isinstance(items, list | tuple) else None
        where = f"{self.child_key(key)}[{index}]"
        if not isinstance(value, Mapping):
            raise self._error(
                where, f"expected a mapping, got {type(value).__name__}", locate(items, index)
            )
        return self._child(value, where, known)

    def secret(
        self, key: str, *, required: bool = True, env: Mapping[str, str] | None = None
    ) -> str:
        """A secret by the one rule (:func:`secret_value`); absent -> ``""`` unless required."""
        value = self.raw.get(key)
        if value is None or value == "":
            if required:
                raise self.error(key, "required (a value, env:NAME or file:PATH)")
            return ""
        try:
            return secret_value(value, env=env)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def secrets(self, key: str, *, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """A list of secrets (one string is a list of one), each by the one rule."""
        raw = self.raw.get(key)
        values = [raw] if isinstance(raw, str) else self.list_of(key)
        out: list[str] = []
        for i, value in enumerate(values):
            try:
                out.append(secret_value(value, env=env))
            except ValueError as exc:
                at = locate(raw, i) or locate(self.raw, key)
                raise self._error(f"{self.child_key(key)}[{i}]", str(exc), at) from None
        return tuple(out)
