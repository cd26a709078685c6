"""Slot extraction and validation.

Extractors by slot ``type``:

``number`` / ``integer``  the first number in the text (``integer`` refuses decimals);
``regex``  the ``pattern``'s group ``value`` (or group 1, or the whole match);
``date``   ISO ``2026-12-01``, ``1/12/2026`` (day first), ``today``/``tomorrow``/
           ``yesterday``, ``3 march [2026]`` / ``march 3 [2026]``; stored as ISO text;
``enum``   a canonical value or one of its synonyms, as whole words;
``entity`` a candidate (the ``pattern`` group, or the whole answer to a prompt) looked
           up through a connector operation; the value is the row's ``field``;
``text``   the ``pattern`` group, or the whole answer when the bot asked for it.

For every type a ``pattern`` narrows the text first. Values are plain JSON
types, since pending slots live in the session's dialogue state.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from talkwire.connectors.templates import MISSING
from talkwire.server.dialogue.definition import LookupDef, SlotDef

__all__ = ["MISSING", "Lookup", "extract", "validate"]

Lookup = Callable[[LookupDef, str], Awaitable[Any]]

_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)?(?![\w])|#(\d+)")
_ISO_RE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_DMY_RE = re.compile(r"\b(\d{1,2})[/.](\d{1,2})[/.](\d{4})\b")
_MONTHS = {
    m: i
    for i, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for m in names
}
_MONTH_ALT = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DAY_MONTH_RE = re.compile(
    rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+({_MONTH_ALT})\b(?:\s+(\d{{4}}))?", re.I
)
_MONTH_DAY_RE = re.compile(
    rf"\b({_MONTH_ALT})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?", re.I
)
_RELATIVE = {"today": 0, "tomorrow": 1, "yesterday": -1}


def _narrow(slot: SlotDef, text: str) -> str | None:
    if slot.pattern is None:
        return text
    m = slot.pattern.search(text)
    if m is None:
        return None
    if "value" in slot.pattern.groupindex:
        got = m.group("value")
    elif slot.pattern.groups:
        got = next((g for g in m.groups() if g is not None), None)
    else:
        got = m.group(0)
    return got.strip() if got is not None else None


def _number(text: str, integer: bool) -> Any:
    for m in _NUMBER_RE.finditer(text):
        raw = m.group(1) or m.group(0)
        raw = raw.replace(",", ".") if raw.count(",") == 1 and "." not in raw else raw
        raw = raw.replace(",", "")
        try:
            if re.fullmatch(r"[-+]?\d+", raw):
                return int(raw)
            if integer:
                continue
            return float(raw)
        except ValueError:
            continue
    return MISSING


def _date(text: str, today: _dt.date) -> Any:
    low = text.lower()
    for word, delta in _RELATIVE.items():
        if re.search(rf"\b{word}\b", low):
            return (today + _dt.timedelta(days=delta)).isoformat()
    candidates: list[tuple[int, int, int]] = []
    if m := _ISO_RE.search(text):
        candidates.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    if m := _DMY_RE.search(text):
        candidates.append((int(m.group(3)), int(m.group(2)), int(m.group(1))))
    if m := _DAY_MONTH_RE.search(text):
        year = int(m.group(3)) if m.group(3) else today.year
        candidates.append((year, _MONTHS[m.group(2).lower()], int(m.group(1))))
    if m := _MONTH_DAY_RE.search(text):
        year = int(m.group(3)) if m.group(3) else today.year
        candidates.append((year, _MONTHS[m.group(1).lower()], int(m.group(2))))
    for y, mo, d in candidates:
        try:
            return _dt.date(y, mo, d).isoformat()
        except ValueError:
            continue
    return MISSING


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[^\W_]+", text.lower())) + " "


def _enum(slot: SlotDef, text: str) -> Any:
    hay = _words(text)
    best: tuple[int, str] | None = None
    for canonical, synonyms in slot.values.items():
        for phrase in (canonical, *synonyms):
            needle = _words(phrase)
            if needle.strip() and needle in hay and (best is None or len(needle) > best[0]):
                best = (len(needle), canonical)
    return best[1] if best else MISSING


def _first_row(result: Any) -> Any:
    if isinstance(result, Sequence) and not isinstance(result, str | bytes):
        return result[0] if result else None
    return result


async def extract(
    slot: SlotDef,
    text: str,
    *,
    prompted: bool,
    lookup: Lookup | None = None,
    today: _dt.date | None = None,
) -> Any:
    """Extract ``slot`` from ``text``; :data:`MISSING` when absent.

    ``prompted``: the bot just asked for this slot, so the whole text may be
    the value (text and entity slots).
    """
    narrowed = _narrow(slot, text)
    if narrowed is None:
        if not prompted or slot.type == "regex":
            return MISSING
        narrowed = text.strip()
    stype = slot.type
    if stype in ("number", "integer"):
        return _number(narrowed, stype == "integer")
    if stype == "regex":
        return narrowed or MISSING
    if stype == "date":
        return _date(narrowed, today or _dt.date.today())
    if stype == "enum":
        return _enum(slot, narrowed)
    if stype == "text":
        if slot.pattern is None and not prompted:
            return MISSING
        return narrowed.strip() or MISSING
    if stype == "entity":
        if (slot.pattern is None and not prompted) or not narrowed.strip() or lookup is None:
            return MISSING
        assert slot.lookup is not None  # noqa: S101 - validated at load
        row = _first_row(await lookup(slot.lookup, narrowed.strip()))
        if row is None:
            return MISSING
        if slot.lookup.field is None:
            return narrowed.strip()
        if isinstance(row, Mapping):
            value = row.get(slot.lookup.field)
            return MISSING if value is None else value
        return MISSING
    return MISSING


def validate(slot: SlotDef, value: Any) -> bool:
    """Check ``value`` against the slot's ``validate`` rules."""
    rules = slot.validate
    if isinstance(value, int | float) and not isinstance(value, bool):
        if rules.min is not None and value < rules.min:
            return False
        if rules.max is not None and value > rules.max:
            return False
    text = str(value)
    if rules.min_length is not None and len(text) < rules.min_length:
        return False
    if rules.max_length is not None and len(text) > rules.max_length:
        return False
    return not (rules.pattern is not None and not rules.pattern.search(text))
