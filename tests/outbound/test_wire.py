"""The Kafka sink's wire form built from stored rows equals the message-built one."""

from __future__ import annotations

import json

import pytest

from talkwire.server.frames import encode_template, with_seq
from talkwire.server.outbound.events import StoredEvent, to_bytes, to_message
from talkwire.server.outbound.kafka import RowHeaders, cloudevent_headers
from talkwire.server.outbound.record import FRAME_APPENDED, SESSION_OPENED, TURN_RECEIVED
from talkwire.v1 import chat_pb2, conversation_pb2


def _rows() -> list[StoredEvent]:
    turn = chat_pb2.ConverseRequest(id="f1")
    turn.message.text = "where is my order 1001?"
    frame = chat_pb2.ConverseResponse(in_reply_to="f1")
    frame.reply.text = "Order 1001 has shipped."
    body = with_seq(7, encode_template(frame, now=1_700_000_000.25))
    opened = json.dumps({"channel": "web"}).encode()
    return [
        StoredEvent(41, "s-1", TURN_RECEIVED, 0, 1_700_000_000.123456, turn.SerializeToString()),
        StoredEvent(42, "s-1", FRAME_APPENDED, 7, 1_700_000_000.123456, body),
        StoredEvent(300, "s-2", FRAME_APPENDED, 1, 1_700_000_001.5, b""),  # an empty frame
        StoredEvent(2**40, "s-2", SESSION_OPENED, 0, 1_700_000_002.0, opened),
    ]


@pytest.mark.parametrize("redact", [False, True])
def test_to_bytes_is_the_serialized_message(redact: bool) -> None:
    for row in _rows():
        want = to_message(row, redact=redact)
        got = to_bytes(row, redact=redact)
        assert got == want.SerializeToString()
        assert conversation_pb2.ConversationEvent.FromString(got) == want


def test_row_headers_are_the_cloudevent_headers() -> None:
    headers = RowHeaders("talkwire", "application/protobuf")
    for row in _rows() + _rows():  # the second round reads the per-kind / per-second caches
        want = cloudevent_headers(
            to_message(row), source="talkwire", content_type="application/protobuf"
        )
        assert headers(row) == want
