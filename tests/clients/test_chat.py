"""ChatClient against a real grpc.aio server running the scripted ChatService."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from scripted_server import TOKEN, ServerHarness

from talkwire.clients import (
    ChatClient,
    ConnectionEvent,
    ConnectionEventKind,
    ReconnectExhausted,
    ReconnectPolicy,
    SessionClosed,
    SessionEnded,
    SessionNotFound,
    SessionPermissionDenied,
    SessionSuperseded,
    Unauthenticated,
)
from talkwire.clients.convert import from_struct
from talkwire.v1 import chat_pb2

FAST = ReconnectPolicy(initial_backoff=0.01, max_backoff=0.05, max_attempts=None, max_elapsed=None)
WAIT = 20  # a guard against hangs, never a synchronisation point


def client_for(harness: ServerHarness, **kwargs: object) -> ChatClient:
    kwargs.setdefault("reconnect", FAST)
    return ChatClient(harness.target, token=TOKEN, **kwargs)  # type: ignore[arg-type]


def texts(frames: list[chat_pb2.ConverseResponse]) -> list[str]:
    out = []
    for f in frames:
        kind = f.WhichOneof("frame")
        out.append(getattr(f, kind).text if kind in ("reply", "update") else kind or "")
    return out


async def take(session: object, n: int) -> list[chat_pb2.ConverseResponse]:
    from talkwire.clients import ChatSession

    assert isinstance(session, ChatSession)
    return [await session.next_frame(timeout=WAIT) for _ in range(n)]


async def test_open_send_reply(harness: ServerHarness) -> None:
    async with client_for(harness) as client, await client.open(channel="web", locale="en") as s:
        assert s.session_id in harness.chat.sessions
        assert s.resume_token == harness.chat.sessions[s.session_id].token
        assert harness.chat.opens[0].channel == "web"
        frame_id = await s.send("hello")
        reply = await s.next_frame(timeout=WAIT)
        assert reply.seq == 1
        assert reply.in_reply_to == frame_id
        assert reply.reply.text == "echo: hello"
        assert s.last_seq == 1

        await s.action("track_order", {"order_id": 1001}, label="Track")
        reply = await s.next_frame(timeout=WAIT)
        assert reply.reply.text == 'did track_order {"order_id": 1001}'

        await s.subscribe("order:1001")
        sub = await s.wait_for(lambda f: f.HasField("subscription"), timeout=WAIT)
        assert sub.subscription.key == "order:1001"
        assert sub.subscription.active

        ping_id = await s.ping("x")
        pong = await s.next_frame(timeout=WAIT)
        assert pong.seq == 0
        assert pong.in_reply_to == ping_id
        assert pong.pong.data == "x"

        await s.unsubscribe("order:1001")
        unsub = await s.next_frame(timeout=WAIT)
        assert not unsub.subscription.active
        assert unsub.seq == 4


async def test_async_iteration_and_pushed_updates(harness: ServerHarness) -> None:
    async with client_for(harness) as client, await client.open() as s:
        for i in range(3):
            await harness.chat.push(s.session_id, f"u{i}", key="order:1")
        got = []
        async for frame in s:
            got.append(frame)
            if len(got) == 3:
                break
        assert [f.seq for f in got] == [1, 2, 3]
        assert texts(got) == ["u0", "u1", "u2"]


async def test_dedup_on_resume_overlap(harness: ServerHarness) -> None:
    """The server re-sends already-seen seqs on resume; the client yields each once."""
    harness.chat.replay_overlap = 3
    async with client_for(harness) as client, await client.open() as s:
        for i in range(3):
            await harness.chat.push(s.session_id, f"a{i}")
        assert [f.seq for f in await take(s, 3)] == [1, 2, 3]

        harness.chat.resume_gate.clear()
        harness.chat.kick(s.session_id, grpc.StatusCode.UNAVAILABLE, "draining")
        await harness.chat.wait_until(lambda: not harness.chat.attached(s.session_id))
        await harness.chat.push(s.session_id, "b0")
        await harness.chat.push(s.session_id, "b1")
        harness.chat.resume_gate.set()

        frames = await take(s, 2)
        assert [f.seq for f in frames] == [4, 5]
        assert texts(frames) == ["b0", "b1"]
        assert harness.chat.opens[-1].last_seq == 3
        assert s.duplicates == 3
        assert s.reconnects == 1
        # nothing else is pending: a ping is answered next, no duplicate before it
        await s.ping()
        assert (await s.next_frame(timeout=WAIT)).HasField("pong")


async def test_reconnect_after_unavailable_mid_stream(harness: ServerHarness) -> None:
    events: list[ConnectionEvent] = []
    resumed = asyncio.Event()

    def hook(event: ConnectionEvent) -> None:
        events.append(event)
        if event.kind is ConnectionEventKind.RESUMED:
            resumed.set()

    async with client_for(harness, on_connection_event=hook) as client, await client.open() as s:
        await harness.chat.push(s.session_id, "first")
        assert texts(await take(s, 1)) == ["first"]
        # the stream writes 2 more durable frames, then dies with UNAVAILABLE
        harness.chat.abort_after_writes = (2, grpc.StatusCode.UNAVAILABLE)
        for i in range(5):
            await harness.chat.push(s.session_id, f"m{i}")
        frames = await take(s, 5)
        assert [f.seq for f in frames] == [2, 3, 4, 5, 6]
        assert texts(frames) == [f"m{i}" for i in range(5)]
        await asyncio.wait_for(resumed.wait(), WAIT)
        assert s.reconnects == 1
        assert harness.chat.opens[-1].session_id == s.session_id
        # gRPC may drop messages still in flight when a stream fails, so the client saw
        # seq 2 or 3 before the abort; it resumed from exactly what it had (no overlap
        # replay is configured, so zero duplicates means no seq was requested twice)
        assert harness.chat.opens[-1].last_seq in (2, 3)
        assert s.duplicates == 0
        kinds = [e.kind for e in events]
        assert kinds[0] is ConnectionEventKind.DISCONNECTED
        assert events[0].code == grpc.StatusCode.UNAVAILABLE
        assert kinds[-1] is ConnectionEventKind.RESUMED


async def test_frames_sent_while_disconnected_go_out_after_resume(harness: ServerHarness) -> None:
    disconnected = asyncio.Event()

    def hook(event: ConnectionEvent) -> None:
        if event.kind is ConnectionEventKind.DISCONNECTED:
            disconnected.set()

    async with client_for(harness, on_connection_event=hook) as client, await client.open() as s:
        harness.chat.resume_gate.clear()
        harness.chat.kick(s.session_id, grpc.StatusCode.UNAVAILABLE)
        await asyncio.wait_for(disconnected.wait(), WAIT)
        first = await s.send("queued 1")
        second = await s.send("queued 2")
        harness.chat.resume_gate.set()
        frames = await take(s, 2)
        assert [f.in_reply_to for f in frames] == [first, second]
        assert texts(frames) == ["echo: queued 1", "echo: queued 2"]


async def test_resume_without_opened_times_out_and_is_retried(harness: ServerHarness) -> None:
    """A server that accepts the resume but never answers ``opened`` does not hang the session."""
    events: list[ConnectionEvent] = []
    timed_out = asyncio.Event()

    def hook(event: ConnectionEvent) -> None:
        events.append(event)
        if event.kind is ConnectionEventKind.RETRYING and event.attempt >= 2:
            timed_out.set()  # the first resume hung and timed out: this is the retry after it

    async with (
        client_for(harness, open_timeout=0.2, on_connection_event=hook) as client,
        await client.open() as s,
    ):
        harness.chat.resume_gate.clear()  # resumes are accepted, then wait forever
        harness.chat.kick(s.session_id, grpc.StatusCode.UNAVAILABLE)
        await asyncio.wait_for(timed_out.wait(), WAIT)
        retry = [e for e in events if e.kind is ConnectionEventKind.RETRYING][-1]
        assert retry.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "opened" in retry.details
        await harness.chat.push(s.session_id, "after the hang")
        harness.chat.resume_gate.set()
        assert texts(await take(s, 1)) == ["after the hang"]


async def test_first_resume_without_opened_raises_deadline_exceeded(
    harness: ServerHarness,
) -> None:
    async with client_for(harness) as client, await client.open() as s:
        sid, token = s.session_id, s.resume_token
    harness.chat.resume_gate.clear()
    async with client_for(harness, open_timeout=0.2) as client:
        with pytest.raises(SessionEnded) as info:
            await client.resume(sid, token)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    harness.chat.resume_gate.set()


async def test_reconnect_after_server_restart_same_port(harness: ServerHarness) -> None:
    async with client_for(harness) as client, await client.open() as s:
        await s.send("before")
        assert texts(await take(s, 1)) == ["echo: before"]
        await harness.stop()
        # while the server is down, the backend produces frames for the session
        sid = s.session_id
        await harness.chat.push(sid, "while down 1")
        await harness.chat.push(sid, "while down 2")
        await harness.start()
        frames = await take(s, 2)
        assert [f.seq for f in frames] == [2, 3]
        assert texts(frames) == ["while down 1", "while down 2"]
        assert s.reconnects == 1
        assert harness.chat.opens[-1].last_seq == 1
        await s.send("after")
        reply = await s.next_frame(timeout=WAIT)
        assert (reply.seq, reply.reply.text) == (4, "echo: after")


async def test_automatic_ack_batched_by_count(harness: ServerHarness) -> None:
    async with client_for(harness, ack_every=2, ack_interval=3600) as client:
        async with await client.open() as s:
            sess = harness.chat.sessions[s.session_id]
            for i in range(5):
                await harness.chat.push(s.session_id, f"x{i}")
            await take(s, 4)
            await harness.chat.wait_until(lambda: sess.acks == [2, 4])
            await take(s, 1)
        # closing flushes the ack of what was delivered
        await harness.chat.wait_until(lambda: sess.acks == [2, 4, 5])
        assert s.acked_seq == 5


async def test_automatic_ack_after_interval(harness: ServerHarness) -> None:
    client = client_for(harness, ack_every=1000, ack_interval=0.01)
    async with client, await client.open() as s:
        sess = harness.chat.sessions[s.session_id]
        await harness.chat.push(s.session_id, "one")
        await take(s, 1)
        await harness.chat.wait_until(lambda: sess.acks == [1])


async def test_ack_only_covers_delivered_frames(harness: ServerHarness) -> None:
    async with client_for(harness, ack_every=1, ack_interval=3600) as client:
        s = await client.open()
        sess = harness.chat.sessions[s.session_id]
        for i in range(3):
            await harness.chat.push(s.session_id, f"y{i}")
        await take(s, 1)
        await harness.chat.wait_until(lambda: sess.acks == [1])
        # the other two were received (buffered) but never delivered
        await s.ping()
        await harness.chat.wait_until(lambda: len(harness.chat.received) >= 2)
        await s.aclose()
        await s.aclose()  # idempotent
        assert sess.acks == [1]
        assert s.last_seq == 1


async def test_wrong_resume_token_raises_typed_error(harness: ServerHarness) -> None:
    async with client_for(harness) as client:
        s = await client.open()
        with pytest.raises(SessionPermissionDenied) as info:
            await client.resume(s.session_id, "not-the-token")
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "resume token" in info.value.details
        with pytest.raises(SessionNotFound):
            await client.resume("nope", "x")


async def test_bad_token_raises_unauthenticated(harness: ServerHarness) -> None:
    async with ChatClient(harness.target, token="wrong") as client:
        with pytest.raises(Unauthenticated):
            await client.open()


async def test_non_retriable_status_mid_stream_ends_iteration(harness: ServerHarness) -> None:
    async with client_for(harness) as client:
        s = await client.open()
        await harness.chat.push(s.session_id, "ok")
        # a second attachment of the same session supersedes the first
        other = await client.resume(s.session_id, s.resume_token, last_seq=0)
        with pytest.raises(SessionSuperseded) as info:
            async for _ in s:
                pass
        assert info.value.code == grpc.StatusCode.ABORTED
        assert s.reconnects == 0
        with pytest.raises(SessionSuperseded):
            await s.send("too late")
        assert texts(await take(other, 1)) == ["ok"]
        await other.aclose()


async def test_resume_replays_from_last_seq(harness: ServerHarness) -> None:
    async with client_for(harness) as client:
        s = await client.open()
        for i in range(4):
            await harness.chat.push(s.session_id, f"r{i}")
        await take(s, 2)
        sid, token, last = s.session_id, s.resume_token, s.last_seq
        await s.aclose()
        again = await client.resume(sid, token, last_seq=last)
        assert again.replayed == 2
        frames = await take(again, 2)
        assert [f.seq for f in frames] == [3, 4]
        await again.aclose()


async def test_reconnect_gives_up_with_typed_error(harness: ServerHarness) -> None:
    policy = ReconnectPolicy(initial_backoff=0, max_backoff=0, max_attempts=2, max_elapsed=None)
    async with client_for(harness, reconnect=policy) as client:
        s = await client.open()
        await harness.stop()
        with pytest.raises(ReconnectExhausted) as info:
            await s.next_frame(timeout=WAIT)
        assert info.value.attempts == 2
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_closed_session_iteration_stops(harness: ServerHarness) -> None:
    async with client_for(harness) as client:
        s = await client.open()
        await s.aclose()
        assert [f async for f in s] == []
        with pytest.raises(SessionClosed):
            await s.send("x")
        with pytest.raises(SessionClosed):
            await s.next_frame(timeout=WAIT)


async def test_quick_reply_parameters_round_trip(harness: ServerHarness) -> None:
    async with client_for(harness) as client, await client.open() as s:
        await s.send("menu")
        reply = await s.next_frame(timeout=WAIT)
        qr = reply.reply.quick_replies[0]
        assert from_struct(qr.parameters) == {"order_id": 1001}


def test_backoff_is_full_jitter_and_capped() -> None:
    import random

    policy = ReconnectPolicy(initial_backoff=0.5, max_backoff=4, multiplier=2)
    assert [policy.backoff_cap(n) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert policy.backoff_cap(10_000) == 4
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(200)]
    assert all(0 <= d <= 4 for d in delays)
    assert len(set(delays)) > 100
