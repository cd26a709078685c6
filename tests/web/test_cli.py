"""A bad ``web:`` section through the real console script: one line naming the key, exit 2."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.support.server_proc import talkwire_binary


def _serve(tmp_path: Path, web: str) -> tuple[int, list[str]]:
    config = tmp_path / "talkwire.yaml"
    config.write_text(
        "server: {listen: '127.0.0.1:0', handler: echo}\n"
        f"store: {{url: 'sqlite+aiosqlite:///{tmp_path}/s.db'}}\n"
        "auth: {kind: static, tokens: {t-123: {subject: ops}}}\n"
        f"web:\n{web}"
    )
    proc = subprocess.run(
        [talkwire_binary(), "serve", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


def test_bad_origin_names_the_key_and_line(tmp_path: Path) -> None:
    code, err = _serve(tmp_path, "  allowed_origins: [shop.example]\n")
    assert code == 2
    assert err == [
        f"talkwire: web.allowed_origins ({tmp_path / 'talkwire.yaml'}, line 5): "
        "expected scheme://host[:port], got 'shop.example'"
    ]


def test_taken_port_names_web_listen(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, err = _serve(tmp_path, f"  listen: 127.0.0.1:{port}\n")
    assert code == 2
    assert err[-1] == (
        f"talkwire: web.listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert len(err) == 1, err
