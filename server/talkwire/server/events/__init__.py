"""Change events into sessions: decoding, routing, Kafka and webhook ingress.

See :mod:`.router` (EventRouter), :mod:`.kafka` (KafkaIngress), :mod:`.webhooks`
(WebhookIngress), :mod:`.decode` (formats), :mod:`.routing` (topic config) and
:mod:`.settings` (the ``events:`` section).
"""

from __future__ import annotations

from talkwire.server.events.decode import FORMATS, DecodeError, decode
from talkwire.server.events.router import EventRouter, FrameSink, RouterMetrics
from talkwire.server.events.routing import TopicRoute, parse_topics
from talkwire.server.events.settings import KafkaSettings

__all__ = [
    "FORMATS",
    "DecodeError",
    "EventRouter",
    "FrameSink",
    "KafkaSettings",
    "RouterMetrics",
    "TopicRoute",
    "decode",
    "parse_topics",
]
