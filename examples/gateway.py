"""A minimal channel gateway: one talkwire session per end user, updates pushed live.

Run the server (``talkwire serve``), then ``python examples/gateway.py``. It opens a
session, asks about an order (which subscribes the session to ``order:1001``),
publishes an update to that key the way a backend would (``AdminService.Publish``;
the demo runs with the development authenticator, which has the admin role) and
prints what the end user would see.
"""

from __future__ import annotations

import argparse
import asyncio

from talkwire.clients import AdminClient, ChatClient


def show(frame: object) -> str:
    kind = frame.WhichOneof("frame")  # type: ignore[attr-defined]
    body = getattr(frame, kind)
    text = getattr(body, "text", "") or getattr(body, "key", "")
    return f"[seq {frame.seq}] {kind}: {text}"  # type: ignore[attr-defined]


async def main(target: str) -> None:
    async with ChatClient(target) as chat, AdminClient(target) as admin:
        session = await chat.open(channel="example-gateway")
        await session.send("where is my order 1001")
        while (frame := await session.next_frame(timeout=10)).WhichOneof("frame") != "reply":
            print(show(frame))
        print(show(frame))
        await admin.publish(key="order:1001", text="Your order 1001 is out for delivery")
        print(show(await session.next_frame(timeout=10)))
        await session.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051")
    asyncio.run(main(parser.parse_args().target))
