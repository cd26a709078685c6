"""Shared plumbing: server processes, client worker processes, statistics, progress."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
_PROFILES = 0
_T0 = time.monotonic()


def progress(msg: str) -> None:
    print(f"  [{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- statistics -----------------------------------------------------------------


def pct(samples: Sequence[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max (same unit as the samples) and count."""
    s = sorted(samples)
    if not s:
        return {"n": 0}
    return {
        "n": len(s),
        "p50": pct(s, 0.5),
        "p90": pct(s, 0.9),
        "p99": pct(s, 0.99),
        "max": s[-1],
        "mean": sum(s) / len(s),
    }


# -- servers --------------------------------------------------------------------


def ours_config(tmp: Path, port: int, **extra: Any) -> dict[str, Any]:
    """Our server: echo handler, auth none, a fresh SQLite store, bench-friendly limits.

    The per-stream frame rate limit (50/s default) is raised: the benchmarks send
    faster than a human on purpose.
    """
    cfg: dict[str, Any] = {
        "server": {
            "listen": f"127.0.0.1:{port}",
            "handler": "echo",
            "frames_per_second": 1_000_000.0,
            "frame_burst": 1_000_000,
            "sweep_interval": 3600.0,
            "grace_period": 1.0,
        },
        "store": {"url": f"sqlite+aiosqlite:///{tmp / 'bench.db'}"},
        "auth": {"kind": "none"},
        "policy": {"default": "allow"},
        "demo": False,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


# -- the store of OUR server -----------------------------------------------------

STORE_ENV = "BENCH_STORE"
"""A store URL for OUR server (``--store``); unset: a fresh SQLite file per server."""


async def _admin(url: str, sql: str) -> None:
    import sqlalchemy as sa

    u = sa.make_url(url)
    if u.get_backend_name() == "postgresql":
        import asyncpg

        dsn = u.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)  # a ?host=/socket/dir URL too
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
        return
    import asyncmy

    conn = await asyncmy.connect(
        user=u.username or "root",
        password=u.password or "",
        host=u.host or "127.0.0.1",
        port=u.port or 3306,
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


def throwaway_store(url: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on ``url``'s server: ``(its URL, drop)``. SQLite URLs are used as given."""
    import secrets

    import sqlalchemy as sa

    u = sa.make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return url, lambda: None
    name = f"talkwire_bench_{secrets.token_hex(4)}"
    if backend == "postgresql":
        create, drop = f'CREATE DATABASE "{name}"', f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    else:
        create, drop = (
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4",
            f"DROP DATABASE IF EXISTS `{name}`",
        )
    asyncio.run(_admin(url, create))
    # e.g. BENCH_PG_SETTINGS="synchronous_commit=off": that database's own defaults only
    for setting in filter(None, os.environ.get("BENCH_PG_SETTINGS", "").split(",")):
        if backend == "postgresql":
            key, _, value = setting.partition("=")
            asyncio.run(_admin(url, f'ALTER DATABASE "{name}" SET {key.strip()} = {value.strip()}'))
    fresh = u.set(database=name).render_as_string(hide_password=False)
    return fresh, lambda: asyncio.run(_admin(url, drop))


@dataclass
class Server:
    kind: str  # "ours" | "bare"
    proc: subprocess.Popen[bytes]
    target: str
    tmp: tempfile.TemporaryDirectory[str] | None = None
    ps: psutil.Process = field(init=False)
    log: Path | None = None
    profiler: subprocess.Popen[bytes] | None = None
    cleanup: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.profiler.wait(30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.tmp is not None:
            self.tmp.cleanup()
        if self.cleanup is not None:
            self.cleanup()
            self.cleanup = None


def _wait_ready(proc: subprocess.Popen[bytes], marker: str, timeout: float, log: Path) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            chunk = os.read(proc.stdout.fileno(), 65536)
        except BlockingIOError:
            chunk = b""
        if chunk:
            buf += chunk.decode(errors="replace")
            for line in buf.splitlines():
                if marker in line:
                    return line.split(marker, 1)[1].strip()
        time.sleep(0.05)
    proc.kill()
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"server did not become ready (exit {proc.poll()}):\n{tail}")


def start_server(
    kind: str,
    *,
    config_extra: dict[str, Any] | None = None,
    bare_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> Server:
    """Start our server (``talkwire serve``) or the bare baseline in its own process."""
    raise_fd_limit()  # inherited by the child
    port = free_port()
    tmpdir = tempfile.TemporaryDirectory(prefix=f"tw-bench-{kind}-")
    tmp = Path(tmpdir.name)
    log = tmp / "server.log"
    drop: Callable[[], None] | None = None
    if kind == "ours":
        extra = dict(config_extra or {})
        store = os.environ.get(STORE_ENV)
        if store and "url" not in extra.get("store", {}):
            url, drop = throwaway_store(store)
            extra["store"] = {**extra.get("store", {}), "url": url}
        cfg = ours_config(tmp, port, **extra)
        cfg_file = tmp / "config.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        exe = Path(sys.executable).with_name("talkwire")
        cmd = [str(exe), "--log-level", "warning", "serve", "--config", str(cfg_file)]
        marker = "talkwire serving on"
    else:
        cmd = [sys.executable, "-m", "bench.baseline", "--listen", f"127.0.0.1:{port}", *bare_args]
        marker = "bare serving on"
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        cwd=tmp,
        env=env,
    )
    try:
        target = _wait_ready(proc, marker, timeout, log)
    except BaseException:
        if drop is not None:
            drop()
        raise
    srv = Server(kind, proc, target, tmpdir, log=log, cleanup=drop)
    try:
        prof_dir = os.environ.get("BENCH_PROFILE")  # e.g. BENCH_PROFILE=bench/results/profiles
        if prof_dir and kind == os.environ.get("BENCH_PROFILE_KIND", "ours"):
            Path(prof_dir).mkdir(parents=True, exist_ok=True)
            global _PROFILES
            _PROFILES += 1
            out = (
                Path(prof_dir).resolve()
                / f"{os.environ.get('BENCH_SCENARIO', 'bench')}-{kind}-{_PROFILES}.txt"
            )
            spy = Path(sys.executable).with_name("py-spy")
            srv.profiler = subprocess.Popen(
                [
                    str(spy),
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            progress(f"profiling {kind} server with py-spy -> {out}")
    except BaseException:  # e.g. py-spy missing: stop the server, drop its database
        srv.stop()
        raise
    return srv


@contextlib.contextmanager
def server(kind: str, **kwargs: Any) -> Iterator[Server]:
    srv = start_server(kind, **kwargs)
    try:
        yield srv
    finally:
        srv.stop()


# -- client worker processes ----------------------------------------------------


def _worker_entry(conn: Any, fn_path: str, kwargs: dict[str, Any]) -> None:
    import importlib

    raise_fd_limit()
    module, name = fn_path.rsplit(":", 1)
    fn = getattr(importlib.import_module(module), name)
    try:
        asyncio.run(fn(Pipe(conn), **kwargs))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class Pipe:
    """The worker's end: async recv of orchestrator commands, sync send."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def send(self, *msg: Any) -> None:
        self.conn.send(msg)

    async def recv(self) -> Any:
        loop = asyncio.get_running_loop()
        while not self.conn.poll():
            await asyncio.sleep(0.005)
        return await loop.run_in_executor(None, self.conn.recv)


class Workers:
    """N client processes running ``fn_path`` (``module:coroutine``)."""

    def __init__(self, fn_path: str, kwargs_list: list[dict[str, Any]]) -> None:
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for kwargs in kwargs_list:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_entry, args=(child, fn_path, kwargs), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def gather(
        self, expect: str, timeout: float, on_progress: Callable[[list[Any]], None] | None = None
    ) -> list[Any]:
        """Wait for one ``(expect, payload)`` message from every worker."""
        out: list[Any] = [None] * len(self.conns)
        got = [False] * len(self.conns)
        deadline = time.monotonic() + timeout
        while not all(got):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not report {expect!r} within {timeout:.0f}s")
            for i, c in enumerate(self.conns):
                if got[i]:
                    continue
                if c.poll(0.02):
                    msg = c.recv()
                    if msg[0] == "error":
                        raise RuntimeError(f"client worker {i} failed: {msg[1]}")
                    if msg[0] == "progress":
                        if on_progress:
                            on_progress([i, *msg[1:]])
                        continue
                    if msg[0] != expect:
                        raise RuntimeError(f"worker {i}: expected {expect!r}, got {msg[0]!r}")
                    out[i] = msg[1] if len(msg) > 1 else None
                    got[i] = True
                elif not self.procs[i].is_alive():
                    raise RuntimeError(f"client worker {i} died (exit {self.procs[i].exitcode})")
        return out

    def send(self, *msg: Any) -> None:
        for c in self.conns:
            c.send(msg)

    def close(self) -> None:
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(2)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
