"""The dialogue engine: a :class:`~talkwire.server.turns.TurnHandler` driven by a bot definition.

One turn:

1. A structured ``action`` turn names the intent; its parameters fill the
   intent's slots (through the same extractors and validation) and the matcher
   is skipped. Unknown intents get an ``INVALID_ARGUMENT`` error frame.
2. A text turn first answers a pending question (a slot prompt, a confirmation,
   or an LLM write confirmation); "cancel" abandons it. A clearly different
   intent interrupts it: a confident, untied match of another intent switches
   topic even when the text also holds a value for the slot ("can I get a
   refund for order 1001?" while asked for a ticket number), unless the text is
   only that value ("1001", "ticket 5"). An answer that does not fit is asked
   for again (up to ``max_attempts``).
3. Otherwise the matcher picks the intent. Below the threshold: the LLM policy
   when configured, else the fallback reply with suggestion buttons. Two
   candidates within ``matcher.margin``: a clarifying question with both as buttons.
4. Missing required slots are prompted for (``ctx.prompt``); the pending intent
   and slots live in ``ctx.state["dialogue"]`` (JSON only), so the next turn --
   even after a restart -- continues it.
5. The action runs with parameters rendered from slots and the identity's
   claims (``{user.customer_id}``: always the server-side identity, never user
   input); an empty result renders ``not_found``; connector errors become an
   ``error`` frame with a friendly message and the connector's retriable flag.
   Then ``subscribe`` keys are subscribed and the reply is sent.
6. An intent with ``confirm`` asks it (a ``prompt`` for slot ``_confirm`` with
   Yes / No buttons: the reserved intents ``_confirm`` and ``_decline``) once
   its slots are filled; the action runs only after a yes ("yes", "ok", "go
   ahead" or the Yes button); a no declines, another intent interrupts.
7. An intent with ``handoff:`` (after its reply), or ``bot.handoff.after_fallbacks``
   fallback replies in a row, asks for a person
   (:func:`~talkwire.server.handoff.signal.request_handoff`); the handoff turn
   router queues the session once the turn is done.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import re
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import grpc

from talkwire.connectors.base import CallContext
from talkwire.connectors.caller import caller_scope
from talkwire.connectors.errors import (
    ConnectorError,
    ConnectorNotFoundError,
    ConnectorTimeoutError,
    ConnectorUnavailableError,
    OperationNotFoundError,
    RejectedInputError,
    ResultNotFoundError,
)
from talkwire.connectors.templates import Template, json_safe, lookup
from talkwire.server.dialogue.actions import (
    ActionContext,
    CustomAction,
    RegistryLike,
    find_action,
)
from talkwire.server.dialogue.definition import (
    ActionDef,
    BotDefinition,
    HandoffDef,
    IntentDef,
    LookupDef,
    QuickReplyDef,
    SlotDef,
)
from talkwire.server.dialogue.matcher import (
    IntentSpec,
    Matcher,
    MatchResult,
    load_matcher,
    normalize,
)
from talkwire.server.dialogue.slots import MISSING, extract, validate
from talkwire.server.errors import ConfigError, PermissionDeniedError
from talkwire.server.handoff.signal import request_handoff
from talkwire.server.turns import QuickReply, Turn, TurnContext

__all__ = [
    "CONFIRM_INTENT",
    "CONFIRM_SLOT",
    "DECLINE_INTENT",
    "STATE_KEY",
    "DialogueEngine",
    "MissingClaimError",
    "intent_specs",
]

log = logging.getLogger(__name__)

STATE_KEY = "dialogue"
_FALLBACKS = "fallbacks_in_a_row"
_CANCEL_RE = re.compile(
    r"^\s*(cancel|stop|never ?mind|forget it|abort|quit)\b[\s.!]*$", re.IGNORECASE
)

_YES_RE = re.compile(
    r"^\s*(yes|y|yeah|yep|sure|ok|okay|confirm(ed)?|go ahead|do it|please do)\b", re.IGNORECASE
)
_NO_RE = re.compile(r"^\s*(no|n|nope|nah|don'?t|do not|not now)\b", re.IGNORECASE)
# Words that may stand around a bare slot value ("it's order 1001", "ticket 5 please").
_FILLER = frozenset(
    [
        "it",
        "its",
        "is",
        "the",
        "a",
        "an",
        "my",
        "number",
        "no",
        "nr",
        "id",
        "order",
        "ticket",
        "case",
        "please",
        "thats",
        "that",
        "im",
        "eur",
        "euro",
        "euros",
        "usd",
        "dollar",
        "dollars",
    ]
)

CONFIRM_SLOT = "_confirm"
CONFIRM_INTENT = "_confirm"
DECLINE_INTENT = "_decline"

_FRAME_ID: contextvars.ContextVar[str] = contextvars.ContextVar(
    "talkwire_dialogue_frame", default=""
)


class MissingClaimError(Exception):
    """A parameter template reads an identity claim the caller does not have."""


def intent_specs(bot: BotDefinition) -> list[IntentSpec]:
    """The matcher's view of the bot's intents."""
    return [IntentSpec(i.name, i.examples, i.patterns) for i in bot.intents.values()]


def _bare_value(text: str) -> bool:
    """True if ``text`` is only a value ("1001", "it's order 1001", "ticket 5 please")."""
    return all(tok == "#" or tok in _FILLER for tok in normalize(text))


def _is_empty(result: Any) -> bool:
    if result is None:
        return True
    return isinstance(result, Mapping | list | tuple) and len(result) == 0


class DialogueEngine:
    """Turns user frames into connector calls and reply frames, as the bot says.

    ``bot``: a :class:`BotDefinition` (see :func:`load_bot`); ``connectors``: the
    connector registry (``ConnectorRegistry``, entered); ``matcher``: defaults to
    the one the bot names (``bot.matcher.name``, resolved through the
    ``talkwire.matchers`` entry points); ``actions``: custom actions by name
    (checked before the ``talkwire.actions`` entry points); ``llm``: an
    :class:`~talkwire.server.dialogue.llm.LlmPolicy` (default: built from
    ``bot.llm`` when present); ``action_timeout``: seconds, becomes the
    connector call's deadline.
    """

    def __init__(
        self,
        bot: BotDefinition,
        connectors: RegistryLike,
        matcher: Matcher | None = None,
        *,
        actions: Mapping[str, CustomAction] | None = None,
        llm: Any = None,
        action_timeout: float = 10.0,
        check_connectors: bool = True,
    ) -> None:
        self.bot = bot
        self.connectors = connectors
        self.matcher = matcher or load_matcher(
            bot.matcher_name, intent_specs(bot), bot.matcher_options
        )
        self._actions: dict[str, CustomAction] = dict(actions or {})
        self.action_timeout = action_timeout
        self._resolve_custom_actions()
        if check_connectors:
            self._check_connectors()
        if llm is None and bot.llm is not None:
            from talkwire.server.dialogue.llm import LlmPolicy

            llm = LlmPolicy(bot, connectors)
        self.llm = llm

    # ------------------------------------------------------------------ validation

    def _resolve_custom_actions(self) -> None:
        for intent in self.bot.intents.values():
            action = intent.action
            if action is None or action.custom is None or action.custom in self._actions:
                continue
            found = find_action(action.custom)
            if found is None:
                raise ConfigError(
                    f"{self.bot.where((*action.path, 'custom'))}: no custom action "
                    f"{action.custom!r} (entry-point group talkwire.actions)"
                )
            self._actions[action.custom] = found

    def _check_connectors(self) -> None:
        refs: list[tuple[str, str, tuple[str | int, ...]]] = []
        for intent in self.bot.intents.values():
            if intent.action is not None and intent.action.connector is not None:
                assert intent.action.operation is not None  # noqa: S101
                refs.append((intent.action.connector, intent.action.operation, intent.action.path))
            for slot in intent.slots:
                if slot.lookup is not None:
                    refs.append((slot.lookup.connector, slot.lookup.operation, slot.lookup.path))
        for conn_name, op_name, path in refs:
            try:
                conn = self.connectors.get(conn_name)
            except ConnectorNotFoundError:
                raise ConfigError(
                    f"{self.bot.where((*path, 'connector'))}: unknown connector {conn_name!r}"
                ) from None
            except Exception:
                log.debug("cannot check connector %r now", conn_name, exc_info=True)
                continue
            ops = getattr(conn, "operations", None)
            if isinstance(ops, Mapping) and op_name not in ops:
                raise ConfigError(
                    f"{self.bot.where((*path, 'operation'))}: connector {conn_name!r} has no "
                    f"operation {op_name!r}"
                )

    # ------------------------------------------------------------------ state

    @staticmethod
    def _state(ctx: TurnContext) -> MutableMapping[str, Any]:
        st = ctx.state.get(STATE_KEY)
        if not isinstance(st, dict):
            st = {}
            ctx.state[STATE_KEY] = st
        return st

    @staticmethod
    def _save(ctx: TurnContext, st: MutableMapping[str, Any]) -> None:
        # reassign so stores that track top-level keys see the change
        ctx.state[STATE_KEY] = dict(st)

    # ------------------------------------------------------------------ turn

    async def handle(self, turn: Turn, ctx: TurnContext) -> None:
        st = self._state(ctx)
        token = _FRAME_ID.set(turn.frame_id)
        try:
            if turn.is_action:
                await self._handle_action(turn, ctx, st)
            else:
                await self._handle_text(turn, (turn.text or "").strip(), ctx, st)
        except Exception:  # a turn must never take the session down
            log.exception("dialogue turn failed (session %s)", ctx.session_id)
            st.pop("pending", None)
            ctx.error(grpc.StatusCode.INTERNAL, self._msg("error", ctx), retriable=False)
        finally:
            _FRAME_ID.reset(token)
            self._save(ctx, st)

    async def _handle_action(
        self, turn: Turn, ctx: TurnContext, st: MutableMapping[str, Any]
    ) -> None:
        name = turn.intent or ""
        if self.llm is not None and name.startswith("_llm_"):
            await self.llm.handle_action(name, dict(turn.parameters), ctx, st)
            return
        if name in (CONFIRM_INTENT, DECLINE_INTENT):
            await self._confirmation_button(name == CONFIRM_INTENT, ctx, st)
            return
        intent = self.bot.intents.get(name)
        if intent is None:
            ctx.error(grpc.StatusCode.INVALID_ARGUMENT, self._msg("unknown_intent", ctx))
            return
        st.pop("pending", None)
        slots: dict[str, Any] = {}
        for slot in intent.slots:
            if slot.name not in turn.parameters:
                continue
            raw = turn.parameters[slot.name]
            value = await self._extract(slot, str(raw), ctx, prompted=True)
            if value is MISSING or not validate(slot, value):
                self._ask(intent, slot, slots, ctx, st, attempts=1, invalid=True)
                return
            slots[slot.name] = value
        await self._run_intent(intent, slots, ctx, st)

    async def _handle_text(
        self, turn: Turn, text: str, ctx: TurnContext, st: MutableMapping[str, Any]
    ) -> None:
        if not text:
            self._fallback(ctx, None)
            return
        if self.llm is not None and self.llm.pending(st):
            await self.llm.handle_text(text, ctx, st)
            return
        pending = st.get("pending")
        if isinstance(pending, dict):
            if _CANCEL_RE.match(text):
                st.pop("pending", None)
                ctx.reply(self._msg("cancelled", ctx))
                return
            if pending.get("awaiting") == CONFIRM_SLOT:
                if await self._continue_confirmation(pending, text, ctx, st):
                    return
            elif await self._continue_pending(pending, text, ctx, st):
                return
        if self.llm is not None and self.llm.mode == "always":
            await self.llm.handle_text(text, ctx, st)
            return
        result = self.matcher.match(text)
        await self._dispatch(result, text, ctx, st)

    async def _dispatch(
        self, result: MatchResult, text: str, ctx: TurnContext, st: MutableMapping[str, Any]
    ) -> None:
        if result.intent is None or result.intent not in self.bot.intents:
            if self.llm is not None:
                await self.llm.handle_text(text, ctx, st)
            else:
                self._fallback(ctx, result)
            return
        if result.is_tie(self.bot.clarify_margin):
            await self._clarify(result, text, ctx)
            return
        intent = self.bot.intents[result.intent]
        slots = await self._extract_all(intent, text, ctx)
        await self._run_intent(intent, slots, ctx, st)

    async def _continue_pending(
        self,
        pending: dict[str, Any],
        text: str,
        ctx: TurnContext,
        st: MutableMapping[str, Any],
    ) -> bool:
        """Try to answer the pending prompt; False if the text is about something else."""
        intent = self.bot.intents.get(str(pending.get("intent")))
        slot = None
        if intent is not None:
            slot = next((s for s in intent.slots if s.name == pending.get("awaiting")), None)
        if intent is None or slot is None:
            st.pop("pending", None)
            return False
        slots = dict(pending.get("slots") or {})
        value = await self._extract(slot, text, ctx, prompted=True)
        switches = self._switches_intent(text, intent.name)
        if value is not MISSING and validate(slot, value):
            if switches and not _bare_value(text):
                st.pop("pending", None)
                return False
            slots[slot.name] = value
            for other in intent.slots:
                if other.name not in slots:
                    extra = await self._extract(other, text, ctx, prompted=False)
                    if extra is not MISSING and validate(other, extra):
                        slots[other.name] = extra
            await self._run_intent(intent, slots, ctx, st)
            return True
        # not an answer: did the user change the subject?
        if switches:
            st.pop("pending", None)
            return False
        attempts = int(pending.get("attempts", 0)) + 1
        if attempts >= self.bot.max_attempts:
            st.pop("pending", None)
            ctx.reply(self._msg("gave_up", ctx), quick_replies=self._suggestions(ctx))
            return True
        self._ask(intent, slot, slots, ctx, st, attempts=attempts, invalid=True)
        return True

    def _switches_intent(self, text: str, current: str) -> bool:
        """True if ``text`` confidently names another intent than ``current`` (no tie)."""
        result = self.matcher.match(text)
        return (
            result.intent is not None
            and result.intent != current
            and result.intent in self.bot.intents
            and not result.is_tie(self.bot.clarify_margin)
        )

    # ------------------------------------------------------------------ confirmation

    def _ask_confirmation(
        self,
        intent: IntentDef,
        slots: Mapping[str, Any],
        ctx: TurnContext,
        st: MutableMapping[str, Any],
        *,
        attempts: int = 0,
    ) -> None:
        assert intent.confirm is not None  # noqa: S101 - only called for such intents
        st["pending"] = {
            "intent": intent.name,
            "slots": json_safe(dict(slots)),
            "awaiting": CONFIRM_SLOT,
            "attempts": attempts,
        }
        text = intent.confirm.render(self._values(ctx, slots))
        if attempts:
            text = f"{self._msg('confirm_again', ctx)} {text}"
        ctx.prompt(
            CONFIRM_SLOT,
            text,
            quick_replies=[
                QuickReply(self._msg("yes", ctx), CONFIRM_INTENT),
                QuickReply(self._msg("no", ctx), DECLINE_INTENT),
            ],
            intent=intent.name,
        )

    def _pending_confirmation(
        self, st: MutableMapping[str, Any]
    ) -> tuple[IntentDef, dict[str, Any]] | None:
        pending = st.get("pending")
        if not isinstance(pending, dict) or pending.get("awaiting") != CONFIRM_SLOT:
            return None
        intent = self.bot.intents.get(str(pending.get("intent")))
        if intent is None:
            st.pop("pending", None)
            return None
        return intent, dict(pending.get("slots") or {})

    async def _answer_confirmation(
        self,
        yes: bool,
        intent: IntentDef,
        slots: dict[str, Any],
        ctx: TurnContext,
        st: MutableMapping[str, Any],
    ) -> None:
        st.pop("pending", None)
        if yes:
            await self._run_intent(intent, slots, ctx, st, confirmed=True)
        else:
            ctx.reply(self._msg("declined", ctx), intent=intent.name)

    async def _confirmation_button(
        self, yes: bool, ctx: TurnContext, st: MutableMapping[str, Any]
    ) -> None:
        found = self._pending_confirmation(st)
        if found is None:
            ctx.reply(self._msg("nothing_to_confirm", ctx), quick_replies=self._suggestions(ctx))
            return
        await self._answer_confirmation(yes, *found, ctx, st)

    async def _continue_confirmation(
        self,
        pending: dict[str, Any],
        text: str,
        ctx: TurnContext,
        st: MutableMapping[str, Any],
    ) -> bool:
        """Answer the pending confirmation; False if the text is about something else."""
        found = self._pending_confirmation(st)
        if found is None:
            return False
        intent, slots = found
        if _YES_RE.match(text) or _NO_RE.match(text):
            await self._answer_confirmation(bool(_YES_RE.match(text)), intent, slots, ctx, st)
            return True
        if self._switches_intent(text, intent.name):
            st.pop("pending", None)
            return False
        attempts = int(pending.get("attempts", 0)) + 1
        if attempts >= self.bot.max_attempts:
            st.pop("pending", None)
            ctx.reply(self._msg("gave_up", ctx), quick_replies=self._suggestions(ctx))
            return True
        self._ask_confirmation(intent, slots, ctx, st, attempts=attempts)
        return True

    # ------------------------------------------------------------------ slots

    async def _extract(self, slot: SlotDef, text: str, ctx: TurnContext, *, prompted: bool) -> Any:
        async def do_lookup(spec: LookupDef, candidate: str) -> Any:
            values = self._values(ctx, {})
            values["value"] = candidate
            params = self._render_params(spec.params, values)
            try:
                return await self.connectors.invoke(
                    spec.connector, spec.operation, params, self._call_context(ctx, None)
                )
            except (ResultNotFoundError, RejectedInputError):
                return None

        return await extract(slot, text, prompted=prompted, lookup=do_lookup)

    async def _extract_all(self, intent: IntentDef, text: str, ctx: TurnContext) -> dict[str, Any]:
        slots: dict[str, Any] = {}
        for slot in intent.slots:
            value = await self._extract(slot, text, ctx, prompted=False)
            if value is not MISSING and validate(slot, value):
                slots[slot.name] = value
        return slots

    def _ask(
        self,
        intent: IntentDef,
        slot: SlotDef,
        slots: Mapping[str, Any],
        ctx: TurnContext,
        st: MutableMapping[str, Any],
        *,
        attempts: int = 0,
        invalid: bool = False,
    ) -> None:
        st["pending"] = {
            "intent": intent.name,
            "slots": json_safe(dict(slots)),
            "awaiting": slot.name,
            "attempts": attempts,
        }
        values = self._values(ctx, slots)
        prompt = (
            slot.prompt.render(values)
            if slot.prompt is not None
            else f"What is the {slot.name.replace('_', ' ')}?"
        )
        if invalid and slot.invalid is not None:
            prompt = f"{slot.invalid.render(values)} {prompt}"
        elif invalid:
            prompt = f"{self._msg('invalid_input', ctx)} {prompt}"
        ctx.prompt(
            slot.name,
            prompt,
            quick_replies=self._quick_replies(slot.prompt_quick_replies, values),
            intent=intent.name,
        )

    # ------------------------------------------------------------------ running an intent

    async def _run_intent(
        self,
        intent: IntentDef,
        slots: dict[str, Any],
        ctx: TurnContext,
        st: MutableMapping[str, Any],
        *,
        confirmed: bool = False,
    ) -> None:
        for slot in intent.slots:
            if slot.name in slots:
                continue
            if slot.default is not None:
                slots[slot.name] = slot.default
            elif slot.required:
                self._ask(intent, slot, slots, ctx, st)
                return
        if intent.confirm is not None and not confirmed:
            self._ask_confirmation(intent, slots, ctx, st)
            return
        st.pop("pending", None)
        st.pop(_FALLBACKS, None)
        values = self._values(ctx, slots)
        result: Any = None
        if intent.action is not None:
            try:
                outcome = await self._execute(intent, intent.action, slots, values, ctx)
            except MissingClaimError as exc:
                log.warning("intent %s: %s", intent.name, exc)
                ctx.error(grpc.StatusCode.PERMISSION_DENIED, self._msg("denied", ctx))
                return
            except ResultNotFoundError:
                outcome = (None, False)
            except ConnectorError as exc:
                self._connector_error(exc, ctx)
                return
            result, replied = outcome
            if replied:
                await self._subscribe(intent, values, ctx)
                return
            if _is_empty(result):
                tmpl = intent.not_found or self.bot.message("not_found")
                ctx.reply(
                    tmpl.render(values),
                    quick_replies=self._quick_replies(intent.quick_replies, values),
                    intent=intent.name,
                )
                return
            values["result"] = result
            self._invalidate(intent, values)
            await self._subscribe(intent, values, ctx)
        if intent.handoff is not None:
            self._hand_off(ctx, intent.handoff, values)
            if intent.reply is None and intent.action is None:
                return
        text = (intent.reply or self.bot.message("done")).render(values)
        quick = self._quick_replies(intent.quick_replies, values)
        if intent.suggest:
            quick += self._suggestions(ctx, exclude=intent.name)
        data: dict[str, Any] = {"intent": intent.name, "slots": json_safe(slots)}
        if intent.action is not None:
            data["result"] = json_safe(result)
        ctx.reply(text, quick_replies=quick, data=data, intent=intent.name)

    async def _execute(
        self,
        intent: IntentDef,
        action: ActionDef,
        slots: Mapping[str, Any],
        values: Mapping[str, Any],
        ctx: TurnContext,
    ) -> tuple[Any, bool]:
        params = self._render_params(action.params, values)
        call_ctx = self._call_context(ctx, action)
        if action.custom is not None:
            fn = self._actions[action.custom]
            actx = ActionContext(
                intent=intent.name,
                slots=dict(slots),
                params=params,
                identity=ctx.identity,
                connectors=self.connectors,
                ctx=ctx,
                call_context=call_ctx,
            )
            out = fn(actx)
            if inspect.isawaitable(out):
                out = await out
            return out, actx.replied and out is None
        assert action.connector is not None  # noqa: S101
        assert action.operation is not None  # noqa: S101
        result = await self.connectors.invoke(action.connector, action.operation, params, call_ctx)
        return result, False

    def _call_context(self, ctx: TurnContext, action: ActionDef | None) -> CallContext:
        ident = ctx.identity
        key = None
        frame_id = _FRAME_ID.get()
        # Writes are deduplicated by this key (per client frame): no frame id, no key,
        # or two turns without ids would share one.
        if action is not None and frame_id:
            key = f"{ctx.session_id}:{frame_id}:{action.label}"
        return CallContext(
            subject=ident.subject,
            claims=caller_scope(ident.subject, ident.claims),
            deadline=time.monotonic() + self.action_timeout,
            idempotency_key=key,
        )

    def _render_params(
        self, params: Mapping[str, Template], values: Mapping[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, tmpl in params.items():
            for path in tmpl.fields:
                if path.split(".", 1)[0] == "user" and lookup(values, path) is MISSING:
                    raise MissingClaimError(f"parameter {name!r} needs claim {path!r}")
            value = tmpl.render_value(values)
            if value is None or value == "":
                continue
            out[name] = value
        return out

    def _invalidate(self, intent: IntentDef, values: Mapping[str, Any]) -> None:
        """Drop the cached answers a successful write made stale (``invalidate`` keys)."""
        keys = [k for k in (t.render(values) for t in intent.invalidate) if k]
        if keys:
            self.connectors.invalidate(keys)

    async def _subscribe(
        self, intent: IntentDef, values: Mapping[str, Any], ctx: TurnContext
    ) -> None:
        for tmpl in intent.subscribe:
            key = tmpl.render(values)
            if not key:
                continue
            try:
                await ctx.subscribe(key)
            except PermissionDeniedError:
                log.info("subscription to %r refused by policy (session %s)", key, ctx.session_id)

    def _connector_error(self, exc: ConnectorError, ctx: TurnContext) -> None:
        log.warning("connector error %s.%s: %s", exc.connector, exc.operation, type(exc).__name__)
        if isinstance(exc, ConnectorTimeoutError):
            key = "timeout"
        elif isinstance(exc, ConnectorUnavailableError):
            key = "unavailable"
        elif isinstance(exc, RejectedInputError):
            key = "invalid_input"
        elif isinstance(exc, ConnectorNotFoundError | OperationNotFoundError):
            key = "error"
        else:
            key = "error"
        ctx.error(exc.code, self._msg(key, ctx), retriable=exc.retriable)

    # ------------------------------------------------------------------ replies

    def _values(self, ctx: TurnContext, slots: Mapping[str, Any]) -> dict[str, Any]:
        ident = ctx.identity
        values: dict[str, Any] = dict(slots)
        values["slots"] = dict(slots)
        values["user"] = caller_scope(ident.subject, ident.claims)
        values["session"] = {"id": ctx.session_id, "locale": ctx.locale}
        return values

    def _msg(self, key: str, ctx: TurnContext, **extra: Any) -> str:
        values = self._values(ctx, {})
        values.update(extra)
        return self.bot.message(key).render(values)

    def _quick_replies(
        self, defs: Sequence[QuickReplyDef], values: Mapping[str, Any]
    ) -> list[QuickReply]:
        out: list[QuickReply] = []
        for q in defs:
            params = {k: t.render_value(values) for k, t in q.parameters.items()}
            out.append(
                QuickReply(
                    label=q.label.render(values),
                    intent=q.intent,
                    parameters={k: json_safe(v) for k, v in params.items() if v is not None},
                )
            )
        return out

    def _suggestions(self, ctx: TurnContext, *, exclude: str = "") -> list[QuickReply]:
        names = self.bot.fallback.suggestions or tuple(self.bot.intents)
        return [
            QuickReply(label=self.bot.intents[n].label, intent=n)
            for n in names
            if n != exclude and n in self.bot.intents
        ]

    @staticmethod
    def _hand_off(ctx: TurnContext, rule: HandoffDef, values: Mapping[str, Any]) -> None:
        reason = rule.reason.render(values) if rule.reason is not None else ""
        request_handoff(ctx.state, rule.queue, reason)

    def _count_fallback(self, ctx: TurnContext) -> None:
        """The ``handoff.after_fallbacks`` rule: N fallback replies in a row ask for a person."""
        rule = self.bot.handoff
        if rule is None or rule.after_fallbacks <= 0:
            return
        st = self._state(ctx)
        count = int(st.get(_FALLBACKS) or 0) + 1
        if count >= rule.after_fallbacks:
            st.pop(_FALLBACKS, None)
            self._hand_off(ctx, rule, self._values(ctx, {}))
        else:
            st[_FALLBACKS] = count

    def _fallback(self, ctx: TurnContext, result: MatchResult | None) -> None:
        self._count_fallback(ctx)
        quick: list[QuickReply] = []
        seen: set[str] = set()
        if result is not None:
            for cand in result.alternatives[:2]:
                if cand.score >= 0.15 and cand.intent in self.bot.intents:
                    quick.append(QuickReply(self.bot.intents[cand.intent].label, cand.intent))
                    seen.add(cand.intent)
        quick += [q for q in self._suggestions(ctx) if q.intent not in seen]
        ctx.reply(
            self.bot.fallback.reply.render(self._values(ctx, {})),
            quick_replies=quick,
            intent="fallback",
        )

    async def _clarify(self, result: MatchResult, text: str, ctx: TurnContext) -> None:
        quick: list[QuickReply] = []
        for cand in result.alternatives[:2]:
            intent = self.bot.intents.get(cand.intent)
            if intent is None:
                continue
            slots = await self._extract_all(intent, text, ctx)
            quick.append(QuickReply(intent.label, intent.name, json_safe(slots)))
        ctx.reply(self._msg("clarify", ctx), quick_replies=quick, intent="clarify")
