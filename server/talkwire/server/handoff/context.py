"""The context an agent gets with a queued session: slots, results, the last turns.

User turns are remembered in the session's state by the turn router (the store
keeps only server frames); bot and agent replies come from the session's
retained frames. Both are merged by time when the session is queued.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from google.protobuf import json_format

from talkwire.server.frames import StoredFrame
from talkwire.v1 import chat_pb2

__all__ = ["RECENT_KEY", "build_context", "remember_user_turn"]

RECENT_KEY = "handoff_recent"


def remember_user_turn(
    state: MutableMapping[str, Any], text: str, *, keep: int, now: float | None = None
) -> None:
    """Keep the user's last ``keep`` turns in the session state (saved with the turn)."""
    if keep <= 0:
        return
    recent = [t for t in state.get(RECENT_KEY) or () if isinstance(t, dict)]
    recent.append({"role": "user", "text": text[:500], "at": time.time() if now is None else now})
    state[RECENT_KEY] = recent[-keep:]


def build_context(
    state: Mapping[str, Any], frames: Sequence[StoredFrame], *, keep: int
) -> dict[str, Any]:
    """``{"slots", "results", "turns"}`` from the remembered user turns and the frames."""
    slots: dict[str, Any] = {}
    results: dict[str, Any] = {}
    turns: list[dict[str, Any]] = [t for t in state.get(RECENT_KEY) or () if isinstance(t, dict)]
    for stored in frames:
        frame = chat_pb2.ConverseResponse.FromString(stored.payload)
        if frame.WhichOneof("frame") != "reply":
            continue
        reply = frame.reply
        role = reply.author.role or "bot"
        if role == "user":
            continue  # already among the remembered user turns
        at = frame.sent_at.ToNanoseconds() / 1e9
        turns.append({"role": role, "text": reply.text, "at": at})
        data = json_format.MessageToDict(reply.data)
        if isinstance(data.get("slots"), dict):
            slots.update(data["slots"])
        if reply.intent and "result" in data:
            results[reply.intent] = data["result"]
    turns.sort(key=lambda t: float(t.get("at") or 0.0))
    return {"slots": slots, "results": results, "turns": turns[-keep:] if keep else []}
