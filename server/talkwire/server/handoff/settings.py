"""The ``handoff`` config section: queues, who may serve them, the agent timeout."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from talkwire.connectors.sections import Section
from talkwire.server.identity import Identity

__all__ = ["AGENT_ROLE", "HandoffSettings", "QueueRule"]

AGENT_ROLE = "agent"
"""The role every AgentService call needs."""


@dataclass(frozen=True, slots=True)
class QueueRule:
    """A queue and the claims an agent needs to see and accept its sessions."""

    name: str
    require: Mapping[str, str] = field(default_factory=dict)

    def admits(self, agent: Identity) -> bool:
        """Every required claim has the required value (a list claim: contains it)."""
        for claim, wanted in self.require.items():
            value = agent.claims.get(claim)
            values = value if isinstance(value, list | tuple) else [value]
            if wanted not in [str(v) for v in values if v is not None]:
                return False
        return True


@dataclass(frozen=True, slots=True)
class HandoffSettings:
    """``handoff: {queues: {billing: {require: {team: billing}}}, agent_timeout: 120}``.

    A queue not listed is open to every agent. ``agent_timeout``: seconds an
    accepted session waits for its agent's stream (or any call of that agent on
    it) before it goes back to its queue. ``transcript_turns``: how many recent
    turns the context keeps.
    """

    queues: Mapping[str, QueueRule] = field(default_factory=dict)
    default_queue: str = "general"
    agent_timeout: float = 120.0
    sweep_interval: float = 5.0
    transcript_turns: int = 10

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> HandoffSettings:
        """Validate the section; errors name the key (and its YAML line)."""
        sec = Section(
            raw,
            "handoff",
            known=(
                "queues",
                "default_queue",
                "agent_timeout",
                "sweep_interval",
                "transcript_turns",
            ),
        )
        d = cls()
        queues: dict[str, QueueRule] = {}
        for name, q in sec.section("queues").children():
            q.check_known(("require",))
            require = q.section("require")
            queues[name] = QueueRule(name, {k: require.text(k) for k in require.raw})
        return cls(
            queues=queues,
            default_queue=sec.text("default_queue", d.default_queue),
            agent_timeout=sec.number("agent_timeout", d.agent_timeout, positive=True),
            sweep_interval=sec.number("sweep_interval", d.sweep_interval, positive=True),
            transcript_turns=sec.integer("transcript_turns", d.transcript_turns, minimum=0),
        )

    def rule(self, queue: str) -> QueueRule:
        return self.queues.get(queue) or QueueRule(queue)

    def may_serve(self, agent: Identity, queue: str) -> bool:
        """Whether ``agent`` may see and take the sessions of ``queue``."""
        return AGENT_ROLE in agent.roles and self.rule(queue).admits(agent)
