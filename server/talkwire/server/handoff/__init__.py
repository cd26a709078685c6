"""Human handoff: a person at the agent desk takes over a session, and hands it back.

A session's handoff state (``bot`` -> ``queued`` -> ``agent`` -> ``bot``) lives in
the store (:mod:`.store`, one transaction per step); :mod:`.turns` routes user
turns to the agent while a person holds the session; :mod:`.desk` delivers each
step to the live streams and runs the timeout back to the queue. The agent's
stream itself is :mod:`talkwire.server.agent`.
"""

from talkwire.server.handoff.desk import HandoffDesk
from talkwire.server.handoff.settings import AGENT_ROLE, HandoffSettings, QueueRule
from talkwire.server.handoff.signal import HANDOFF_ACTION, request_handoff, take_request
from talkwire.server.handoff.store import HandoffRecord, HandoffStep, HandoffStore
from talkwire.server.handoff.turns import HandoffTurns

__all__ = [
    "AGENT_ROLE",
    "HANDOFF_ACTION",
    "HandoffDesk",
    "HandoffRecord",
    "HandoffSettings",
    "HandoffStep",
    "HandoffStore",
    "HandoffTurns",
    "QueueRule",
    "request_handoff",
    "take_request",
]
