"""The parser of the ``bot:`` section: YAML or a mapping -> :class:`BotDefinition`.

The model and the key structure are in :mod:`talkwire.server.dialogue.definition`.
Every error is a :class:`~talkwire.server.errors.ConfigError` in the one format
of :mod:`talkwire.connectors.sections`: the dotted key, the file and line when
the definition came from YAML (a bot file, or an inline ``bot:`` of the config
file), then what is wrong.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from talkwire.connectors.sections import Section, describe, dotted, load_yaml
from talkwire.connectors.templates import LENIENT, Template, TemplateSyntaxError, compile_template
from talkwire.server.dialogue.definition import (
    DEFAULT_MESSAGES,
    SLOT_TYPES,
    ActionDef,
    BotDefinition,
    FallbackDef,
    HandoffDef,
    IntentDef,
    LlmConfig,
    LookupDef,
    Path_,
    QuickReplyDef,
    SlotDef,
    Validation,
)
from talkwire.server.errors import ConfigError

__all__ = ["load_bot", "load_bot_text"]

# The keys each part of the bot section allows (see the structure in definition.py).
_SLOT_KEYS = (
    "type",
    "required",
    "pattern",
    "values",
    "lookup",
    "prompt",
    "prompt_quick_replies",
    "validate",
    "invalid",
    "default",
    "description",
)
_INTENT_KEYS = (
    "label",
    "description",
    "examples",
    "patterns",
    "slots",
    "action",
    "reply",
    "not_found",
    "quick_replies",
    "subscribe",
    "suggest",
    "confirm",
    "invalidate",
    "handoff",
)
_LLM_KEYS = (
    "enabled",
    "base_url",
    "model",
    "api_key_env",
    "mode",
    "tools",
    "bind",
    "system_prompt",
    "timeout",
    "max_rounds",
    "history",
    "temperature",
)
_BOT_KEYS = (
    "name",
    "matcher",
    "messages",
    "fallback",
    "help",
    "slots",
    "intents",
    "llm",
    "max_attempts",
    "handoff",
)
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_RESERVED_SLOT_NAMES = frozenset({"user", "result", "slots", "session", "index", "row", "value"})


class _Parser:
    """Reads the ``bot`` section under ``tree["bot"]``; paths start with ``"bot"``."""

    def __init__(self, tree: Any, source: str) -> None:
        self.tree = tree
        self.source = source

    def where(self, path: Path_) -> str:
        return describe(self.tree, path)

    def fail(self, path: Path_, message: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: {message}", key=dotted(path))

    # --- primitives

    def mapping(self, value: Any, path: Path_, allowed: Sequence[str] | None = None) -> Any:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a mapping, not {type(value).__name__}")
        # Without ``allowed`` every string key is fine (names of intents, slots, ...).
        names = allowed if allowed is not None else [k for k in value if isinstance(k, str)]
        Section(value, dotted(path)).check_known(names)
        return value

    def string(self, value: Any, path: Path_, *, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(path, "must be a string")
        text = str(value)
        if not text.strip() and not optional:
            raise self.fail(path, "must not be empty")
        return text

    def strings(self, value: Any, path: Path_) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(path, "must be a list of strings")
        return tuple(self.string(v, (*path, i)) for i, v in enumerate(value))

    def number(self, value: Any, path: Path_, *, optional: bool = True) -> float | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, "must be a number")
        return float(value)

    def boolean(self, value: Any, path: Path_, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(path, "must be true or false")
        return value

    def template(self, value: Any, path: Path_, *, optional: bool = False) -> Template | None:
        if value is None and optional:
            return None
        text = self.string(value, path)
        try:
            return compile_template(text, mode=LENIENT)
        except TemplateSyntaxError as exc:
            raise self.fail(path, f"bad template: {exc}") from None

    def req_template(self, value: Any, path: Path_) -> Template:
        tmpl = self.template(value, path)
        assert tmpl is not None  # noqa: S101 - not optional
        return tmpl

    def regex(self, value: Any, path: Path_) -> re.Pattern[str]:
        text = self.string(value, path)
        try:
            return re.compile(text, re.IGNORECASE)
        except re.error as exc:
            raise self.fail(path, f"bad regular expression: {exc}") from None

    def params(self, value: Any, path: Path_) -> dict[str, Template]:
        m = self.mapping(value, path)
        out: dict[str, Template] = {}
        for k, v in m.items():
            if isinstance(v, bool | int | float):
                v = str(v).lower() if isinstance(v, bool) else str(v)
            out[k] = self.req_template(v, (*path, k))
        return out

    def quick_replies(self, value: Any, path: Path_) -> tuple[QuickReplyDef, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(path, "must be a list")
        out: list[QuickReplyDef] = []
        for i, item in enumerate(value):
            p = (*path, i)
            m = self.mapping(item, p, ("label", "intent", "parameters"))
            if "label" not in m or "intent" not in m:
                raise self.fail(p, "a quick reply needs 'label' and 'intent'")
            out.append(
                QuickReplyDef(
                    label=self.req_template(m["label"], (*p, "label")),
                    intent=self.string(m["intent"], (*p, "intent")),
                    parameters=self.params(m.get("parameters"), (*p, "parameters")),
                )
            )
        return tuple(out)

    # --- sections

    def slot(self, name: str, value: Any, path: Path_) -> SlotDef:
        if not _NAME_RE.match(name) or name in _RESERVED_SLOT_NAMES:
            raise self.fail(path, f"bad or reserved slot name {name!r}")
        m = self.mapping(value, path, _SLOT_KEYS)
        stype = self.string(m.get("type", "text"), (*path, "type"))
        if stype not in SLOT_TYPES:
            raise self.fail(
                (*path, "type"), f"unknown slot type {stype!r} ({', '.join(SLOT_TYPES)})"
            )
        pattern = self.regex(m["pattern"], (*path, "pattern")) if "pattern" in m else None
        if stype == "regex" and pattern is None:
            raise self.fail(path, "a regex slot needs 'pattern'")
        values: dict[str, tuple[str, ...]] = {}
        if stype == "enum":
            raw = m.get("values")
            vp = (*path, "values")
            if isinstance(raw, list):
                values = {self.string(v, (*vp, i)): () for i, v in enumerate(raw)}
            elif isinstance(raw, Mapping):
                values = {
                    self.string(k, (*vp, str(k))): self.strings(v, (*vp, str(k)))
                    for k, v in raw.items()
                }
            else:
                raise self.fail(vp, "an enum slot needs 'values' (a list or a mapping)")
            if not values:
                raise self.fail(vp, "must not be empty")
        lookup: LookupDef | None = None
        if stype == "entity":
            lp = (*path, "lookup")
            if "lookup" not in m:
                raise self.fail(path, "an entity slot needs 'lookup'")
            lm = self.mapping(m["lookup"], lp, ("connector", "operation", "params", "field"))
            for req in ("connector", "operation"):
                if req not in lm:
                    raise self.fail(lp, f"missing '{req}'")
            lookup = LookupDef(
                connector=self.string(lm["connector"], (*lp, "connector")),
                operation=self.string(lm["operation"], (*lp, "operation")),
                params=self.params(lm.get("params"), (*lp, "params")),
                field=self.string(lm.get("field"), (*lp, "field"), optional=True),
                path=lp,
            )
        vm = self.mapping(
            m.get("validate"),
            (*path, "validate"),
            ("min", "max", "min_length", "max_length", "pattern"),
        )
        vpath = (*path, "validate")
        validation = Validation(
            min=self.number(vm.get("min"), (*vpath, "min")),
            max=self.number(vm.get("max"), (*vpath, "max")),
            min_length=_opt_int(self.number(vm.get("min_length"), (*vpath, "min_length"))),
            max_length=_opt_int(self.number(vm.get("max_length"), (*vpath, "max_length"))),
            pattern=self.regex(vm["pattern"], (*vpath, "pattern")) if "pattern" in vm else None,
        )
        return SlotDef(
            name=name,
            type=stype,
            required=self.boolean(m.get("required"), (*path, "required"), True),
            pattern=pattern,
            values=values,
            lookup=lookup,
            prompt=self.template(m.get("prompt"), (*path, "prompt"), optional=True),
            prompt_quick_replies=self.quick_replies(
                m.get("prompt_quick_replies"), (*path, "prompt_quick_replies")
            ),
            validate=validation,
            invalid=self.template(m.get("invalid"), (*path, "invalid"), optional=True),
            default=m.get("default"),
            path=path,
        )

    def action(self, value: Any, path: Path_) -> ActionDef:
        m = self.mapping(value, path, ("connector", "operation", "params", "custom"))
        params = self.params(m.get("params"), (*path, "params"))
        if "custom" in m:
            if "connector" in m or "operation" in m:
                raise self.fail(path, "use either 'custom' or 'connector'+'operation'")
            return ActionDef(
                params=params, custom=self.string(m["custom"], (*path, "custom")), path=path
            )
        for req in ("connector", "operation"):
            if req not in m:
                raise self.fail(path, f"missing '{req}' (or use 'custom')")
        return ActionDef(
            params=params,
            connector=self.string(m["connector"], (*path, "connector")),
            operation=self.string(m["operation"], (*path, "operation")),
            path=path,
        )

    def intent(
        self, name: str, value: Any, path: Path_, shared: Mapping[str, SlotDef]
    ) -> IntentDef:
        if not _NAME_RE.match(name):
            raise self.fail(path, f"bad intent name {name!r} (use [a-z][a-z0-9_]*)")
        m = self.mapping(value, path, _INTENT_KEYS)
        slots: list[SlotDef] = []
        sp = (*path, "slots")
        raw_slots = m.get("slots")
        if isinstance(raw_slots, list):
            for i, ref in enumerate(raw_slots):
                ref_name = self.string(ref, (*sp, i))
                if ref_name not in shared:
                    raise self.fail((*sp, i), f"unknown slot {ref_name!r} (define it in bot.slots)")
                slots.append(shared[ref_name])
        elif isinstance(raw_slots, Mapping):
            for sname, sdef in self.mapping(raw_slots, sp).items():
                if sdef is None:
                    if sname not in shared:
                        raise self.fail((*sp, sname), f"unknown slot {sname!r}")
                    slots.append(shared[sname])
                else:
                    slots.append(self.slot(sname, sdef, (*sp, sname)))
        elif raw_slots is not None:
            raise self.fail(sp, "must be a list of slot names or a mapping of slot definitions")
        examples = self.strings(m.get("examples"), (*path, "examples"))
        patterns = self.strings(m.get("patterns"), (*path, "patterns"))
        for i, pat in enumerate(patterns):
            self.regex(pat, (*path, "patterns", i))
        action = self.action(m["action"], (*path, "action")) if "action" in m else None
        reply = self.template(m.get("reply"), (*path, "reply"), optional=True)
        if action is None and reply is None and m.get("handoff") is None:
            raise self.fail(path, "an intent needs an 'action' or a 'reply' (or a 'handoff')")
        subscribe = tuple(
            self.req_template(s, (*path, "subscribe", i))
            for i, s in enumerate(self.strings(m.get("subscribe"), (*path, "subscribe")))
        )
        invalidate = tuple(
            self.req_template(s, (*path, "invalidate", i))
            for i, s in enumerate(self.strings(m.get("invalidate"), (*path, "invalidate")))
        )
        return IntentDef(
            name=name,
            invalidate=invalidate,
            label=self.string(m.get("label", name.replace("_", " ")), (*path, "label")),
            description=self.string(m.get("description", ""), (*path, "description"), optional=True)
            or "",
            examples=examples,
            patterns=patterns,
            slots=tuple(slots),
            action=action,
            reply=reply,
            not_found=self.template(m.get("not_found"), (*path, "not_found"), optional=True),
            confirm=self.template(m.get("confirm"), (*path, "confirm"), optional=True),
            quick_replies=self.quick_replies(m.get("quick_replies"), (*path, "quick_replies")),
            subscribe=subscribe,
            suggest=self.boolean(m.get("suggest"), (*path, "suggest"), False),
            handoff=(
                self.handoff(m["handoff"], (*path, "handoff"), rule=False)
                if m.get("handoff") is not None
                else None
            ),
            path=path,
        )

    def handoff(self, value: Any, path: Path_, *, rule: bool) -> HandoffDef:
        keys = ("queue", "reason", "after_fallbacks") if rule else ("queue", "reason")
        m = self.mapping(value, path, keys)
        queue = self.string(m.get("queue", ""), (*path, "queue"), optional=True) or ""
        if queue and not _QUEUE_RE.match(queue):
            raise self.fail(
                (*path, "queue"), f"bad queue name {queue!r} (use [A-Za-z0-9_-]{{1,64}})"
            )
        after = _opt_int(self.number(m.get("after_fallbacks"), (*path, "after_fallbacks"))) or 0
        if after < 0:
            raise self.fail((*path, "after_fallbacks"), "expected a number >= 0")
        return HandoffDef(
            queue=queue,
            reason=self.template(m.get("reason"), (*path, "reason"), optional=True),
            after_fallbacks=after,
        )

    def llm(self, value: Any, path: Path_) -> LlmConfig | None:
        m = self.mapping(value, path, _LLM_KEYS)
        enabled = self.boolean(m.get("enabled"), (*path, "enabled"), True)
        for req in ("base_url", "model"):
            if req not in m:
                raise self.fail(path, f"missing '{req}'")
        mode = self.string(m.get("mode", "fallback"), (*path, "mode"))
        if mode not in ("fallback", "always"):
            raise self.fail((*path, "mode"), "must be 'fallback' or 'always'")
        tools = self.strings(m["tools"], (*path, "tools")) if "tools" in m else None
        for i, t in enumerate(tools or ()):
            if t.count(".") != 1:
                raise self.fail((*path, "tools", i), "must be 'connector.operation'")
        base = LlmConfig(base_url="", model="")
        return LlmConfig(
            base_url=self.string(m["base_url"], (*path, "base_url")),
            model=self.string(m["model"], (*path, "model")),
            api_key_env=self.string(m.get("api_key_env"), (*path, "api_key_env"), optional=True),
            enabled=enabled,
            mode=mode,
            tools=tools,
            bind=self.params(m.get("bind"), (*path, "bind")),
            system_prompt=self.string(
                m.get("system_prompt", base.system_prompt), (*path, "system_prompt")
            ),
            timeout=self.number(m.get("timeout", base.timeout), (*path, "timeout")) or base.timeout,
            max_rounds=int(self.number(m.get("max_rounds", 4), (*path, "max_rounds")) or 4),
            history=int(self.number(m.get("history", 12), (*path, "history")) or 12),
            temperature=self.number(m.get("temperature"), (*path, "temperature")),
        )

    def bot(self, value: Any) -> BotDefinition:
        root: Path_ = ("bot",)
        m = self.mapping(value, root, _BOT_KEYS)
        shared: dict[str, SlotDef] = {}
        for sname, sdef in self.mapping(m.get("slots"), (*root, "slots")).items():
            shared[sname] = self.slot(sname, sdef, (*root, "slots", sname))
        intents_raw = self.mapping(m.get("intents"), (*root, "intents"))
        if not intents_raw:
            raise self.fail((*root, "intents"), "a bot needs at least one intent")
        intents = {
            name: self.intent(name, idef, (*root, "intents", name), shared)
            for name, idef in intents_raw.items()
        }
        # cross references
        for intent in intents.values():
            qrs: list[tuple[QuickReplyDef, Path_]] = [
                (q, (*intent.path, "quick_replies", i)) for i, q in enumerate(intent.quick_replies)
            ]
            for s in intent.slots:
                qrs += [
                    (q, (*s.path, "prompt_quick_replies", i))
                    for i, q in enumerate(s.prompt_quick_replies)
                ]
            for q, qp in qrs:
                if q.intent not in intents:
                    raise self.fail((*qp, "intent"), f"unknown intent {q.intent!r}")
        mm = self.mapping(m.get("matcher"), (*root, "matcher"))
        mopts = {k: v for k, v in mm.items() if k not in ("name", "margin")}
        messages_raw = self.mapping(m.get("messages"), (*root, "messages"), tuple(DEFAULT_MESSAGES))
        messages = {
            k: self.req_template(v, (*root, "messages", k)) for k, v in messages_raw.items()
        }
        fp = (*root, "fallback")
        fm = self.mapping(m.get("fallback"), fp, ("reply", "suggestions"))
        suggestions = self.strings(fm.get("suggestions"), (*fp, "suggestions"))
        for i, sugg in enumerate(suggestions):
            if sugg not in intents:
                raise self.fail((*fp, "suggestions", i), f"unknown intent {sugg!r}")
        fallback = FallbackDef(
            reply=self.req_template(
                fm.get("reply", "Sorry, I didn't understand that. I can help with:"),
                (*fp, "reply"),
            ),
            suggestions=suggestions,
        )
        help_intent = self.string(m.get("help"), (*root, "help"), optional=True)
        if help_intent is not None and help_intent not in intents:
            raise self.fail((*root, "help"), f"unknown intent {help_intent!r}")
        if help_intent is None and "help" in intents:
            help_intent = "help"
        max_attempts = int(self.number(m.get("max_attempts", 3), (*root, "max_attempts")) or 3)
        llm = self.llm(m["llm"], (*root, "llm")) if m.get("llm") is not None else None
        return BotDefinition(
            name=self.string(m.get("name", "bot"), (*root, "name")),
            intents=intents,
            fallback=fallback,
            messages=messages,
            help_intent=help_intent,
            matcher_name=self.string(mm.get("name", "builtin"), (*root, "matcher", "name")),
            matcher_options=mopts,
            clarify_margin=self.number(mm.get("margin", 0.04), (*root, "matcher", "margin")) or 0.0,
            max_attempts=max(1, max_attempts),
            llm=llm if llm is not None and llm.enabled else None,
            handoff=(
                self.handoff(m["handoff"], (*root, "handoff"), rule=True)
                if m.get("handoff") is not None
                else None
            ),
            source=self.source,
            tree=self.tree,
        )


def _opt_int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _unwrap(data: Any) -> tuple[Any, Any]:
    """Accept ``{bot: {...}}`` (a whole config file) or the bot section itself."""
    if isinstance(data, Mapping) and "bot" in data:
        return data["bot"], data
    return data, {"bot": data}


def _source_of(section: Any, default: str) -> str:
    return str(getattr(section, "source", "") or default)


def load_bot_text(text: str, *, source: str = "<yaml>") -> BotDefinition:
    """Parse a bot definition from YAML text (a whole config with ``bot:`` or the section)."""
    section, tree = _unwrap(load_yaml(text, source=source))
    return _Parser(tree, source).bot(section)


def load_bot(
    source: Mapping[str, Any] | str | os.PathLike[str],
    *,
    source_name: str | None = None,
) -> BotDefinition:
    """Load and validate a bot definition.

    ``source`` is the ``bot:`` mapping (or a whole config mapping containing
    ``bot``), or the path of a YAML file. A mapping loaded from a config file
    (:func:`talkwire.connectors.sections.load_yaml`) keeps its lines, so errors
    name them as a bot file's do. Raises :class:`ConfigError`.
    """
    if isinstance(source, Mapping):
        section, tree = _unwrap(source)
        return _Parser(tree, source_name or _source_of(section, "<config>")).bot(section)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"bot: cannot read {path}: {exc.strerror}") from None
    return load_bot_text(text, source=source_name or str(path))
