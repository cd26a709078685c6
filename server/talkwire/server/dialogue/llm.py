"""The optional LLM tool-calling policy (OpenAI-compatible ``/v1/chat/completions`` over httpx).

Off by default; ``bot.llm`` turns it on::

    llm:
      base_url: http://127.0.0.1:8000/v1     # POST {base_url}/chat/completions
      model: my-model
      api_key_env: OPENAI_API_KEY            # bearer token read from this env variable
      mode: fallback                         # or "always"
      tools: [crm.order_status, crm.open_ticket, erp.get_balance]
      bind: {customer_id: "{user.customer_id}"}

Tools are connector operations; their declared parameters become the JSON
schema the model sees (tool name ``connector__operation``). Identity-bound
parameters -- ``bind`` plus every action parameter of the bot whose template
reads ``user.*`` -- are removed from the schema and always filled server-side
from the caller's claims; whatever the model sends for them is discarded, so a
prompt injection cannot make the model act for another customer. Parameters
the operation does not declare are dropped.

A tool call to a ``write`` operation is not executed: the bot asks the user to
confirm (buttons ``_llm_confirm`` / ``_llm_cancel``, or a "yes"/"no" answer);
the pending call lives in the dialogue state. The conversation history (trimmed
to ``history`` messages) is kept in the dialogue state too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import grpc
import httpx

from talkwire.connectors.base import CallContext, Operation
from talkwire.connectors.caller import caller_scope
from talkwire.connectors.errors import ConnectorError, ResultNotFoundError
from talkwire.connectors.templates import MISSING, Template, json_safe, lookup
from talkwire.server.dialogue.actions import RegistryLike
from talkwire.server.dialogue.definition import BotDefinition, LlmConfig
from talkwire.server.errors import ConfigError
from talkwire.server.turns import QuickReply, TurnContext

__all__ = ["CANCEL_INTENT", "CONFIRM_INTENT", "LlmError", "LlmPolicy", "Tool"]

log = logging.getLogger(__name__)

CONFIRM_INTENT = "_llm_confirm"
CANCEL_INTENT = "_llm_cancel"
_YES_RE = re.compile(
    r"^\s*(yes|y|yeah|yep|sure|ok|okay|confirm|go ahead|do it|please do)\b", re.IGNORECASE
)


class LlmError(Exception):
    """The model endpoint failed or answered something unusable."""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    connector: str
    operation: Operation
    bound: Mapping[str, Template]

    def schema(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        required: list[str] = []
        for p in self.operation.parameters:
            if p.name in self.bound:
                continue
            prop: dict[str, Any] = {"type": p.type}
            if p.description:
                prop["description"] = p.description
            props[p.name] = prop
            if p.required and p.default is None:
                required.append(p.name)
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.operation.description or self.operation.name.replace("_", " "),
                "parameters": {"type": "object", "properties": props, "required": required},
            },
        }


class LlmPolicy:
    """Lets an OpenAI-compatible model answer a turn using connector operations as tools."""

    def __init__(
        self,
        bot: BotDefinition,
        connectors: RegistryLike,
        config: LlmConfig | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        cfg = config or bot.llm
        if cfg is None:
            raise ConfigError("bot.llm: not configured")
        self.bot = bot
        self.config = cfg
        self.connectors = connectors
        self._env = env if env is not None else os.environ
        self._tools: dict[str, Tool] | None = None
        bind: dict[str, Template] = {}
        names: list[str] = []
        for intent in bot.intents.values():
            action = intent.action
            if action is None or action.connector is None:
                continue
            names.append(f"{action.connector}.{action.operation}")
            for pname, tmpl in action.params.items():
                if any(f.split(".", 1)[0] == "user" for f in tmpl.fields):
                    bind.setdefault(pname, tmpl)
        bind.update(cfg.bind)
        self.bind = bind
        self.tool_names = tuple(dict.fromkeys(cfg.tools if cfg.tools is not None else names))

    @property
    def mode(self) -> str:
        return self.config.mode

    # ------------------------------------------------------------------ tools

    def tools(self) -> dict[str, Tool]:
        if self._tools is None:
            tools: dict[str, Tool] = {}
            for dotted in self.tool_names:
                conn_name, _, op_name = dotted.partition(".")
                conn = self.connectors.get(conn_name)
                op = conn.operations.get(op_name)
                if op is None:
                    raise ConfigError(f"bot.llm.tools: {conn_name!r} has no operation {op_name!r}")
                bound = {p.name: self.bind[p.name] for p in op.parameters if p.name in self.bind}
                name = f"{conn_name}__{op_name}"
                tools[name] = Tool(name, conn_name, op, bound)
            self._tools = tools
        return self._tools

    # ------------------------------------------------------------------ state

    @staticmethod
    def _ls(st: MutableMapping[str, Any]) -> dict[str, Any]:
        ls = st.get("llm")
        if not isinstance(ls, dict):
            ls = {}
            st["llm"] = ls
        return ls

    def pending(self, st: Mapping[str, Any]) -> bool:
        ls = st.get("llm")
        return isinstance(ls, dict) and isinstance(ls.get("confirm"), dict)

    def _remember(self, ls: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        history = [m for m in messages if m.get("role") != "system"]
        limit = max(2, self.config.history)
        if len(history) > limit:
            history = history[-limit:]
            while history and history[0].get("role") != "user":
                history.pop(0)
        ls["history"] = history

    # ------------------------------------------------------------------ turns

    async def handle_text(self, text: str, ctx: TurnContext, st: MutableMapping[str, Any]) -> None:
        ls = self._ls(st)
        if isinstance(ls.get("confirm"), dict):
            await self._resolve_confirm(bool(_YES_RE.match(text)), ctx, st)
            return
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.config.system_prompt}]
        messages += list(ls.get("history") or [])
        messages.append({"role": "user", "content": text})
        await self._run(messages, ctx, st)

    async def handle_action(
        self, intent: str, params: Mapping[str, Any], ctx: TurnContext, st: MutableMapping[str, Any]
    ) -> None:
        if not self.pending(st):
            ctx.error(grpc.StatusCode.FAILED_PRECONDITION, self._msg("unknown_intent", ctx))
            return
        await self._resolve_confirm(intent == CONFIRM_INTENT, ctx, st)

    async def _resolve_confirm(
        self, confirmed: bool, ctx: TurnContext, st: MutableMapping[str, Any]
    ) -> None:
        ls = self._ls(st)
        pending = ls.pop("confirm")
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.config.system_prompt}]
        messages += list(pending.get("messages") or [])
        calls: list[dict[str, Any]] = list(pending.get("calls") or [])
        if not confirmed:
            for call in calls:
                messages.append(_tool_message(call["id"], {"error": "declined by the user"}))
            self._remember(ls, messages)
            ctx.reply(self._msg("declined", ctx), intent="llm")
            return
        first, rest = calls[0], calls[1:]
        tool = self.tools().get(first["name"])
        result = (
            await self._invoke(tool, first["arguments"], ctx)
            if tool is not None
            else {"error": "unknown tool"}
        )
        messages.append(_tool_message(first["id"], result))
        for call in rest:
            messages.append(_tool_message(call["id"], {"error": "not executed; ask again"}))
        await self._run(messages, ctx, st, call_model=True)

    async def _run(
        self,
        messages: list[dict[str, Any]],
        ctx: TurnContext,
        st: MutableMapping[str, Any],
        *,
        call_model: bool = True,
    ) -> None:
        ls = self._ls(st)
        tools = self.tools()
        for _ in range(self.config.max_rounds):
            try:
                message = await self._chat(messages, list(tools.values()))
            except LlmError as exc:
                log.warning("llm policy: %s", exc)
                ctx.error(
                    grpc.StatusCode.UNAVAILABLE,
                    self._msg("assistant_unavailable", ctx),
                    retriable=True,
                )
                return
            calls = _tool_calls(message)
            if not calls:
                content = str(message.get("content") or "").strip()
                messages.append({"role": "assistant", "content": content})
                self._remember(ls, messages)
                ctx.reply(content or self._msg("error", ctx), intent="llm")
                return
            messages.append(
                {
                    "role": "assistant",
                    "content": message.get("content"),
                    "tool_calls": [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {
                                "name": c["name"],
                                "arguments": json.dumps(c["arguments"]),
                            },
                        }
                        for c in calls
                    ],
                }
            )
            for i, call in enumerate(calls):
                tool = tools.get(call["name"])
                if tool is None:
                    messages.append(_tool_message(call["id"], {"error": "unknown tool"}))
                    continue
                if tool.operation.write:
                    call["arguments"] = self._model_args(tool, call["arguments"])
                    ls["confirm"] = {
                        "messages": [m for m in messages if m.get("role") != "system"],
                        "calls": calls[i:],
                    }
                    ctx.prompt(
                        "confirm",
                        self._msg("confirm", ctx, action=_describe(tool, call["arguments"])),
                        quick_replies=[
                            QuickReply("Yes", CONFIRM_INTENT),
                            QuickReply("No", CANCEL_INTENT),
                        ],
                        intent="llm",
                    )
                    return
                result = await self._invoke(tool, call["arguments"], ctx)
                messages.append(_tool_message(call["id"], result))
        self._remember(ls, messages)
        ctx.error(grpc.StatusCode.INTERNAL, self._msg("error", ctx))

    # ------------------------------------------------------------------ calls

    def _model_args(self, tool: Tool, args: Mapping[str, Any]) -> dict[str, Any]:
        """Only declared, not identity-bound parameters survive from the model."""
        declared = {p.name for p in tool.operation.parameters}
        return {k: v for k, v in args.items() if k in declared and k not in tool.bound}

    async def _invoke(self, tool: Tool, args: Mapping[str, Any], ctx: TurnContext) -> Any:
        params = self._model_args(tool, args)
        ident = ctx.identity
        user = caller_scope(ident.subject, ident.claims)
        values = {"user": user}
        for name, tmpl in tool.bound.items():
            missing = [f for f in tmpl.fields if lookup(values, f) is MISSING]
            if missing:
                return {"error": "not permitted for this user"}
            params[name] = tmpl.render_value(values)
        call_ctx = CallContext(
            subject=ident.subject,
            claims=user,
            deadline=time.monotonic() + self.config.timeout,
            idempotency_key=f"{ctx.session_id}:llm:{tool.name}:{json.dumps(params, sort_keys=True)}"
            if tool.operation.write
            else None,
        )
        try:
            result = await self.connectors.invoke(
                tool.connector, tool.operation.name, params, call_ctx
            )
        except ResultNotFoundError:
            return {"result": None, "note": "not found"}
        except ConnectorError as exc:
            log.warning("llm tool %s failed: %s", tool.name, type(exc).__name__)
            return {"error": exc.code.name.lower(), "retriable": exc.retriable}
        if result is None or result == []:
            return {"result": None, "note": "not found"}
        return {"result": json_safe(result)}

    async def _chat(self, messages: list[dict[str, Any]], tools: list[Tool]) -> dict[str, Any]:
        cfg = self.config
        body: dict[str, Any] = {"model": cfg.model, "messages": messages}
        if tools:
            body["tools"] = [t.schema() for t in tools]
            body["tool_choice"] = "auto"
        if cfg.temperature is not None:
            body["temperature"] = cfg.temperature
        headers = {"content-type": "application/json"}
        if cfg.api_key_env:
            key = self._env.get(cfg.api_key_env)
            if key:
                headers["authorization"] = f"Bearer {key}"
        url = cfg.base_url.rstrip("/") + "/chat/completions"
        try:
            async with httpx.AsyncClient(timeout=cfg.timeout, follow_redirects=False) as client:
                resp = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise LlmError(f"request failed: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            raise LlmError(f"model endpoint answered HTTP {resp.status_code}")
        try:
            data = resp.json()
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LlmError("malformed chat completion") from exc
        if not isinstance(message, dict):
            raise LlmError("malformed chat completion")
        return message

    def _msg(self, key: str, ctx: TurnContext, **extra: Any) -> str:
        ident = ctx.identity
        values: dict[str, Any] = {"user": caller_scope(ident.subject, ident.claims)}
        values.update(extra)
        return self.bot.message(key).render(values)


def _tool_message(call_id: str, content: Any) -> dict[str, Any]:
    return {
        "role": "tool",
        "tool_call_id": call_id,
        "content": json.dumps(content, ensure_ascii=False, separators=(",", ":")),
    }


def _tool_calls(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(message.get("tool_calls") or []):
        if not isinstance(raw, Mapping):
            continue
        fn = raw.get("function") or {}
        name = str(fn.get("name") or "")
        args_raw = fn.get("arguments") or "{}"
        try:
            args = json.loads(args_raw) if isinstance(args_raw, str) else dict(args_raw)
        except (ValueError, TypeError):
            args = {}
        if not isinstance(args, dict):
            args = {}
        out.append({"id": str(raw.get("id") or f"call_{i}"), "name": name, "arguments": args})
    return out


def _describe(tool: Tool, args: Mapping[str, Any]) -> str:
    what = tool.operation.name.replace("_", " ")
    if args:
        details = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in args.items())
        return f"{what} ({details})"
    return what
