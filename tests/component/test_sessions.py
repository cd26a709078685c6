"""The session core against a real grpc.aio server on 127.0.0.1 (echo turn handler)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkwire.server.app import Application
from talkwire.server.errors import Status
from talkwire.server.frames import encode_template
from talkwire.server.hub import Attachment
from talkwire.server.identity import Identity
from talkwire.v1 import chat_pb2
from tests.conftest import make_config
from tests.support.grpcx import Stream, message, open_frame

ALICE = "alice-token"
ALICE_IDENTITY = Identity(subject="alice")


async def _replies(stream: Stream, n: int) -> list[chat_pb2.ConverseResponse]:
    return [await stream.recv() for _ in range(n)]


async def _push(app: Application, session_id: str, texts: list[str]) -> None:
    """Append update frames to a session the way the event path does (store, then hub)."""
    templates = []
    for text in texts:
        frame = chat_pb2.ConverseResponse()
        frame.update.text = text
        templates.append(encode_template(frame))
    frames = await app.store.append(session_id, templates)
    app.hub.deliver({session_id: frames})


async def test_open_message_reply_seq(channel: grpc.aio.Channel) -> None:
    s = Stream(channel, ALICE)
    opened = await s.open(channel="web", locale="en")
    assert opened.session_id
    assert opened.resume_token
    assert not opened.resumed
    for i, text in enumerate(["hello", "how are you", "bye"], start=1):
        await s.send(message(text, f"m{i}"))
        frame = await s.recv()
        assert frame.seq == i
        assert frame.in_reply_to == f"m{i}"
        assert frame.reply.text == text
    s.cancel()


async def test_ping_pong_is_transient(channel: grpc.aio.Channel) -> None:
    s = Stream(channel, ALICE)
    await s.open()
    await s.send(chat_pb2.ConverseRequest(id="p", ping=chat_pb2.Ping(data="x")))
    frame = await s.recv()
    assert frame.pong.data == "x"
    assert frame.seq == 0
    assert frame.in_reply_to == "p"
    s.cancel()


async def test_ack_drops_frames_from_outbox(app: Application, channel: grpc.aio.Channel) -> None:
    s = Stream(channel, ALICE)
    opened = await s.open()
    for i in range(3):
        await s.send(message(f"m{i}"))
    await _replies(s, 3)
    await s.send(chat_pb2.ConverseRequest(ack=chat_pb2.Ack(seq=2)))
    # Acks are coalesced and written by the server's watchdog within about a second.
    async with asyncio.timeout(10):
        while len(remaining := await app.store.frames_after(opened.session_id, 0)) != 1:
            await asyncio.sleep(0.05)
    assert [f.seq for f in remaining] == [3]
    record = await app.store.get_session(opened.session_id)
    assert record is not None
    assert record.acked_seq == 2
    s.cancel()


async def test_resume_replays_exactly_the_missing_frames(
    app: Application, channel: grpc.aio.Channel
) -> None:
    s = Stream(channel, ALICE)
    opened = await s.open()
    await s.send(message("one"))
    assert (await s.recv()).seq == 1
    s.cancel()
    await _push(app, opened.session_id, ["two", "three", "four"])

    r = Stream(channel, ALICE)
    resumed = await r.open(
        session_id=opened.session_id, resume_token=opened.resume_token, last_seq=1
    )
    assert resumed.resumed
    assert resumed.replayed == 3
    assert resumed.head_seq == 4
    frames = await _replies(r, 3)
    assert [(f.seq, f.update.text) for f in frames] == [(2, "two"), (3, "three"), (4, "four")]
    # Live frames continue the sequence after the replay.
    await r.send(message("five"))
    assert (await r.recv()).seq == 5
    r.cancel()


async def test_resume_beyond_retained_window_fails_loudly(make_app: Any, tmp_path: Path) -> None:
    app = await make_app(make_config(tmp_path, store={"retention_frames": 2}))
    async with grpc.aio.insecure_channel(app.target) as channel:
        s = Stream(channel, ALICE)
        opened = await s.open()
        s.cancel()
        await _push(app, opened.session_id, [f"u{i}" for i in range(5)])
        await app.sweeper.sweep_now()
        r = Stream(channel, ALICE)
        await r.send(
            open_frame(session_id=opened.session_id, resume_token=opened.resume_token, last_seq=0)
        )
        assert await r.status() == grpc.StatusCode.OUT_OF_RANGE
        assert "no longer retained" in await r.details()
        # Within the window still works.
        ok = Stream(channel, ALICE)
        resumed = await ok.open(
            session_id=opened.session_id, resume_token=opened.resume_token, last_seq=3
        )
        assert resumed.replayed == 2
        ok.cancel()


async def test_second_attach_supersedes_the_first(channel: grpc.aio.Channel) -> None:
    first = Stream(channel, ALICE)
    opened = await first.open()
    second = Stream(channel, ALICE)
    await second.open(session_id=opened.session_id, resume_token=opened.resume_token)
    assert await first.status() == grpc.StatusCode.ABORTED
    assert "superseded" in await first.details()
    await second.send(message("still here"))
    assert (await second.recv()).reply.text == "still here"
    second.cancel()


async def test_idle_session_expires_by_ttl(make_app: Any, tmp_path: Path) -> None:
    app = await make_app(make_config(tmp_path, store={"session_ttl": 0.0}))
    async with grpc.aio.insecure_channel(app.target) as channel:
        live = Stream(channel, ALICE)
        live_opened = await live.open()
        idle = Stream(channel, ALICE)
        idle_opened = await idle.open()
        idle.cancel()
        await _wait_detached(app, idle_opened.session_id)
        expired = await app.sweeper.sweep_now()
        assert idle_opened.session_id in expired
        assert live_opened.session_id not in expired  # attached sessions never expire
        r = Stream(channel, ALICE)
        await r.send(
            open_frame(session_id=idle_opened.session_id, resume_token=idle_opened.resume_token)
        )
        assert await r.status() == grpc.StatusCode.NOT_FOUND
        live.cancel()


async def _wait_detached(app: Application, session_id: str) -> None:
    async with asyncio.timeout(10):
        while app.hub.is_attached(session_id):
            await asyncio.sleep(0.01)


async def test_non_reading_client_gets_resource_exhausted_others_unaffected(
    make_app: Any, tmp_path: Path
) -> None:
    app = await make_app(make_config(tmp_path, server={"queue_size": 8, "write_timeout": 1.0}))
    async with (
        grpc.aio.insecure_channel(app.target) as slow_channel,
        grpc.aio.insecure_channel(app.target) as channel,
    ):
        slow = Stream(slow_channel, ALICE)
        slow_opened = await slow.open()
        others = [Stream(channel, ALICE) for _ in range(50)]
        others_opened = [await o.open() for o in others]

        big = "x" * 4000
        for _ in range(20):  # far more than the client's flow-control window and the queue
            await _push(app, slow_opened.session_id, [big] * 50)
        async with asyncio.timeout(20):
            while app.hub.is_attached(slow_opened.session_id):
                await asyncio.sleep(0.01)

        for opened in others_opened:
            await _push(app, opened.session_id, ["for you"])
        for o in others:
            frame = await o.recv()
            assert frame.update.text == "for you"

        assert await slow.status(timeout=20) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # It resumes later with nothing lost.
        r = Stream(slow_channel, ALICE)
        resumed = await r.open(
            session_id=slow_opened.session_id, resume_token=slow_opened.resume_token, last_seq=0
        )
        assert resumed.replayed == 1000
        seqs = [(await r.recv()).seq for _ in range(1000)]
        assert seqs == list(range(1, 1001))
        r.cancel()
        for o in others:
            o.cancel()


async def test_first_frame_must_be_open(channel: grpc.aio.Channel) -> None:
    s = Stream(channel, ALICE)
    await s.send(message("hi"))
    assert await s.status() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open" in await s.details()


async def test_oversized_frame_is_refused(make_app: Any, tmp_path: Path) -> None:
    app = await make_app(make_config(tmp_path, server={"max_message_bytes": 1024}))
    async with grpc.aio.insecure_channel(app.target) as channel:
        s = Stream(channel, ALICE)
        await s.open()
        await s.send(message("x" * 5000))
        assert await s.status() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await _still_serving(channel)


async def test_too_long_text_gets_an_error_frame_and_the_stream_stays(
    channel: grpc.aio.Channel,
) -> None:
    s = Stream(channel, ALICE)
    await s.open()
    await s.send(message("y" * 5000, "long"))
    frame = await s.recv()
    assert frame.error.code == "INVALID_ARGUMENT"
    assert frame.in_reply_to == "long"
    await s.send(message("short"))
    assert (await s.recv()).reply.text == "short"
    s.cancel()


async def test_unknown_session_is_not_found(channel: grpc.aio.Channel) -> None:
    s = Stream(channel, ALICE)
    await s.send(open_frame(session_id="no-such-session", resume_token="x"))
    assert await s.status() == grpc.StatusCode.NOT_FOUND
    await _still_serving(channel)


async def test_wrong_resume_token_or_subject_is_permission_denied(
    channel: grpc.aio.Channel,
) -> None:
    s = Stream(channel, ALICE)
    opened = await s.open()
    s.cancel()
    wrong = Stream(channel, ALICE)
    await wrong.send(open_frame(session_id=opened.session_id, resume_token="guess"))
    assert await wrong.status() == grpc.StatusCode.PERMISSION_DENIED
    other_subject = Stream(channel, "bob-token")
    await other_subject.send(
        open_frame(session_id=opened.session_id, resume_token=opened.resume_token)
    )
    assert await other_subject.status() == grpc.StatusCode.PERMISSION_DENIED
    await _still_serving(channel)


async def test_missing_or_bad_token_is_unauthenticated(channel: grpc.aio.Channel) -> None:
    for token in (None, "not-a-token"):
        s = Stream(channel, token)
        await s.send(open_frame())
        assert await s.status() == grpc.StatusCode.UNAUTHENTICATED
    await _still_serving(channel)


async def test_health_serving_and_not_serving_on_drain(app: Application) -> None:
    async with grpc.aio.insecure_channel(app.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        s = Stream(channel, ALICE)
        await s.open()
        drain = asyncio.create_task(app.drain(grace=5))
        assert await s.status() == grpc.StatusCode.UNAVAILABLE
        await drain


async def test_attachment_made_during_drain_ends_unavailable(app: Application) -> None:
    """A resume that passed the draining check just before drain() is not left running."""
    async with grpc.aio.insecure_channel(app.target) as channel:
        s = Stream(channel, ALICE)
        opened = await s.open()
        s.cancel()
    app.hub.draining = True  # as drain() does first; this attach raced past the check
    att = app.hub.attach(opened.session_id, ALICE_IDENTITY, after_seq=0)
    assert att.ended.is_set()
    assert att.status is not None
    assert att.status.code == grpc.StatusCode.UNAVAILABLE
    app.hub.detach(att)


async def test_stream_ended_as_it_attaches_still_gets_its_status(
    app: Application, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attachment that ends at once (superseded right at attach) reaches the client as a status.

    Regression: the first response write carries the headers; when it was cancelled
    half-way grpc.aio never sent the final status and the client hung on a silent stream.
    """
    async with grpc.aio.insecure_channel(app.target) as channel:
        s = Stream(channel, ALICE)
        opened = await s.open()
        s.cancel()
        attach = app.hub.attach

        def attach_and_supersede(*args: Any, **kwargs: Any) -> Attachment:
            att = attach(*args, **kwargs)
            att.terminate(Status(grpc.StatusCode.ABORTED, "superseded", False))
            return att

        monkeypatch.setattr(app.hub, "attach", attach_and_supersede)
        resume = open_frame(session_id=opened.session_id, resume_token=opened.resume_token)
        for _ in range(20):
            again = Stream(channel, ALICE)
            await again.send(resume)
            assert await again.status(timeout=10) == grpc.StatusCode.ABORTED
        monkeypatch.undo()
        await _still_serving(channel)


async def _still_serving(channel: grpc.aio.Channel) -> None:
    s = Stream(channel, ALICE)
    await s.open()
    await s.send(message("alive?"))
    assert (await s.recv()).reply.text == "alive?"
    s.cancel()
