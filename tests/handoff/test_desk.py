"""Human handoff on a real grpc.aio server: the bot hands off, an agent takes over, hands back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from talkwire.server.app import Application
from talkwire.v1 import agent_pb2, chat_pb2
from tests.handoff.support import Attend, agent_stub, handoff_config, kind, rpc_code
from tests.support.grpcx import Stream, message, metadata_for
from tests.support.history import History

ANN, BEN, GUS = "ann-token", "ben-token", "gus-token"


@pytest.fixture
async def app(make_app: Callable[..., Any], tmp_path: Path) -> Application:
    result: Application = await make_app(handoff_config(tmp_path))
    return result


async def _frames(stream: Stream, n: int) -> list[chat_pb2.ConverseResponse]:
    return [await stream.recv() for _ in range(n)]


async def _queued_session(
    channel: grpc.aio.Channel, text: str = "talk to a person"
) -> tuple[Stream, chat_pb2.Opened, list[chat_pb2.ConverseResponse]]:
    user = Stream(channel, "alice-token")
    opened = await user.open(channel="web")
    await user.send(message("hello there", "m1"))
    first = await _frames(user, 1)
    await user.send(message(text, "m2"))
    return user, opened, first + await _frames(user, 2)


async def test_bot_hands_off_agent_talks_and_hands_back(channel: grpc.aio.Channel) -> None:
    history = History()
    user, opened, frames = await _queued_session(channel)
    sid = opened.session_id
    # The bot's reply comes first; the QUEUED frame follows it in the same commit.
    assert [kind(f) for f in frames] == ["reply:bot", "reply:bot", "handoff:QUEUED"]
    queued = frames[2].handoff
    assert (queued.queue, queued.position, queued.reason) == ("billing", 1, "asked for a person")
    assert frames[2].in_reply_to == "m2"

    desk = agent_stub(channel)
    listing = await desk.ListQueue(agent_pb2.ListQueueRequest(), metadata=metadata_for(ANN))
    [waiting] = listing.sessions
    assert (waiting.session_id, waiting.queue, waiting.position) == (sid, "billing", 1)
    assert waiting.subject == "alice"
    assert waiting.claims["customer_id"] == "c-100"
    turns = [(t.role, t.text) for t in waiting.context.turns]
    assert turns == [
        ("user", "hello there"),
        ("bot", "Hi! How can I help?"),
        ("user", "talk to a person"),
    ]

    accepted = await desk.Accept(
        agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(ANN)
    )
    assert accepted.session.agent == "ann"
    frame = await user.recv()
    assert kind(frame) == "handoff:ACCEPTED"
    assert frame.handoff.agent_display_name == "Ann"
    frames.append(frame)

    agent = Attend(channel, ANN)
    attended = await agent.open(sid)
    assert attended.replayed == len(frames)
    replay = [await agent.session_frame() for _ in range(attended.replayed)]
    assert [f.seq for f in replay] == [f.seq for f in frames]

    # The user's turn goes to the agent (the bot stays quiet); both see it with one seq.
    await user.send(message("my bill is wrong", "m3"))
    receipt = await user.recv()
    assert kind(receipt) == "reply:user"
    assert (receipt.reply.text, receipt.in_reply_to) == ("my bill is wrong", "m3")
    seen = await agent.session_frame()
    assert (seen.seq, seen.reply.text, seen.reply.author.id) == (
        receipt.seq,
        "my bill is wrong",
        "alice",
    )

    await agent.say("Let me check that for you", "a1")
    said = await user.recv()
    assert kind(said) == "reply:agent"
    assert (said.reply.text, said.reply.author.display_name) == ("Let me check that for you", "Ann")
    echoed = await agent.session_frame()
    assert echoed.seq == said.seq

    await agent.send(
        agent_pb2.AttendRequest(id="r", release=agent_pb2.ReleaseSession(reason="done"))
    )
    ended = await user.recv()
    assert kind(ended) == "handoff:ENDED"
    assert not ended.handoff.closed
    agent_end = await agent.session_frame()
    assert agent_end.seq == ended.seq
    assert await agent.status() == grpc.StatusCode.OK

    # Back with the bot.
    await user.send(message("hello there", "m4"))
    back = await user.recv()
    assert (kind(back), back.reply.text) == ("reply:bot", "Hi! How can I help?")

    for f in [*frames, receipt, said, ended, back]:
        history.record_frame("user", f)
    for f in [*replay, seen, echoed, agent_end]:
        history.record_frame("agent", f)
    report = history.check()
    print(report.summary("handoff"))
    report.assert_clean()
    user.cancel()


async def test_accept_is_race_free_and_precise(channel: grpc.aio.Channel) -> None:
    user, opened, _ = await _queued_session(channel)
    sid = opened.session_id
    desk = agent_stub(channel)
    calls = [
        desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(token))
        for token in (ANN, BEN)
    ]
    codes = sorted((await asyncio.gather(*(rpc_code(c) for c in calls))), key=str)
    assert codes == sorted([grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION], key=str)
    # Exactly one ACCEPTED frame reached the user.
    frame = await user.recv()
    assert kind(frame) == "handoff:ACCEPTED"

    for token in (ANN, BEN):  # the winner's second accept too
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(token))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already accepted" in (info.value.details() or "")
    unknown = desk.Accept(agent_pb2.AcceptRequest(session_id="nope"), metadata=metadata_for(ANN))
    assert await rpc_code(unknown) == grpc.StatusCode.NOT_FOUND
    user.cancel()


async def test_accepting_a_session_with_the_bot_fails(channel: grpc.aio.Channel) -> None:
    user = Stream(channel, "alice-token")
    opened = await user.open()
    call = agent_stub(channel).Accept(
        agent_pb2.AcceptRequest(session_id=opened.session_id), metadata=metadata_for(ANN)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not waiting for an agent" in (info.value.details() or "")
    user.cancel()


async def test_authorisation(channel: grpc.aio.Channel) -> None:
    user, opened, _ = await _queued_session(channel)
    sid = opened.session_id
    desk = agent_stub(channel)
    # Not an agent.
    for token in ("alice-token", "admin-token"):
        call = desk.ListQueue(agent_pb2.ListQueueRequest(), metadata=metadata_for(token))
        assert await rpc_code(call) == grpc.StatusCode.PERMISSION_DENIED
    no_role = Attend(channel, "alice-token")
    await no_role.send(agent_pb2.AttendRequest(open=agent_pb2.AttendOpen(session_id=sid)))
    assert await no_role.status() == grpc.StatusCode.PERMISSION_DENIED
    # Gus may not serve billing: he neither sees nor takes the session.
    listing = await desk.ListQueue(agent_pb2.ListQueueRequest(), metadata=metadata_for(GUS))
    assert list(listing.sessions) == []
    call = desk.ListQueue(agent_pb2.ListQueueRequest(queue="billing"), metadata=metadata_for(GUS))
    assert await rpc_code(call) == grpc.StatusCode.PERMISSION_DENIED
    call = desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(GUS))
    assert await rpc_code(call) == grpc.StatusCode.PERMISSION_DENIED
    # Attending before accepting, and attending what another agent accepted.
    early = Attend(channel, ANN)
    await early.send(agent_pb2.AttendRequest(open=agent_pb2.AttendOpen(session_id=sid)))
    assert await early.status() == grpc.StatusCode.FAILED_PRECONDITION
    await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(ANN))
    other = Attend(channel, BEN)
    await other.send(agent_pb2.AttendRequest(open=agent_pb2.AttendOpen(session_id=sid)))
    assert await other.status() == grpc.StatusCode.PERMISSION_DENIED
    user.cancel()


async def test_messages_after_release_are_refused_nothing_lost(channel: grpc.aio.Channel) -> None:
    user, opened, frames = await _queued_session(channel)
    sid = opened.session_id
    desk = agent_stub(channel)
    await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(ANN))
    frames.append(await user.recv())
    first = Attend(channel, ANN)
    await first.open(sid, last_seq=frames[-1].seq)
    # A second stream of the same agent (e.g. a second tab) outlives the release.
    await first.send(agent_pb2.AttendRequest(id="r", release=agent_pb2.ReleaseSession()))
    ended = await user.recv()
    assert kind(ended) == "handoff:ENDED"
    assert await first.status() == grpc.StatusCode.OK
    again = Attend(channel, ANN)
    await again.send(agent_pb2.AttendRequest(open=agent_pb2.AttendOpen(session_id=sid)))
    assert await again.status() == grpc.StatusCode.FAILED_PRECONDITION
    transfer = desk.Transfer(
        agent_pb2.TransferRequest(session_id=sid, queue="general"), metadata=metadata_for(ANN)
    )
    assert await rpc_code(transfer) == grpc.StatusCode.FAILED_PRECONDITION
    # The user's stream carries every frame once, in order.
    await user.send(message("hello there", "m9"))
    back = await user.recv()
    assert kind(back) == "reply:bot"
    seqs = [f.seq for f in [*frames, ended, back]]
    assert seqs == list(range(1, len(seqs) + 1))
    user.cancel()


async def test_message_after_the_session_left_the_agent(channel: grpc.aio.Channel) -> None:
    user, opened, _ = await _queued_session(channel)
    sid = opened.session_id
    desk = agent_stub(channel)
    await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(ANN))
    accepted = await user.recv()
    agent = Attend(channel, ANN)
    await agent.open(sid, last_seq=accepted.seq)
    # Transferred away (by Ann from another window): this stream ends, its messages are refused.
    await desk.Transfer(
        agent_pb2.TransferRequest(session_id=sid, queue="general", reason="not billing"),
        metadata=metadata_for(ANN),
    )
    moved = await user.recv()
    assert (kind(moved), moved.handoff.queue) == ("handoff:QUEUED", "general")
    assert (await agent.session_frame()).seq == moved.seq
    assert await agent.status() == grpc.StatusCode.OK
    late = Attend(channel, ANN)
    await late.send(agent_pb2.AttendRequest(open=agent_pb2.AttendOpen(session_id=sid)))
    assert await late.status() == grpc.StatusCode.FAILED_PRECONDITION
    # Gus (general) takes it now.
    await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(GUS))
    assert kind(await user.recv()) == "handoff:ACCEPTED"
    user.cancel()


async def test_agent_message_on_a_stream_that_lost_the_session(
    app: Application, channel: grpc.aio.Channel
) -> None:
    user, opened, _ = await _queued_session(channel)
    sid = opened.session_id
    desk = agent_stub(channel)
    await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(ANN))
    accepted = await user.recv()
    agent = Attend(channel, ANN)
    await agent.open(sid, last_seq=accepted.seq)
    # Released elsewhere (a second replica, a second window): the store says so first.
    step = await app.handoff.handoffs.release(sid, "ann")
    app.hub.deliver(step.frames)
    assert kind(await user.recv()) == "handoff:ENDED"
    assert kind(await agent.session_frame()) == "handoff:ENDED"
    await agent.say("are you still there?", "late")
    error = await agent.recv()
    assert error.WhichOneof("frame") == "error"
    assert (error.error.code, error.in_reply_to) == ("FAILED_PRECONDITION", "late")
    agent.cancel()
    user.cancel()


async def test_bad_agent_input(channel: grpc.aio.Channel) -> None:
    user, opened, _ = await _queued_session(channel)
    sid = opened.session_id
    desk = agent_stub(channel)
    await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(ANN))
    accepted = await user.recv()
    agent = Attend(channel, ANN)
    await agent.open(sid, last_seq=accepted.seq)
    await agent.say("   ", "blank")
    error = await agent.recv()
    assert (error.error.code, error.in_reply_to) == ("INVALID_ARGUMENT", "blank")
    await agent.say("still here", "ok")
    said = await user.recv()
    assert (kind(said), said.seq) == ("reply:agent", accepted.seq + 1)
    ahead = Attend(channel, ANN)
    await ahead.send(
        agent_pb2.AttendRequest(open=agent_pb2.AttendOpen(session_id=sid, last_seq=999))
    )
    assert await ahead.status() == grpc.StatusCode.OUT_OF_RANGE
    no_open = Attend(channel, ANN)
    await no_open.say("hi")
    assert await no_open.status() == grpc.StatusCode.INVALID_ARGUMENT
    bad_queue = desk.Transfer(
        agent_pb2.TransferRequest(session_id=sid, queue="no spaces!"), metadata=metadata_for(ANN)
    )
    assert await rpc_code(bad_queue) == grpc.StatusCode.INVALID_ARGUMENT
    agent.cancel()
    user.cancel()


async def test_fallbacks_in_a_row_hand_off(channel: grpc.aio.Channel) -> None:
    user = Stream(channel, "alice-token")
    await user.open()
    await user.send(message("qwerty zxcv", "f1"))
    assert (await user.recv()).reply.intent == "fallback"
    await user.send(message("asdf lkjh", "f2"))
    frames = await _frames(user, 2)
    assert [kind(f) for f in frames] == ["reply:bot", "handoff:QUEUED"]
    assert (frames[1].handoff.queue, frames[1].handoff.reason) == (
        "general",
        "the bot did not understand",
    )
    user.cancel()


async def test_gateway_action_hands_off(channel: grpc.aio.Channel) -> None:
    user = Stream(channel, "alice-token")
    await user.open()
    action = chat_pb2.UserAction(intent="talkwire.handoff")
    action.parameters.update({"queue": "billing", "reason": "pressed the button"})
    await user.send(chat_pb2.ConverseRequest(id="b1", action=action))
    frame = await user.recv()
    assert kind(frame) == "handoff:QUEUED"
    assert (frame.handoff.queue, frame.handoff.reason, frame.in_reply_to) == (
        "billing",
        "pressed the button",
        "b1",
    )
    # Asking again while queued is a user turn for the agent, not a second queue entry.
    await user.send(chat_pb2.ConverseRequest(id="b2", action=action))
    assert kind(await user.recv()) == "reply:user"
    user.cancel()


async def test_request_handoff_api_and_close(channel: grpc.aio.Channel) -> None:
    user = Stream(channel, "alice-token")
    opened = await user.open()
    sid = opened.session_id
    desk = agent_stub(channel)
    response = await desk.RequestHandoff(
        agent_pb2.RequestHandoffRequest(session_id=sid, queue="billing", reason="VIP"),
        metadata=metadata_for(ANN),
    )
    assert (response.session.queue, response.session.position) == ("billing", 1)
    assert kind(await user.recv()) == "handoff:QUEUED"
    twice = desk.RequestHandoff(
        agent_pb2.RequestHandoffRequest(session_id=sid), metadata=metadata_for(ANN)
    )
    assert await rpc_code(twice) == grpc.StatusCode.FAILED_PRECONDITION
    await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(ANN))
    accepted = await user.recv()
    agent = Attend(channel, ANN)
    await agent.open(sid, last_seq=accepted.seq)
    await agent.send(
        agent_pb2.AttendRequest(id="c", close=agent_pb2.CloseConversation(reason="solved"))
    )
    assert await agent.status() == grpc.StatusCode.OK
    assert await user.status() == grpc.StatusCode.NOT_FOUND
    resumed = Stream(channel, "alice-token")
    await resumed.send(
        chat_pb2.ConverseRequest(
            open=chat_pb2.Open(session_id=sid, resume_token=opened.resume_token)
        )
    )
    assert await resumed.status() == grpc.StatusCode.NOT_FOUND


async def test_agent_who_stays_away_sends_the_session_back_to_the_queue(
    make_app: Callable[..., Any], tmp_path: Path
) -> None:
    app = await make_app(
        handoff_config(tmp_path, handoff={"agent_timeout": 1, "sweep_interval": 0.2})
    )
    async with grpc.aio.insecure_channel(app.target) as channel:
        user, opened, _ = await _queued_session(channel)
        sid = opened.session_id
        desk = agent_stub(channel)
        await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(ANN))
        assert kind(await user.recv()) == "handoff:ACCEPTED"
        # Ann never attends: the sweep puts the session back, keeping its place.
        requeued = await user.recv(timeout=20)
        assert (kind(requeued), requeued.handoff.position) == ("handoff:QUEUED", 1)
        assert "did not come back" in requeued.handoff.reason
        late = Attend(channel, ANN)
        await late.send(agent_pb2.AttendRequest(open=agent_pb2.AttendOpen(session_id=sid)))
        assert await late.status() == grpc.StatusCode.FAILED_PRECONDITION
        await desk.Accept(agent_pb2.AcceptRequest(session_id=sid), metadata=metadata_for(BEN))
        assert kind(await user.recv()) == "handoff:ACCEPTED"
        user.cancel()


async def test_an_admin_may_request_a_handoff_but_not_serve(channel: grpc.aio.Channel) -> None:
    user = Stream(channel, "alice-token")
    opened = await user.open()
    desk = agent_stub(channel)
    response = await desk.RequestHandoff(
        agent_pb2.RequestHandoffRequest(session_id=opened.session_id, reason="escalated"),
        metadata=metadata_for("admin-token"),
    )
    assert (response.session.queue, response.session.reason) == ("general", "escalated")
    assert kind(await user.recv()) == "handoff:QUEUED"
    call = desk.Accept(
        agent_pb2.AcceptRequest(session_id=opened.session_id), metadata=metadata_for("admin-token")
    )
    assert await rpc_code(call) == grpc.StatusCode.PERMISSION_DENIED
    refused = desk.RequestHandoff(
        agent_pb2.RequestHandoffRequest(session_id=opened.session_id),
        metadata=metadata_for("bob-token"),
    )
    assert await rpc_code(refused) == grpc.StatusCode.PERMISSION_DENIED
    user.cancel()


async def test_an_agent_cannot_request_a_handoff_into_a_queue_it_may_not_serve(
    channel: grpc.aio.Channel,
) -> None:
    user = Stream(channel, "alice-token")
    opened = await user.open()
    desk = agent_stub(channel)
    # Gus may not serve billing: queueing a session there would pull it out of his reach
    # into someone else's, or (for a queue he serves) to himself.
    call = desk.RequestHandoff(
        agent_pb2.RequestHandoffRequest(session_id=opened.session_id, queue="billing"),
        metadata=metadata_for(GUS),
    )
    assert await rpc_code(call) == grpc.StatusCode.PERMISSION_DENIED
    listing = await desk.ListQueue(agent_pb2.ListQueueRequest(), metadata=metadata_for(ANN))
    assert list(listing.sessions) == []  # nothing was queued
    user.cancel()
