"""``talkwire emit``: produce change events to Kafka, or push them via ``AdminService.Publish``.

One event from the flags (``--type`` given), or one event per line of stdin
(no ``--type``): each line a JSON object in the ``ChangeEvent`` JSON shape
(``type``, ``keys``, ``op``, ``after``, ``before``, ``text``, ``id``,
``source``, ``occurred_at``, ``attributes``), the flags supplying what a line
leaves out. The default ``--format`` is ``json``, the format of the README's
and the demo's topics; a topic configured ``format: protobuf`` needs
``--format protobuf`` (a record in the wrong format is dead-lettered by the
server).

Exit codes: 0 every event was sent; 2 bad arguments or a refused stdin line
(one line naming it on stderr; the other lines are still sent); 1 the broker or
server cannot be reached. Never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TextIO

from talkwire.clients.cliutil import add_connection_flags, credentials, quiet_broken_pipe
from talkwire.clients.events import EventProducer, build_event
from talkwire.v1 import events_pb2

__all__ = ["add_emit_command", "emit_command", "event_from_line"]

_EXAMPLES = """\
examples:
  talkwire emit --bootstrap 127.0.0.1:9092 --topic erp.orders \\
      --type order.status_changed --key order:1001 --after '{"id": 1001, "status": "shipped"}'
  printf '%s\\n' '{"type": "order.status_changed", "keys": ["order:1001"],
      "after": {"id": 1001, "status": "delivered"}}' | talkwire emit --topic erp.orders
  talkwire emit --via-admin --token "$ADMIN_TOKEN" --type note --key order:1001 --text hi
"""

_LINE_FIELDS = frozenset(
    {"id", "source", "type", "keys", "op", "before", "after", "text", "occurred_at", "attributes"}
)


def add_emit_command(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Register ``emit`` on ``subparsers``; the parser's ``func(args) -> int`` runs it."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "emit",
        help="produce change events (Kafka, or AdminService.Publish with --via-admin)",
        description="Produce one change event from the flags, or (without --type) one per "
        "line of stdin, each a JSON object shaped like a ChangeEvent; flags fill in what a "
        "line leaves out.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kafka = p.add_argument_group("kafka")
    kafka.add_argument(
        "--bootstrap",
        default=os.environ.get("TALKWIRE_KAFKA_BOOTSTRAP", ""),
        metavar="HOST:PORT",
        help="Kafka bootstrap servers, comma separated (env TALKWIRE_KAFKA_BOOTSTRAP)",
    )
    kafka.add_argument(
        "--topic",
        default=os.environ.get("TALKWIRE_EVENTS_TOPIC", ""),
        help="topic to produce to (env TALKWIRE_EVENTS_TOPIC)",
    )
    kafka.add_argument(
        "--format",
        choices=["json", "protobuf", "cloudevents"],
        default="json",
        help="record format; must match the topic's format in the server config "
        "(default %(default)s)",
    )
    kafka.add_argument(
        "--traceparent", default=None, help="W3C traceparent header to send with the records"
    )
    event = p.add_argument_group("event (defaults for stdin lines)")
    event.add_argument(
        "--type", help="event type, e.g. order.status_changed (without it: read stdin)"
    )
    event.add_argument(
        "--key", action="append", default=[], help="subscription key, e.g. order:1001 (repeat)"
    )
    event.add_argument(
        "--op",
        choices=["create", "update", "delete", "snapshot"],
        default="update",
        help="change operation (default %(default)s)",
    )
    event.add_argument("--after", default=None, help="JSON object: the record after the change")
    event.add_argument("--before", default=None, help="JSON object: the record before it")
    event.add_argument(
        "--source", default="talkwire.emit", help="event source (default %(default)s)"
    )
    event.add_argument("--id", default=None, help="event id (default: a new UUID per event)")
    event.add_argument("--text", default="", help="text shown to the user")
    p.add_argument(
        "--via-admin",
        action="store_true",
        help="publish through the server's AdminService.Publish (admin role) instead of Kafka",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on the broker or server after this long (default %(default)s)",
    )
    add_connection_flags(p)
    p.set_defaults(func=emit_command, handler=emit_command)
    return p


class _UsageError(Exception):
    pass


def _object(name: str, raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _UsageError(f"--{name}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise _UsageError(f"--{name}: expected a JSON object")
    return value


def _flag_event(args: argparse.Namespace) -> events_pb2.ChangeEvent:
    if not args.key:
        raise _UsageError("--key: at least one subscription key is required")
    return build_event(
        args.type,
        list(args.key),
        after=_object("after", args.after),
        before=_object("before", args.before),
        op=args.op,
        source=args.source,
        id=args.id,
        text=args.text,
    )


def event_from_line(line: str, defaults: argparse.Namespace) -> events_pb2.ChangeEvent:
    """One stdin line (a ChangeEvent-shaped JSON object) as an event; ``ValueError`` if bad."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(data) - _LINE_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    keys = data.get("keys", defaults.key)
    keys = [keys] if isinstance(keys, str) else keys
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ValueError("keys: a list of subscription keys is required (or --key)")
    kind = data.get("type", defaults.type)
    if not isinstance(kind, str) or not kind:
        raise ValueError("type: required (or --type)")
    for name in ("after", "before", "attributes"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise ValueError(f"{name}: expected a JSON object")
    event = build_event(
        kind,
        keys,
        after=data.get("after"),
        before=data.get("before"),
        op=str(data.get("op", defaults.op)),
        source=str(data.get("source", defaults.source)),
        id=str(data["id"]) if data.get("id") else None,
        text=str(data.get("text", defaults.text)),
        attributes={str(k): str(v) for k, v in (data.get("attributes") or {}).items()},
    )
    if data.get("occurred_at"):
        event.occurred_at.FromJsonString(str(data["occurred_at"]))
    return event


async def _stdin_events(
    stdin: TextIO, args: argparse.Namespace, refused: list[str]
) -> AsyncIterator[events_pb2.ChangeEvent]:
    number = 0
    while line := await asyncio.to_thread(stdin.readline):  # the loop keeps the producer alive
        number += 1
        if not line.strip():
            continue
        try:
            yield event_from_line(line, args)
        except ValueError as exc:
            refused.append(f"stdin line {number}: {exc}")
            print(f"talkwire emit: stdin line {number}: {exc}", file=sys.stderr, flush=True)


async def _one(event: events_pb2.ChangeEvent) -> AsyncIterator[events_pb2.ChangeEvent]:
    yield event


def _kafka_ssl(args: argparse.Namespace) -> dict[str, Any]:
    if not (args.tls or args.ca_file or args.cert_file):
        return {}
    from aiokafka.helpers import create_ssl_context

    context = create_ssl_context(
        cafile=args.ca_file, certfile=args.cert_file, keyfile=args.key_file
    )
    return {"security_protocol": "SSL", "ssl_context": context}


@asynccontextmanager
async def _sender(args: argparse.Namespace) -> AsyncIterator[Any]:
    """An async ``send(event) -> str`` for the chosen transport."""
    if args.via_admin:
        from talkwire.clients.admin import AdminClient

        admin = AdminClient(
            args.target, token=args.token, credentials=credentials(args), timeout=args.timeout
        )

        async def publish(event: events_pb2.ChangeEvent) -> str:
            resp = await admin.publish(key=event.keys[0], event=event)
            dup = " (duplicate)" if resp.duplicate else ""
            return f"published {resp.event_id} to {resp.delivered} session(s){dup}"

        async with admin:
            yield publish
        return
    if not args.bootstrap:
        raise _UsageError("--bootstrap: required (or TALKWIRE_KAFKA_BOOTSTRAP), or use --via-admin")
    if not args.topic:
        raise _UsageError("--topic: required (or TALKWIRE_EVENTS_TOPIC)")
    producer = EventProducer(
        args.bootstrap.split(","),
        topic=args.topic,
        format=args.format,
        request_timeout_ms=int(args.timeout * 1000),
        **_kafka_ssl(args),
    )

    async def produce(event: events_pb2.ChangeEvent) -> str:
        async with asyncio.timeout(args.timeout):
            await producer.send(event, traceparent=args.traceparent)
        return f"emitted {event.id} to {args.topic}"

    async with asyncio.timeout(args.timeout):
        await producer.start()
    try:
        yield produce
    finally:
        await producer.aclose()


async def _emit(args: argparse.Namespace, stdin: TextIO) -> list[str]:
    """Send the events; returns the refused stdin lines."""
    refused: list[str] = []
    if args.type:
        events = _one(_flag_event(args))
    else:
        if stdin.isatty():
            print("# one JSON event per line; Ctrl-D ends", file=sys.stderr, flush=True)
        events = _stdin_events(stdin, args, refused)
    async with _sender(args) as send:
        async for event in events:  # a stdin line is read once the previous event is sent
            print(await send(event), flush=True)
    return refused


def emit_command(args: argparse.Namespace) -> int:
    """Run ``talkwire emit``; returns the exit code."""
    where = f"server {args.target}" if args.via_admin else f"broker {args.bootstrap}"
    try:
        refused = asyncio.run(_emit(args, sys.stdin))
    except _UsageError as exc:
        print(f"talkwire emit: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()
    except TimeoutError:
        print(f"talkwire emit: timed out after {args.timeout}s ({where})", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line, no traceback, for any failure
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"talkwire emit: {detail}", file=sys.stderr)
        return 1
    return 2 if refused else 0
