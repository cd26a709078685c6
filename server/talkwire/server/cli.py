"""The ``talkwire`` command: serve, demo, db upgrade, config check, the client commands and
``connectors inspect``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from talkwire.server.config import Config, load_config
from talkwire.server.demo.events import DEMO_INTERVAL
from talkwire.server.errors import ConfigError, TalkwireError

if TYPE_CHECKING:
    from talkwire.server.app import Application

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


async def serve(
    config: Config,
    *,
    ready: asyncio.Event | None = None,
    announce: Callable[[Application], None] | None = None,
) -> None:
    """Run one replica until SIGTERM or SIGINT, then drain gracefully.

    ``announce`` is called with the running application once the server serves.
    """
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
        if announce is not None:
            announce(app)
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


async def _demo(path: str | None, overrides: dict[str, Any], events: bool, interval: float) -> None:
    """The demo bot; with ``events``, also the broker, the CDC feed and the warehouse."""
    from talkwire.server.demo import crm_path
    from talkwire.server.demo.banner import DemoAddresses, demo_banner

    overrides = {**overrides, "demo": True}
    config = load_config(path, overrides=overrides)
    if not config.web:  # the demo serves its web page unless the config says otherwise
        overrides["web"] = {"listen": DEMO_WEB_LISTEN}
        config = load_config(path, overrides=overrides)
    crm = crm_path(config)
    program = _program()

    def banner(app: Application, addresses: DemoAddresses) -> None:
        web = f"{app.web.url}/  (the chat widget)" if app.web is not None else None
        _say(demo_banner(dataclasses.replace(addresses, grpc=app.target, web=web)))

    if not events:
        await serve(
            config, announce=lambda app: banner(app, DemoAddresses("", crm, program=program))
        )
        return
    from talkwire.server.demo.cdc import CDC_TABLES, topic_for
    from talkwire.server.demo.events import demo_events, demo_events_config

    async with demo_events(crm, interval=interval) as bootstrap:
        config = load_config(path, overrides={**overrides, "events": demo_events_config(bootstrap)})
        addresses = DemoAddresses(
            grpc="",
            crm=crm,
            bootstrap=bootstrap,
            topics=tuple(topic_for(t) for t in CDC_TABLES),
            interval=interval,
            program=program,
        )
        await serve(config, announce=lambda app: banner(app, addresses))


DEMO_WEB_LISTEN = "127.0.0.1:8080"


def _program() -> str:
    """``talkwire`` if that is this script on PATH, else the path it was started as."""
    on_path = shutil.which("talkwire")
    me = Path(sys.argv[0])
    if me.name == "talkwire" and (on_path is None or Path(on_path).resolve() != me.resolve()):
        return str(me)
    return "talkwire"


def _say(text: str) -> None:
    print(text, flush=True)


async def _db_upgrade(config: Config) -> None:
    from talkwire.server.app import _ensure_sqlite_dir
    from talkwire.server.store import SessionStore

    _ensure_sqlite_dir(config.store.url)
    async with SessionStore(config.store.url) as store:
        version = await store.upgrade()
    print(f"schema is at version {version} ({store.dialect})")


def _config_check(config: Config, show: bool) -> None:
    from talkwire.server.configcheck import check_config, effective_config

    check_config(config)
    if show:
        print(yaml.safe_dump(effective_config(config), sort_keys=False), end="")
    else:
        print(f"config ok: {config.source}")


def _version() -> str:
    try:
        return metadata.version("talkwire")
    except metadata.PackageNotFoundError:
        return "unknown"


DESCRIPTION = """\
talkwire: a gRPC orchestration core linking live chat sessions to live business data.

Server commands: serve, demo, db upgrade, config check. Client commands: chat,
sessions, connectors, emit. Global options may be given before or after the
command. Run "talkwire COMMAND --help" for the options of one command."""

EPILOG = """\
examples:
  talkwire demo                           the demo bot with live pushes (pip install -e '.[demo]')
  talkwire chat                           talk to it (in another terminal)
  talkwire serve --config talkwire.yaml   run a server from a config file
  talkwire config check --print           validate the config; print it with secrets masked
  talkwire db upgrade --config talkwire.yaml
  talkwire serve --log-level debug --log-format json"""

_SERVE_EPILOG = """\
examples:
  talkwire serve                                  the embedded demo default on 127.0.0.1:50051
  talkwire serve --config talkwire.yaml
  TALKWIRE_SERVER__GRACE_PERIOD=5 talkwire serve --listen 0.0.0.0:50051"""

_DEMO_EPILOG = """\
examples:
  talkwire demo                      server, broker, CDC feed and warehouse; then: talkwire chat
  talkwire demo --listen 127.0.0.1:50061 --interval 10
  talkwire demo --no-events          the demo bot only (no broker needed)"""

_CONFIG_EPILOG = """\
examples:
  talkwire config check                       validate the embedded default (or TALKWIRE_CONFIG)
  talkwire config check --config talkwire.yaml --print
exit status: 0 valid, 2 invalid (one line on stderr naming the key)"""

_DB_EPILOG = """\
examples:
  talkwire db upgrade --config talkwire.yaml
  TALKWIRE_STORE_URL=postgresql+asyncpg://talkwire@db/talkwire talkwire db upgrade"""


def _global_options(parser: argparse.ArgumentParser, *, top: bool, config: bool) -> None:
    """``--log-level``, ``--log-format`` (and ``--config``), on the top parser and each command.

    On a command's parser the defaults are suppressed, so an option given before
    the command is not reset by the command's parser.
    """

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    have = parser._option_string_actions  # argparse has no public "has option" query
    if "--log-level" not in have:
        group.add_argument(
            "--log-level",
            default=default("info"),
            metavar="LEVEL",
            help=f"log level: {', '.join(_LOG_LEVELS)} (default: info)",
        )
    if "--log-format" not in have:
        group.add_argument(
            "--log-format",
            choices=("text", "json"),
            default=default("text"),
            help="log lines as text or as one JSON object each (default: text)",
        )
    if config and "--config" not in have:
        group.add_argument(
            "--config",
            default=default(None),
            metavar="FILE",
            help="YAML config file (env TALKWIRE_CONFIG; none: the embedded demo default)",
        )


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command parser below ``parser``, nested ones included."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:  # argparse keeps sub-commands only there
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_subparsers(child)]
    return found


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str, epilog: str
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_,
        description=help_[0].upper() + help_[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _server_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_serve = _command(
        sub, "serve", "run the server (the embedded demo default without a config)", _SERVE_EPILOG
    )
    p_serve.add_argument(
        "--listen", metavar="HOST:PORT", help="gRPC address (env TALKWIRE_LISTEN; server.listen)"
    )

    p_demo = _command(
        sub,
        "demo",
        "the demo bot with live pushes: a local Kafka broker, a CDC feed of the demo CRM "
        "and a warehouse that moves orders along",
        _DEMO_EPILOG,
    )
    p_demo.add_argument(
        "--no-events", action="store_true", help="no broker, no CDC feed, no warehouse"
    )
    p_demo.add_argument(
        "--listen", metavar="HOST:PORT", help="gRPC address (default 127.0.0.1:50051)"
    )
    p_demo.add_argument(
        "--interval",
        type=float,
        default=DEMO_INTERVAL,
        metavar="SECONDS",
        help="seconds between two steps of the demo warehouse (default %(default)s)",
    )

    p_db = _command(
        sub, "db", "session store maintenance: create or upgrade the schema", _DB_EPILOG
    )
    p_db.add_argument("action", choices=("upgrade",), help="upgrade: create or migrate the tables")

    p_config = _command(
        sub,
        "config",
        "check a configuration: validate it, print it with secrets masked",
        _CONFIG_EPILOG,
    )
    config_sub = p_config.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    p_check = _command(
        config_sub, "check", "validate the whole configuration without serving", _CONFIG_EPILOG
    )
    p_check.add_argument(
        "--print",
        dest="show",
        action="store_true",
        help="print the effective configuration as YAML (defaults and env applied, secrets masked)",
    )


_SERVER_COMMANDS = ("serve", "demo", "db", "config")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="talkwire",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"talkwire {_version()}")
    _global_options(parser, top=True, config=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _server_commands(sub)

    from talkwire.clients.cli import add_client_commands
    from talkwire.clients.emit import add_emit_command
    from talkwire.server.inspect import add_inspect_command

    add_inspect_command(add_client_commands(sub))
    add_emit_command(sub)
    for name, child in sub.choices.items():
        server = name in _SERVER_COMMANDS
        for p in [child, *_subparsers(child)]:
            _global_options(p, top=False, config=server)
    return parser


def _run_server_command(args: argparse.Namespace) -> None:
    listen = getattr(args, "listen", None)
    overrides: dict[str, Any] = {"server": {"listen": listen}} if listen else {}
    if args.command == "demo":
        asyncio.run(_demo(args.config, overrides, not args.no_events, args.interval))
        return
    config = load_config(args.config, overrides=overrides)
    if args.command == "serve":
        asyncio.run(serve(config))
    elif args.command == "db":
        asyncio.run(_db_upgrade(config))
    else:
        _config_check(config, args.show)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``talkwire`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _setup_logging(args.log_level, args.log_format)
        if args.command in _SERVER_COMMANDS:
            _run_server_command(args)
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
