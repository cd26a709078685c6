"""A slow reader among hundreds of sessions.

One session (its own ChatClient, a tiny client buffer) stops reading while a
stream of large updates is published to it: the server must end its stream
with ``RESOURCE_EXHAUSTED`` (bounded queue + write timeout) rather than buffer
without limit; the client library resumes it; once the application reads again
it gets everything, once, in order. Meanwhile the other sessions keep
receiving their own load; their delivery p50/p99 is printed (not asserted:
timing thresholds are flaky in CI).
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import grpc
import pytest

from talkwire.clients import AdminClient
from talkwire.clients.chat import ConnectionEvent, ConnectionEventKind
from talkwire.v1 import chat_pb2
from tests.reliability.conftest import (
    ADMIN,
    ALICE,
    Producer,
    Reader,
    base_config,
    chat_client,
    open_subscribed,
    print_report,
    scale,
    sqlite_url,
    wait_caught_up,
)
from tests.support.grpcx import Stream
from tests.support.history import History
from tests.support.server_proc import ServerProcess


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def test_slow_reader_is_cut_off_and_resumes_while_others_keep_receiving(
    tmp_path: Path,
) -> None:
    sessions = scale(200, 800)
    n_keys = 10
    history = History()
    server = ServerProcess(
        base_config(sqlite_url(tmp_path / "s.db"), queue_size=32, write_timeout=1.0),
        workdir=tmp_path,
    )
    await server.start()
    keys = [f"account:{i}" for i in range(n_keys)]
    slow_events: list[ConnectionEvent] = []
    clients = [chat_client(server.target) for _ in range(4)]
    # auto_ack off: no client writes while stalled (see the xfail test below for why).
    slow_client = chat_client(
        server.target, max_buffered=2, auto_ack=False, on_connection_event=slow_events.append
    )
    readers: list[Reader] = []
    producers: list[Producer] = []
    try:
        for c in [*clients, slow_client]:
            await c.__aenter__()
        slow = await open_subscribed(slow_client, history, ["big"])
        readers = list(
            await asyncio.gather(
                *(
                    open_subscribed(clients[i % len(clients)], history, [keys[i % n_keys]])
                    for i in range(sessions)
                )
            )
        )
        # Baseline latency of the others, without the slow reader's load.
        normal = Producer(history, lambda: [server.target], keys, interval=0.05)
        producers.append(normal)
        for r in readers:
            r.sent_at = normal.sent_at
        await asyncio.sleep(2.0)
        baseline = [x for r in readers for x in r.latencies]
        for r in readers:
            r.latencies = []

        # The slow reader stops reading; large updates pile up for it.
        slow.gate = asyncio.Event()
        big = Producer(history, lambda: [server.target], ["big"], interval=0.0, text="x" * 60_000)
        producers.append(big)
        # The server cuts it off (its status waits behind the unread data on the wire).
        async with AdminClient(server.target, token=ADMIN) as admin:
            async with asyncio.timeout(scale(30, 120)):
                while (await admin.get_session(slow.sid)).attached:
                    await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        during = [x for r in readers for x in r.latencies]

        await big.stop()
        slow.gate.set()  # the application reads again: it sees the status, then resumes
        async with asyncio.timeout(30):
            while not any(e.kind == ConnectionEventKind.RESUMED for e in slow_events):
                await asyncio.sleep(0.05)
        drops = [e.code for e in slow_events if e.kind == ConnectionEventKind.DISCONNECTED]
        assert drops[0] == grpc.StatusCode.RESOURCE_EXHAUSTED, drops
        await normal.stop()
        report = await wait_caught_up(history, timeout=60)
        print_report(report, "slow-reader")
        print(
            f"slow-reader: others p50/p99 baseline={_pct(baseline, 0.5) * 1e3:.1f}/"
            f"{_pct(baseline, 0.99) * 1e3:.1f}ms during={_pct(during, 0.5) * 1e3:.1f}/"
            f"{_pct(during, 0.99) * 1e3:.1f}ms (n={len(during)}); slow reader: "
            f"big={big.published} reconnects={slow.session.reconnects} "
            f"codes={sorted({e.code.name for e in slow_events if e.code})}"
        )
        assert during, "the others received nothing while the slow reader was stuck"
        assert statistics.fmean(r.delivered for r in readers) > 0
        assert slow.delivered >= big.published
        assert not [r.error for r in [*readers, slow] if r.error]
        report.assert_clean()
    finally:
        for p in producers:
            await p.stop()
        for r in readers:
            await r.stop()
        for c in [*clients, slow_client]:
            await c.aclose()
        await server.kill()


@pytest.mark.xfail(
    strict=False,
    reason="a stalled client that writes (e.g. an ack) after the server cut it off sees "
    "INTERNAL 'Internal error from Core' instead of RESOURCE_EXHAUSTED (grpc-python client: "
    "aio/_call.py _write -> set_internal_error masks the server's status) and the frames "
    "already on the wire are discarded; nothing is lost (resume replays them). Timing-dependent.",
)
async def test_cut_off_slow_reader_that_keeps_acking_sees_resource_exhausted(
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        base_config(sqlite_url(tmp_path / "s.db"), queue_size=32, write_timeout=1.0),
        workdir=tmp_path,
    )
    await server.start()
    try:
        async with (
            AdminClient(server.target, token=ADMIN) as admin,
            grpc.aio.insecure_channel(server.target) as channel,
        ):
            stream = Stream(channel, ALICE)
            opened = await stream.open()
            await stream.send(
                chat_pb2.ConverseRequest(id="s", subscribe=chat_pb2.Subscribe(key="big"))
            )
            assert (await stream.recv()).subscription.active
            async with asyncio.timeout(30):
                while (await admin.get_session(opened.session_id)).attached:
                    await admin.publish(key="big", text="x" * 60_000)
            for _ in range(50):  # more committed frames behind the cut-off
                await admin.publish(key="big", text="x" * 60_000)
            code = grpc.StatusCode.OK
            read = 0
            try:
                while True:
                    frame = await stream.recv()
                    read += 1
                    if read % 16 == 0:  # what ChatClient's auto-ack does
                        await stream.send(chat_pb2.ConverseRequest(ack=chat_pb2.Ack(seq=frame.seq)))
            except EOFError as exc:
                code = await stream.call.code()
                print(f"cut-off reader: read {read} frames, then {exc}")
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.kill()
