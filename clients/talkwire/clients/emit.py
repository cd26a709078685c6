"""``talkwire emit``: produce one change event to Kafka, or push it via AdminService.Publish.

::

    talkwire emit --bootstrap 127.0.0.1:9092 --topic erp.orders \\
        --type order.status_changed --key order:1001 \\
        --after '{"id": 1001, "status": "shipped"}' [--format json]
    talkwire emit --via-admin --target 127.0.0.1:50051 --type note --key order:1001 --text hi

Errors are one line on stderr with a non-zero exit code (2 for bad arguments,
1 when the broker or server cannot be reached); never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from talkwire.clients.events import EventProducer, build_event

__all__ = ["add_emit_command", "emit_command"]


def add_emit_command(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Register ``emit`` on ``subparsers``; the parser's ``func(args) -> int`` runs it."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "emit",
        help="produce a change event (Kafka, or AdminService.Publish with --via-admin)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--bootstrap", default=os.environ.get("TALKWIRE_KAFKA_BOOTSTRAP", ""))
    p.add_argument("--topic", default=os.environ.get("TALKWIRE_EVENTS_TOPIC", ""))
    p.add_argument("--format", choices=["protobuf", "json", "cloudevents"], default="protobuf")
    p.add_argument("--type", required=True, help="event type, e.g. order.status_changed")
    p.add_argument("--key", action="append", default=[], help="subscription key (repeatable)")
    p.add_argument("--op", choices=["create", "update", "delete", "snapshot"], default="update")
    p.add_argument("--after", default=None, help="JSON object: the record after the change")
    p.add_argument("--before", default=None, help="JSON object: the record before the change")
    p.add_argument("--source", default="talkwire.emit")
    p.add_argument("--id", default=None, help="event id (default: a new UUID)")
    p.add_argument("--text", default="", help="text shown to the user")
    p.add_argument("--traceparent", default=None)
    p.add_argument("--via-admin", action="store_true", help="use AdminService.Publish")
    p.add_argument("--target", default=os.environ.get("TALKWIRE_TARGET", "127.0.0.1:50051"))
    p.add_argument("--token", default=os.environ.get("TALKWIRE_TOKEN"))
    p.add_argument("--timeout", type=float, default=10.0)
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


async def _emit(args: argparse.Namespace) -> str:
    after = _object("after", args.after)
    before = _object("before", args.before)
    if not args.key:
        raise _UsageError("--key: at least one subscription key is required")
    event = build_event(
        args.type,
        list(args.key),
        after=after,
        before=before,
        op=args.op,
        source=args.source,
        id=args.id,
        text=args.text,
    )
    if args.via_admin:
        from talkwire.clients.admin import AdminClient

        async with AdminClient(args.target, token=args.token, timeout=args.timeout) as admin:
            resp = await admin.publish(key=args.key[0], event=event)
        dup = " (duplicate)" if resp.duplicate else ""
        return f"published {resp.event_id} to {resp.delivered} session(s){dup}"
    if not args.bootstrap:
        raise _UsageError("--bootstrap: required (or TALKWIRE_KAFKA_BOOTSTRAP), or use --via-admin")
    if not args.topic:
        raise _UsageError("--topic: required (or TALKWIRE_EVENTS_TOPIC)")
    producer = EventProducer(
        args.bootstrap,
        topic=args.topic,
        format=args.format,
        request_timeout_ms=int(args.timeout * 1000),
    )
    async with asyncio.timeout(args.timeout):
        async with producer:
            await producer.send(event, traceparent=args.traceparent)
    return f"emitted {event.id} to {args.topic}"


def emit_command(args: argparse.Namespace) -> int:
    """Run ``talkwire emit``; returns the exit code."""
    try:
        message = asyncio.run(_emit(args))
    except _UsageError as exc:
        print(f"talkwire emit: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except TimeoutError:
        print(
            f"talkwire emit: timed out after {args.timeout}s "
            f"({'server ' + args.target if args.via_admin else 'broker ' + args.bootstrap})",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # noqa: BLE001 - one line, no traceback, for any failure
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"talkwire emit: {detail}", file=sys.stderr)
        return 1
    print(message)
    return 0
