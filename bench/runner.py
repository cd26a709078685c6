"""``python -m bench [scenario ...] [--quick] [--replicas N] [--store URL] [--out DIR]``: run scenarios, print the table."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from bench.common import STORE_ENV, progress, raise_fd_limit
from bench.report import Result, table, write
from bench.scenarios import SCENARIOS


def machine() -> dict[str, object]:
    import grpc
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "loadavg_start": os.getloadavg(),
    }


def _redacted(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: a few seconds per scenario"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="run OUR server as N replicas on PostgreSQL + Redis + one consumer group "
        "(scenarios that support it: events; default 1)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        default=os.environ.get(STORE_ENV),
        help="OUR server's store: a database server URL (a throwaway database is created on "
        "it per server and dropped after), e.g. postgresql+asyncpg://postgres@127.0.0.1/test "
        f"(default: ${STORE_ENV}, else a fresh SQLite file)",
    )
    parser.add_argument("--out", default="bench/results", help="results folder (JSON + PNG)")
    args = parser.parse_args(argv)
    if args.store:
        os.environ[STORE_ENV] = args.store  # read by bench.common.start_server
    if args.replicas < 1:
        parser.error("--replicas must be >= 1")
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    raise_fd_limit()
    meta = machine()
    meta["quick"] = args.quick
    meta["replicas"] = args.replicas
    meta["store"] = _redacted(args.store) if args.store else "sqlite"
    results: list[Result] = []
    failed = False
    for name in names:
        progress(f"== {name}{' (quick)' if args.quick else ''}")
        start = time.monotonic()
        os.environ["BENCH_SCENARIO"] = name
        try:
            mod = importlib.import_module(f"bench.scenarios.{name}")
            if "replicas" in inspect.signature(mod.run).parameters:
                res = mod.run(args.quick, replicas=args.replicas)
            else:
                if args.replicas > 1:
                    progress(f"{name}: one replica (--replicas applies to: events)")
                res = mod.run(args.quick)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other scenarios
            traceback.print_exc()
            res = Result(
                name,
                skipped=f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            )
            failed = True
        res.seconds = round(time.monotonic() - start, 1)
        progress(f"== {name} done in {res.seconds}s")
        results.append(res)
    meta["loadavg_end"] = os.getloadavg()
    text = table(results)
    print()
    print(
        f"machine: {meta['cpu']}, {meta['cores']} cores, {meta['ram_gib']} GiB, "
        f"Python {meta['python']}, grpcio {meta['grpcio']}, store {meta['store']}"
    )
    print(text)
    paths = write(results, Path(args.out), meta)
    print(f"\nresults: {len(paths)} files under {args.out}/", file=sys.stderr)
    return 1 if failed else 0
