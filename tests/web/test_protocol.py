"""The WebSocket gateway without a browser: codecs, auth, origins and the limits' close codes.

A real Application (echo handler, SQLite store) with ``web:`` on, driven by the
``websockets`` client. Every test checks what a client sees (frames, close
codes) and that the session survives: a resume afterwards gets every frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from talkwire.server.app import Application
from talkwire.server.frames import encode_template
from talkwire.v1 import chat_pb2
from tests.conftest import make_config

ALICE = "alice-token"
JSON = "talkwire.v1.json"


async def web_app(make_app: Callable[..., Any], tmp_path: Path, **server: Any) -> Application:
    config = make_config(
        tmp_path,
        server=server,
        web={"listen": "127.0.0.1:0", "allowed_origins": ["http://allowed.example"]},
    )
    app: Application = await make_app(config)
    return app


def ws_url(app: Application) -> str:
    assert app.web is not None
    return f"ws://127.0.0.1:{app.web.port}/ws"


def dial(app: Application, token: str = ALICE, **kwargs: Any) -> Any:
    protocols = [JSON, f"bearer.{token}"] if token else [JSON]
    return connect(ws_url(app), subprotocols=protocols, **kwargs)  # type: ignore[arg-type]


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(10):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def open_session(ws: ClientConnection, **resume: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"id": "o", "open": {"channel": "web", **resume}}))
    opened = await recv(ws)
    assert "opened" in opened, opened
    return opened["opened"]  # type: ignore[no-any-return]


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; the close code and reason it sent."""
    async with asyncio.timeout(20):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    received = ws.protocol.close_rcvd
    assert received is not None, "no close frame from the server"
    return received.code, received.reason


async def replay_all(app: Application, opened: dict[str, Any]) -> list[dict[str, Any]]:
    """Resume from seq 0 on a fresh socket: every durable frame of the session."""
    async with dial(app) as ws:
        again = await open_session(
            ws, sessionId=opened["sessionId"], resumeToken=opened["resumeToken"]
        )
        return [await recv(ws) for _ in range(again["replayed"])]


async def test_json_open_reply_ack_resume(make_app: Callable[..., Any], tmp_path: Path) -> None:
    app = await web_app(make_app, tmp_path)
    async with dial(app) as ws:
        assert ws.subprotocol == JSON
        opened = await open_session(ws)
        await ws.send(json.dumps({"id": "m1", "message": {"text": "hello"}}))
        reply = await recv(ws)
        assert reply["seq"] == "1"  # proto3 JSON: uint64 as a string
        assert reply["inReplyTo"] == "m1"
        assert reply["reply"]["text"] == "hello"
    frames = await replay_all(app, opened)
    assert [(f["seq"], f["reply"]["text"]) for f in frames] == [("1", "hello")]


async def test_binary_subprotocol_and_token_in_first_frame(
    make_app: Callable[..., Any], tmp_path: Path
) -> None:
    app = await web_app(make_app, tmp_path)
    async with connect(ws_url(app), subprotocols=["talkwire.v1.proto"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "talkwire.v1.proto"
        # Binary frames carry no token member: without the header they are refused.
        await ws.send(chat_pb2.ConverseRequest(id="o", open=chat_pb2.Open()).SerializeToString())
        code, reason = await closed_with(ws)
        assert (code, reason) == (4016, "missing bearer token")
    async with connect(ws_url(app)) as ws:
        await ws.send(json.dumps({"token": ALICE, "id": "o", "open": {}}))
        assert (await recv(ws))["opened"]["sessionId"]
        await ws.send(json.dumps({"id": "p", "ping": {"data": "x"}}))
        assert (await recv(ws))["pong"] == {"data": "x"}


async def test_bad_token_closes_4016(make_app: Callable[..., Any], tmp_path: Path) -> None:
    app = await web_app(make_app, tmp_path)
    async with dial(app, token="wrong") as ws:
        await ws.send(json.dumps({"id": "o", "open": {}}))
        assert await closed_with(ws) == (4016, "invalid token")


async def test_origin_allow_list(make_app: Callable[..., Any], tmp_path: Path) -> None:
    app = await web_app(make_app, tmp_path)
    with pytest.raises(InvalidStatus) as refused:
        async with dial(app, origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    async with dial(app, origin="http://allowed.example") as ws:  # type: ignore[arg-type]
        assert (await open_session(ws))["sessionId"]


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("{not json", id="malformed-json"),
        pytest.param('{"id": "x", "message": {"text": "hi", "colour": "red"}}', id="unknown-field"),
        pytest.param('{"id": 5, "message": {"text": ["a"]}}', id="wrong-type"),
        pytest.param("[1, 2]", id="not-an-object"),
    ],
)
async def test_undecodable_frame_closes_4003_and_loses_nothing(
    make_app: Callable[..., Any], tmp_path: Path, frame: str
) -> None:
    app = await web_app(make_app, tmp_path)
    async with dial(app) as ws:
        opened = await open_session(ws)
        await ws.send(json.dumps({"id": "m1", "message": {"text": "kept"}}))
        assert (await recv(ws))["reply"]["text"] == "kept"
        await ws.send(frame)
        code, reason = await closed_with(ws)
    assert (code, reason) == (4003, "a frame is not a valid ConverseRequest")
    frames = await replay_all(app, opened)
    assert [f["reply"]["text"] for f in frames] == ["kept"]


async def test_oversized_frame_closes_4008(make_app: Callable[..., Any], tmp_path: Path) -> None:
    app = await web_app(make_app, tmp_path, max_message_bytes=4096)
    async with dial(app) as ws:
        opened = await open_session(ws)
        await ws.send(json.dumps({"id": "m1", "message": {"text": "small"}}))
        await recv(ws)
        await ws.send(json.dumps({"id": "big", "message": {"text": "x" * 5000}}))
        code, reason = await closed_with(ws)
    assert code == 4008
    assert "limit is 4096" in reason
    assert [f["reply"]["text"] for f in await replay_all(app, opened)] == ["small"]


async def test_flood_closes_4108_then_resumes(make_app: Callable[..., Any], tmp_path: Path) -> None:
    app = await web_app(make_app, tmp_path, frames_per_second=1.0, frame_burst=2)
    async with dial(app) as ws:
        opened = await open_session(ws)
        for i in range(40):
            await ws.send(json.dumps({"id": f"p{i}", "ping": {}}))
        code, reason = await closed_with(ws)
    assert (code, reason) == (4108, "too many frames; slow down and resume")
    async with dial(app) as ws:
        again = await open_session(
            ws, sessionId=opened["sessionId"], resumeToken=opened["resumeToken"]
        )
        assert again["resumed"]


async def test_client_that_never_reads_is_cut_4108_and_resumes_everything(
    make_app: Callable[..., Any], tmp_path: Path
) -> None:
    app = await web_app(make_app, tmp_path, write_timeout=1.0, queue_size=64)
    # max_queue=1: the client library stops reading the socket after one message.
    async with dial(app, max_queue=1) as ws:
        opened = await open_session(ws)
        sid = opened["sessionId"]
        texts = [f"update {i} " + "y" * 20_000 for i in range(400)]
        for start in range(0, len(texts), 50):
            templates = []
            for text in texts[start : start + 50]:
                frame = chat_pb2.ConverseResponse()
                frame.update.text = text
                templates.append(encode_template(frame))
            app.hub.deliver({sid: await app.store.append(sid, templates)})
        async with asyncio.timeout(20):
            while app.hub.is_attached(sid):
                await asyncio.sleep(0.05)
        code, reason = await closed_with(ws)
    assert code == 4108, reason
    # The server kept serving, and the session lost nothing.
    frames = await replay_all(app, opened)
    assert [f["update"]["text"] for f in frames] == texts


async def test_drain_closes_4114_and_the_session_resumes_elsewhere(
    make_app: Callable[..., Any], tmp_path: Path
) -> None:
    app = await web_app(make_app, tmp_path, drain_delay=0.0)
    async with dial(app) as ws:
        opened = await open_session(ws)
        await ws.send(json.dumps({"id": "m1", "message": {"text": "before the drain"}}))
        await recv(ws)
        drain = asyncio.create_task(app.drain(grace=0.5))
        code, reason = await closed_with(ws)
        await drain
    assert code == 4114, reason
    again = await web_app(make_app, tmp_path)  # same SQLite store: "another replica"
    frames = await replay_all(again, opened)
    assert [f["reply"]["text"] for f in frames] == ["before the drain"]


@pytest.mark.parametrize(
    ("web", "message"),
    [
        ({"listen": "8080"}, "web.listen: expected host:port, got '8080'"),
        ({"listn": "127.0.0.1:1"}, "web.listn: unknown key"),
        ({"allowed_origins": ["shop.example"]}, "web.allowed_origins: expected scheme://host"),
        ({"open_timeout": 0}, "web.open_timeout: expected a positive number"),
    ],
)
def test_bad_web_section_is_one_clear_error(
    tmp_path: Path, web: dict[str, Any], message: str
) -> None:
    from talkwire.server.errors import ConfigError
    from talkwire.server.web import WebSettings

    config = make_config(tmp_path, web=web)
    with pytest.raises(ConfigError) as err:
        WebSettings(config.web)
    assert str(err.value).startswith(message), str(err.value)


def test_no_web_section_is_off(tmp_path: Path) -> None:
    from talkwire.server.web import WebSettings

    assert make_config(tmp_path).web == {}
    assert not WebSettings({"enabled": False, "listen": "127.0.0.1:1"}).enabled


async def test_second_socket_supersedes_the_first_4010(
    make_app: Callable[..., Any], tmp_path: Path
) -> None:
    app = await web_app(make_app, tmp_path)
    async with dial(app) as first:
        opened = await open_session(first)
        async with dial(app) as second:
            again = await open_session(
                second, sessionId=opened["sessionId"], resumeToken=opened["resumeToken"]
            )
            assert again["resumed"]
            assert await closed_with(first) == (4010, "superseded by a newer attachment")
            await second.send(json.dumps({"id": "m1", "message": {"text": "still here"}}))
            assert (await recv(second))["reply"]["text"] == "still here"


def test_close_code_table_round_trips() -> None:
    import grpc

    from talkwire.server.errors import Status
    from talkwire.server.web.closecodes import close_code, status_of_close

    assert close_code(None) == 1000
    assert close_code(Status(grpc.StatusCode.OK, "", False)) == 1000
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        for retriable in (False, True):
            ws_code = close_code(Status(code, "x", retriable))
            assert 4000 <= ws_code < 4200
            assert status_of_close(ws_code) == (code, retriable)
