"""Prometheus metrics over HTTP (server.metrics_listen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import httpx

from tests.conftest import make_config
from tests.support.grpcx import Stream, message


async def test_metrics_count_sessions_frames_and_turns(make_app: Any, tmp_path: Path) -> None:
    app = await make_app(make_config(tmp_path, server={"metrics_listen": "127.0.0.1:0"}))
    async with grpc.aio.insecure_channel(app.target) as channel:
        s = Stream(channel, "alice-token")
        await s.open()
        await s.send(message("hello"))
        await s.recv()
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")
        s.cancel()
    assert resp.status_code == 200
    lines = resp.text.splitlines()
    assert "talkwire_sessions_opened_total 1.0" in lines
    assert "talkwire_sessions_attached 1.0" in lines
    assert "talkwire_turn_seconds_count 1.0" in lines
    assert any(line.startswith("talkwire_frames_out_total ") for line in lines)
