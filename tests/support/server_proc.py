"""Run ``talkwire serve`` as a subprocess for fault tests.

``ServerProcess(config)`` writes ``config`` (a dict, the YAML file's content) to
a file with ``server.listen`` set to a free loopback port, starts
``talkwire serve --config FILE``, and waits for the ``talkwire serving on`` line.
The port is kept across :meth:`restart`, so clients reconnect to the same
target. :meth:`kill` is ``kill -9``; :meth:`terminate` is SIGTERM (graceful
drain) and returns the exit code. Every method is async and polls with
``asyncio.sleep``, so clients in the test's event loop keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import yaml

from tests.support.broker import free_port

__all__ = ["ServerError", "ServerProcess", "talkwire_binary"]

READY_LINE = "talkwire serving on"


class ServerError(RuntimeError):
    """The server did not start (or died) -- the message carries its output."""


def talkwire_binary() -> str:
    candidate = Path(sys.executable).with_name("talkwire")
    return str(candidate) if candidate.exists() else "talkwire"


class ServerProcess:
    """One ``talkwire serve`` subprocess on a fixed loopback port."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        port: int = 0,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        name: str = "talkwire",
    ) -> None:
        self.port = port or free_port()
        self.name = name
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="talkwire-proc-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{name}-{self.port}.yaml"
        self.log_path = self.workdir / f"{name}-{self.port}.log"
        self.env = env
        self.start_timeout = start_timeout
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0
        self.set_config(config)

    # -- properties --------------------------------------------------------

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def set_config(self, config: dict[str, Any]) -> None:
        raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
        raw.setdefault("server", {})["listen"] = self.target
        self.config = raw
        self.config_path.write_text(yaml.safe_dump(raw))

    def log_tail(self, limit: int = 6000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-limit:].decode(errors="replace")

    def log_text(self) -> str:
        """The whole log (all runs)."""
        return self.log_path.read_bytes().decode(errors="replace") if self.log_path.exists() else ""

    # -- /proc -----------------------------------------------------------------

    def open_fds(self) -> int:
        assert self.pid is not None
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        assert self.pid is not None
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def threads(self) -> int:
        assert self.pid is not None
        return len(os.listdir(f"/proc/{self.pid}/task"))

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start and wait until it prints its ready line; raise :class:`ServerError` if not."""
        if self.running:
            return
        last = ""
        for _attempt in range(3):  # the port may still be held briefly after a kill
            if await self._try_start():
                self.starts += 1
                return
            last = self.log_tail()
            await asyncio.sleep(0.5)
        raise ServerError(f"talkwire serve did not start on {self.target}; output:\n{last}")

    async def _try_start(self) -> bool:
        self._log = self.log_path.open("ab")
        self._log.write(f"\n==== start {time.strftime('%X')} ====\n".encode())
        self._log.flush()
        self._log_offset = self.log_path.stat().st_size
        env = dict(os.environ)
        env.update(self.env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = subprocess.Popen(
            [talkwire_binary(), "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reap()
                return False
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                if READY_LINE.encode() in f.read():
                    return True
            await asyncio.sleep(0.05)
        await self.kill()
        return False

    async def kill(self) -> None:
        """``kill -9``: no drain, no cleanup."""
        await self._signal(signal.SIGKILL, timeout=10.0)

    async def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain); wait for the exit (SIGKILL after ``timeout``)."""
        proc = self._proc
        if proc is None:
            return None
        await self._signal(signal.SIGTERM, timeout=timeout)
        return proc.returncode

    async def restart(self) -> None:
        """Kill -9 (if running) and start again on the same port and config."""
        await self.kill()
        await self.start()

    async def _signal(self, sig: int, *, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                while proc.poll() is None:
                    await asyncio.sleep(0.02)
        self._reap()

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()

    def __del__(self) -> None:  # pragma: no cover - best effort for crashed test runs
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                os.kill(proc.pid, signal.SIGKILL)
