"""The blocking client against the real server (happy paths), run in a worker thread."""

from __future__ import annotations

import asyncio
import time

import pytest

from talkwire.clients.errors import RpcError, Unauthenticated
from talkwire.clients.sync import SyncAdminClient, SyncChatClient
from talkwire.server.app import Application


def _chat_then_resume(target: str) -> tuple[list[str], list[str], str]:
    with SyncChatClient(target, token="alice-token") as client:
        session = client.open(channel="batch")
        frame_id = session.send("where is my order 1001")
        kinds = []
        for frame in session:
            kinds.append(frame.WhichOneof("frame"))
            if frame.in_reply_to == frame_id and frame.HasField("reply"):
                break
        sid, token, last = session.session_id, session.resume_token, session.last_seq
        session.close()
        with SyncAdminClient(target, token="admin-token") as admin:
            # close() acked what was seen; the server records acks in the background.
            deadline = time.monotonic() + 10
            while admin.get_session(sid).acked_seq != last and time.monotonic() < deadline:
                time.sleep(0.05)  # bounded poll: no event tells a client the ack is stored
            assert admin.get_session(sid).acked_seq == last
            published = admin.publish(session_id=sid, text="out for delivery")
            assert published.delivered == 1
            frames = admin.watch(sid, after_seq=last)  # retained, then live: take one
            watched = [next(frames).update.text]
            frames.close()  # cancels the call
            rows = admin.invoke_connector(
                "crm", "order_status", {"order_id": 1001, "customer_id": "c-100"}
            )
            assert rows["status"] == "shipped"
            assert sid in {s.session_id for s in admin.iter_sessions(key="order:1001")}
        resumed = client.resume(sid, token, last)
        update = resumed.next_frame()
        resumed.close()
    return kinds, [update.update.text, *watched], rows["status"]


async def test_sync_chat_admin_and_resume(demo_app: Application) -> None:
    kinds, updates, status = await asyncio.to_thread(_chat_then_resume, demo_app.target)
    assert kinds == ["subscription", "reply"]
    assert updates == ["out for delivery", "out for delivery"]  # resumed, and watched
    assert status == "shipped"


def _refused(target: str) -> None:
    with SyncChatClient(target, token="wrong") as client:
        client.open()


async def test_sync_errors_are_typed(demo_app: Application) -> None:
    with pytest.raises(Unauthenticated):
        await asyncio.to_thread(_refused, demo_app.target)

    def missing() -> None:
        with SyncAdminClient(demo_app.target, token="admin-token") as admin:
            admin.get_session("nope")

    with pytest.raises(RpcError) as raised:
        await asyncio.to_thread(missing)
    assert raised.value.code.name == "NOT_FOUND"
