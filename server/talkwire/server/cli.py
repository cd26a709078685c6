"""The ``talkwire`` command: ``serve``, ``demo``, ``db upgrade``, the client commands and
``connectors inspect``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from talkwire.server.config import Config, load_config
from talkwire.server.errors import ConfigError, TalkwireError

__all__ = ["main", "serve"]

log = logging.getLogger("talkwire")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _setup_logging(level: str, fmt: str) -> None:
    if level.lower() not in _LOG_LEVELS:
        raise ConfigError(f"--log-level: unknown level {level!r} (one of {', '.join(_LOG_LEVELS)})")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Per-request client logs would drown the server's own; raise them explicitly if wanted.
    for noisy in ("httpx", "httpcore", "aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run one replica until SIGTERM or SIGINT, then drain gracefully."""
    from talkwire.server.app import Application

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Application(config) as app:
        # Everything allocated at start-up lives for the whole process: keep it out of
        # the collector's generations, so full collections stay short with many streams.
        gc.collect()
        gc.freeze()
        print(f"talkwire serving on {app.target}", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info(
            "shutting down: readiness off for %ss, then turns get up to %ss",
            config.server.drain_delay,
            config.server.grace_period,
        )
        await app.drain()
    log.info("shutdown complete")


async def _demo(config: Config, events: bool) -> None:
    if not events:
        await serve(config)
        return
    from talkwire.server.demo.events import demo_events, demo_events_config

    async with demo_events() as bootstrap:
        listen = {"server": {"listen": config.server.listen}}
        await serve(
            load_config(None, overrides={"events": demo_events_config(bootstrap), **listen})
        )


async def _db_upgrade(config: Config) -> None:
    from talkwire.server.app import _ensure_sqlite_dir
    from talkwire.server.store import SessionStore

    _ensure_sqlite_dir(config.store.url)
    async with SessionStore(config.store.url) as store:
        version = await store.upgrade()
    print(f"schema is at version {version} ({store.dialect})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="talkwire", description=__doc__)
    parser.add_argument("--log-level", default="info", help=", ".join(_LOG_LEVELS))
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the server (embedded demo default with no config)")
    p_serve.add_argument("--config", help="YAML config file (also TALKWIRE_CONFIG)")
    p_serve.add_argument("--listen", help="HOST:PORT (also TALKWIRE_LISTEN)")

    p_demo = sub.add_parser(
        "demo", help="the demo bot plus a local Kafka broker and a producer of order changes"
    )
    p_demo.add_argument("--no-events", action="store_true", help="no broker, no producer")
    p_demo.add_argument("--listen", help="HOST:PORT")

    p_db = sub.add_parser("db", help="session store maintenance")
    p_db.add_argument("action", choices=("upgrade",))
    p_db.add_argument("--config")

    from talkwire.clients.cli import add_client_commands
    from talkwire.clients.emit import add_emit_command
    from talkwire.server.inspect import add_inspect_command

    add_inspect_command(add_client_commands(sub))
    add_emit_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``talkwire`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _setup_logging(args.log_level, args.log_format)
        if args.command in ("serve", "demo", "db"):
            overrides = {"server": {"listen": args.listen}} if getattr(args, "listen", None) else {}
            config = load_config(getattr(args, "config", None), overrides=overrides)
            if args.command == "serve":
                asyncio.run(serve(config))
            elif args.command == "demo":
                asyncio.run(_demo(config, events=not args.no_events))
            else:
                asyncio.run(_db_upgrade(config))
            return 0
        handler = args.handler
        result = handler(args)
        return int(result or 0)
    except (TalkwireError, ConfigError) as exc:
        print(f"talkwire: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
