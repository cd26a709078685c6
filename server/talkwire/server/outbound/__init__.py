"""Outbound conversation events: the transactional outbox, the relay and its sinks.

- :mod:`.record` writes events inside store transactions (:class:`EventRecorder`);
- :mod:`.events` turns stored rows into ``talkwire.v1.ConversationEvent``;
- :mod:`.settings` reads the ``outbound:`` config section;
- :mod:`.claims` decides which relay works a session (advisory locks);
- :mod:`.relay` publishes pending events, retries, dead-letters;
- :mod:`.kafka`, :mod:`.webhook`, :mod:`.connector` are the sinks.

Inbound change events live under :mod:`talkwire.server.events`; nothing here is shared
with that path except the webhook signature scheme (one ``sign`` function).
"""
