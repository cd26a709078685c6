"""The blocking client against grpcio-testing's scripted channel: every status and trailer.

The test thread plays the server frame by frame (``take_stream_stream``,
``take_request``, ``send_response``, ``terminate``), so the rare endings a real
server produces only by chance (``INTERNAL`` from a racing write, ``DATA_LOSS``,
``OUT_OF_RANGE``) are met deterministically.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc_testing
import pytest
from status_table import ENDINGS, Ending

from talkwire.clients.errors import ProtocolError, ReconnectExhausted
from talkwire.clients.reconnect import ConnectionEvent, ConnectionEventKind, ReconnectPolicy
from talkwire.clients.sync import SyncChatClient, SyncChatSession
from talkwire.v1 import chat_pb2

CHAT = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
CONVERSE = CHAT.methods_by_name["Converse"]
WAIT = 10.0


def opened(resumed: bool = False, replayed: int = 0) -> chat_pb2.ConverseResponse:
    return chat_pb2.ConverseResponse(
        opened=chat_pb2.Opened(
            session_id="s-1", resume_token="r-1", resumed=resumed, replayed=replayed
        )
    )


def update(seq: int, text: str) -> chat_pb2.ConverseResponse:
    return chat_pb2.ConverseResponse(seq=seq, update=chat_pb2.Update(text=text))


class Scripted:
    """A scripted channel, a client on it and a thread for the client's blocking calls."""

    def __init__(self, **client_kwargs: Any) -> None:
        self.channel = grpc_testing.channel([CHAT], grpc_testing.strict_real_time())
        self.events: list[ConnectionEvent] = []
        self.sleeps: list[float] = []
        self.client = SyncChatClient(
            channel=self.channel,
            token="t-1",
            sleep=self.sleeps.append,
            open_timeout=None,
            on_connection_event=self.events.append,
            **client_kwargs,
        )
        self.pool = ThreadPoolExecutor(1)

    def shutdown(self) -> None:
        """Close the client's sessions: their request iterators end, so grpc_testing's
        (non-daemon) consumer threads do too and the test process can exit."""
        self.client.close_timeout = 0.05
        self.client.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def take(self) -> tuple[Any, Any]:
        """The next Converse the client starts: (metadata, rpc), its open request taken."""
        metadata, rpc = self.channel.take_stream_stream(CONVERSE)
        first = rpc.take_request()
        assert first.HasField("open")
        return metadata, (rpc, first.open)

    def open(self) -> tuple[SyncChatSession, Any]:
        opening = self.pool.submit(self.client.open, channel="web")
        metadata, (rpc, request) = self.take()
        assert ("authorization", "Bearer t-1") in metadata
        assert not request.session_id
        rpc.send_response(opened())
        return opening.result(timeout=WAIT), rpc


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    s = Scripted(reconnect=ReconnectPolicy(initial_backoff=0.01, max_backoff=0.01))
    yield s
    s.shutdown()


@pytest.mark.parametrize("ending", ENDINGS, ids=str)
def test_sync_client_reacts_to(scripted: Scripted, ending: Ending) -> None:
    session, rpc = scripted.open()
    rpc.send_response(update(1, "one"))
    assert next(session).update.text == "one"

    reading = scripted.pool.submit(next, session)
    rpc.terminate(ending.trailers, ending.code, ending.details)
    if not ending.resumes:
        assert ending.error is not None
        with pytest.raises(ending.error) as raised:
            reading.result(timeout=WAIT)
        assert (raised.value.code, raised.value.details) == (ending.code, ending.details)
        assert session.error is raised.value
        assert scripted.sleeps == []  # no resume was attempted
        return
    _, (rpc2, request) = scripted.take()
    assert (request.session_id, request.resume_token, request.last_seq) == ("s-1", "r-1", 1)
    rpc2.send_response(opened(resumed=True, replayed=2))
    rpc2.send_response(update(1, "one"))  # replayed again: dropped by the seq rule
    rpc2.send_response(update(2, "two"))
    frame = reading.result(timeout=WAIT)
    assert (frame.seq, frame.update.text) == (2, "two")
    assert (session.reconnects, session.duplicates, session.last_seq) == (1, 1, 2)
    kinds = [e.kind for e in scripted.events]
    assert kinds == [
        ConnectionEventKind.DISCONNECTED,
        ConnectionEventKind.RETRYING,
        ConnectionEventKind.RESUMED,
    ]
    assert scripted.events[0].code == ending.code


def test_frames_sent_while_disconnected_go_out_after_the_resume(scripted: Scripted) -> None:
    session, rpc = scripted.open()
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "draining")
    reading = scripted.pool.submit(next, session)
    _, (rpc2, _) = scripted.take()
    frame_id = session.send("queued while away")
    rpc2.send_response(opened(resumed=True))
    sent = rpc2.take_request()
    assert (sent.id, sent.message.text) == (frame_id, "queued while away")
    rpc2.send_response(
        chat_pb2.ConverseResponse(seq=1, in_reply_to=frame_id, reply=chat_pb2.Reply(text="ok"))
    )
    assert reading.result(timeout=WAIT).in_reply_to == frame_id


def test_a_gap_is_a_protocol_error(scripted: Scripted) -> None:
    session, rpc = scripted.open()
    rpc.send_response(update(1, "one"))
    rpc.send_response(update(3, "three"))
    assert next(session).seq == 1
    with pytest.raises(ProtocolError, match="expected seq 2, got 3"):
        next(session)


def test_ok_ends_iteration(scripted: Scripted) -> None:
    session, rpc = scripted.open()
    rpc.send_response(update(1, "one"))
    rpc.terminate((), grpc.StatusCode.OK, "")
    assert [f.seq for f in session] == [1]


def test_gives_up_after_max_attempts() -> None:
    s = Scripted(reconnect=ReconnectPolicy(initial_backoff=0, max_backoff=0, max_attempts=2))
    try:
        session, rpc = s.open()
        reading = s.pool.submit(next, session)
        rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "down")
        for _ in range(2):
            _, (again, _) = s.take()
            again.terminate((), grpc.StatusCode.UNAVAILABLE, "still down")
        with pytest.raises(ReconnectExhausted) as raised:
            reading.result(timeout=WAIT)
        assert (raised.value.attempts, raised.value.details) == (2, "still down")
        assert s.events[-1].kind is ConnectionEventKind.GAVE_UP
    finally:
        s.shutdown()


def test_a_refused_resume_ends_the_session(scripted: Scripted) -> None:
    session, rpc = scripted.open()
    reading = scripted.pool.submit(next, session)
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "draining")
    _, (rpc2, _) = scripted.take()
    rpc2.terminate((("talkwire-retriable", "0"),), grpc.StatusCode.OUT_OF_RANGE, "too old")
    with pytest.raises(Exception, match="too old") as raised:
        reading.result(timeout=WAIT)
    assert type(raised.value).__name__ == "ResumeWindowExceeded"


def test_close_acks_what_was_delivered_then_half_closes(scripted: Scripted) -> None:
    session, rpc = scripted.open()
    rpc.send_response(update(1, "one"))
    rpc.send_response(update(2, "two"))
    assert [next(session).seq, next(session).seq] == [1, 2]
    closing = scripted.pool.submit(session.close)
    assert rpc.take_request().ack.seq == 2
    rpc.requests_closed()  # blocks until the client half-closed
    rpc.terminate((), grpc.StatusCode.OK, "")
    closing.result(timeout=WAIT)
    assert list(session) == []


def test_open_refused_is_not_retried(scripted: Scripted) -> None:
    opening = scripted.pool.submit(scripted.client.open)
    _, (rpc, _) = scripted.take()
    rpc.terminate((), grpc.StatusCode.UNAUTHENTICATED, "bad token")
    with pytest.raises(Exception, match="bad token") as raised:
        opening.result(timeout=WAIT)
    assert type(raised.value).__name__ == "Unauthenticated"
    assert scripted.sleeps == []
