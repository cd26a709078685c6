"""Bad input: random and malformed ConverseRequest sequences against an in-process server.

Frames go through a channel with a bytes serializer, so besides well-formed
frames (wrong first frame, open mid-stream, huge fields, acks for unseen seqs,
floods) the suite sends raw bytes: invalid protobuf, unknown fields and invalid
UTF-8 in string fields. Every stream must end with a precise status (never
UNKNOWN or INTERNAL) or be handled; afterwards a normal session still works and
every stored session stays consistent (head_seq == floor + outbox frames, seqs
gap-free).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from talkwire.server.app import Application
from talkwire.v1 import chat_pb2
from tests.conftest import make_config
from tests.reliability.conftest import ALICE, scale
from tests.support.grpcx import Stream, metadata_for

CLIENT_MASKED = "Internal error from Core"
METHOD = "/talkwire.v1.ChatService/Converse"
PRECISE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _bytes(msg: chat_pb2.ConverseRequest) -> bytes:
    return msg.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


text = st.text(max_size=50) | st.sampled_from(["", " ", "x" * 5000, "é" * 4001, "\x00"])
key = st.text(max_size=20) | st.sampled_from(["", "k" * 300, "order:1"])

valid_frames = st.one_of(
    st.builds(
        lambda t: chat_pb2.ConverseRequest(id="m", message=chat_pb2.UserMessage(text=t)), text
    ),
    st.builds(
        lambda s: chat_pb2.ConverseRequest(ack=chat_pb2.Ack(seq=s)), st.integers(0, 2**64 - 1)
    ),
    st.builds(lambda k: chat_pb2.ConverseRequest(subscribe=chat_pb2.Subscribe(key=k)), key),
    st.builds(lambda k: chat_pb2.ConverseRequest(unsubscribe=chat_pb2.Unsubscribe(key=k)), key),
    st.builds(lambda i: chat_pb2.ConverseRequest(id=i, action=chat_pb2.UserAction(intent=i)), key),
    st.builds(lambda d: chat_pb2.ConverseRequest(ping=chat_pb2.Ping(data=d)), text),
    st.builds(lambda i: chat_pb2.ConverseRequest(id=i), st.text(max_size=200)),
    st.builds(
        lambda sid, tok, last: chat_pb2.ConverseRequest(
            open=chat_pb2.Open(session_id=sid, resume_token=tok, last_seq=last)
        ),
        st.text(max_size=70),
        st.text(max_size=10),
        st.integers(0, 2**64 - 1),
    ),
).map(_bytes)

# Raw bytes that decode: unknown fields, an unknown oneof member (a newer client).
raw_frames = st.one_of(
    st.just(_field(99, b"unknown field") + _field(16, b"")),  # unknown field + ping
    st.just(_field(17, b"future oneof member")),  # an unknown oneof member
    st.builds(lambda b: _field(1000, b), st.binary(max_size=64)),
)

# Bytes that do NOT decode: the stream ends INVALID_ARGUMENT.
UNDECODABLE = {
    "invalid-protobuf": b"\xff\xff\xff",
    "invalid-utf8-id": _field(1, b"\xff\xfe\xfa"),
    "invalid-utf8-text": _field(11, _field(1, b"bad \xc3\x28 utf8")),
    "invalid-utf8-attribute": _field(10, _field(6, _field(1, b"\xff") + _field(2, b"v"))),
}

first_frames = st.one_of(
    st.just(_bytes(chat_pb2.ConverseRequest(id="open", open=chat_pb2.Open(channel="fuzz")))),
    st.builds(
        lambda attrs, ch: _bytes(
            chat_pb2.ConverseRequest(open=chat_pb2.Open(channel=ch, attributes=attrs))
        ),
        st.dictionaries(st.text(max_size=200), st.text(max_size=2000), max_size=70),
        st.text(max_size=80),
    ),
    valid_frames,
    raw_frames,
)

sequences = st.tuples(
    first_frames,
    st.lists(st.one_of(valid_frames, raw_frames), max_size=20),
    st.integers(0, 300),  # a flood of pings at the end
    st.sampled_from([ALICE, None, "wrong-token"]),
)


async def _run(app: Application, seq: tuple[bytes, list[bytes], int, str | None]) -> str:
    first, rest, flood, token = seq
    async with grpc.aio.insecure_channel(app.target) as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=lambda b: b,
            response_deserializer=chat_pb2.ConverseResponse.FromString,
        )(metadata=metadata_for(token))
        ping = _bytes(chat_pb2.ConverseRequest(ping=chat_pb2.Ping()))

        async def write() -> None:
            try:
                for frame in [first, *rest, *([ping] * flood)]:
                    await call.write(frame)
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                pass

        writer = asyncio.create_task(write())
        session_id = ""
        try:
            async with asyncio.timeout(10):
                async for frame in call:
                    if frame.WhichOneof("frame") == "opened":
                        session_id = frame.opened.session_id
            code = await call.code()
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        finally:
            writer.cancel()
        details = await call.details()
        if code == grpc.StatusCode.INTERNAL and details == CLIENT_MASKED:
            # grpc-python's client: a write racing the server's end of the call replaces
            # the server's status with this one (aio/_call.py _write -> set_internal_error).
            return session_id
        assert code in PRECISE, f"{code}: {details}"
        return session_id


async def _assert_consistent(app: Application, session_id: str) -> None:
    record = await app.store.get_session(session_id)
    assert record is not None
    frames = await app.store.frames_after(session_id, 0)
    base = max(record.floor_seq, record.acked_seq)
    assert [f.seq for f in frames] == list(range(base + 1, record.head_seq + 1))
    for f in frames:
        assert chat_pb2.ConverseResponse.FromString(f.payload).seq == f.seq


async def _normal_session_works(app: Application) -> None:
    async with grpc.aio.insecure_channel(app.target) as channel:
        s = Stream(channel, ALICE)
        await s.open()
        await s.send(chat_pb2.ConverseRequest(id="hello", message=chat_pb2.UserMessage(text="hi")))
        frame = await s.recv()
        assert frame.reply.text == "hi" and frame.seq == 1
        s.cancel()


@pytest.fixture
async def fuzz_app(make_app: Any, tmp_path: Path) -> Application:
    app: Application = await make_app(make_config(tmp_path, server={"max_message_bytes": 16384}))
    return app


@settings(
    max_examples=scale(60, 600),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seq=sequences)
async def test_malformed_sequences_get_precise_statuses(
    fuzz_app: Application, seq: tuple[bytes, list[bytes], int, str | None]
) -> None:
    session_id = await _run(fuzz_app, seq)
    if session_id:
        await _assert_consistent(fuzz_app, session_id)
    await _normal_session_works(fuzz_app)


@pytest.mark.parametrize("first", [True, False], ids=["first-frame", "mid-stream"])
@pytest.mark.parametrize("frame", list(UNDECODABLE.values()), ids=list(UNDECODABLE))
async def test_undecodable_frame_is_invalid_argument(
    fuzz_app: Application, frame: bytes, first: bool
) -> None:
    opening = _bytes(chat_pb2.ConverseRequest(open=chat_pb2.Open()))
    async with grpc.aio.insecure_channel(fuzz_app.target) as channel:
        call = channel.stream_stream(METHOD, request_serializer=lambda b: b)(
            metadata=metadata_for(ALICE)
        )
        for f in [frame] if first else [opening, frame]:
            await call.write(f)
        await call.done_writing()
        async with asyncio.timeout(5):
            # A client sees the status after the messages before it (here: `opened`).
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await call.read() is not grpc.aio.EOF:
                    pass
            code = await call.code()
    await _normal_session_works(fuzz_app)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
