"""The bare grpc.aio baseline: a minimal in-memory echo / push servicer.

It speaks the same contract as talkwire (``ChatService.Converse`` and
``AdminService.Publish``) with the same gRPC server options
(:func:`talkwire.server.app.server_options`), but keeps everything in memory:
no store, no auth, no rate limit, no turn worker. One reader task and one
writer loop (a bounded queue) per stream -- the least any push-capable
servicer needs. Optionally it consumes a Kafka topic (aiokafka) and pushes each
JSON event to the session subscribed to its key (the ``events`` scenario).

    python -m bench.baseline --listen 127.0.0.1:PORT [--kafka HOST:PORT --topic T]

Prints ``bare serving on HOST:PORT`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import uuid
from collections import defaultdict
from typing import Any

import grpc

from talkwire.server.app import server_options
from talkwire.server.config import load_config
from talkwire.v1 import admin_pb2, admin_pb2_grpc, chat_pb2, chat_pb2_grpc

_QUEUE = 256


class _Stream:
    __slots__ = ("queue", "seq", "session_id")

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.queue: asyncio.Queue[chat_pb2.ConverseResponse | None] = asyncio.Queue(_QUEUE)
        self.seq = 0

    def push(self, frame: chat_pb2.ConverseResponse) -> None:
        self.seq += 1
        frame.seq = self.seq
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            pass


class Hub:
    def __init__(self) -> None:
        self.streams: dict[str, _Stream] = {}
        self.subs: dict[str, set[str]] = defaultdict(set)

    def publish_key(self, key: str, update: chat_pb2.Update) -> int:
        n = 0
        for sid in self.subs.get(key, ()):
            st = self.streams.get(sid)
            if st is not None:
                frame = chat_pb2.ConverseResponse()
                frame.update.CopyFrom(update)
                st.push(frame)
                n += 1
        return n


class Chat(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def Converse(self, request_iterator: Any, context: Any) -> None:
        first = await anext(request_iterator)
        op = first.open
        sid = op.session_id or uuid.uuid4().hex
        st = _Stream(sid)
        if op.session_id:
            st.seq = op.last_seq
        old = self.hub.streams.get(sid)
        if old is not None:
            old.queue.put_nowait(None) if not old.queue.full() else None
        self.hub.streams[sid] = st
        opened = chat_pb2.ConverseResponse(in_reply_to=first.id)
        opened.opened.session_id = sid
        opened.opened.resume_token = "t"
        opened.opened.resumed = bool(op.session_id)
        await context.write(opened)

        async def reader() -> None:
            async for req in request_iterator:
                kind = req.WhichOneof("frame")
                out = chat_pb2.ConverseResponse(in_reply_to=req.id)
                if kind == "message":
                    out.reply.text = req.message.text
                    st.push(out)
                elif kind == "subscribe":
                    self.hub.subs[req.subscribe.key].add(sid)
                    out.subscription.key = req.subscribe.key
                    out.subscription.active = True
                    st.push(out)
                elif kind == "ping":
                    out.pong.data = req.ping.data
                    st.queue.put_nowait(out)
            st.queue.put_nowait(None)

        task = asyncio.create_task(reader())
        try:
            while True:
                frame = await st.queue.get()
                if frame is None:
                    break
                await context.write(frame)
        finally:
            task.cancel()
            if self.hub.streams.get(sid) is st:
                del self.hub.streams[sid]


class Admin(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def Publish(self, request: Any, context: Any) -> admin_pb2.PublishResponse:
        ev = request.event
        update = chat_pb2.Update(
            event_id=ev.id or uuid.uuid4().hex, key=request.key, type=ev.type, text=ev.text
        )
        if ev.HasField("occurred_at"):
            update.occurred_at.CopyFrom(ev.occurred_at)
        n = self.hub.publish_key(request.key, update)
        return admin_pb2.PublishResponse(event_id=update.event_id, delivered=n)


async def _kafka(hub: Hub, bootstrap: str, topic: str) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="bench-bare",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in batch.values():
                for rec in records:
                    doc = json.loads(rec.value)
                    update = chat_pb2.Update(
                        event_id=doc.get("id", ""), type=doc.get("type", ""), text="changed"
                    )
                    key = f"order:{doc['after']['id']}"
                    update.key = key
                    update.occurred_at.FromJsonString(doc["occurred_at"])
                    hub.publish_key(key, update)
            if batch:
                await consumer.commit()
    finally:
        await consumer.stop()


async def serve(listen: str, kafka: str | None, topic: str | None) -> None:
    config = load_config(None, env={}, overrides={"server": {"listen": listen}, "demo": False})
    hub = Hub()
    server = grpc.aio.server(options=server_options(config))
    chat_pb2_grpc.add_ChatServiceServicer_to_server(Chat(hub), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(Admin(hub), server)
    port = server.add_insecure_port(listen)
    await server.start()
    tasks = []
    if kafka and topic:
        tasks.append(asyncio.create_task(_kafka(hub, kafka, topic)))
    host = listen.rsplit(":", 1)[0]
    print(f"bare serving on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await server.stop(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description="bare grpc.aio baseline servicer")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--kafka")
    parser.add_argument("--topic")
    parser.add_argument("--gc-freeze", action="store_true")
    args = parser.parse_args()
    if args.gc_freeze:
        gc.freeze()
    asyncio.run(serve(args.listen, args.kafka, args.topic))


if __name__ == "__main__":
    main()
