"""``talkwire connectors inspect --openapi FILE``: what an OpenAPI document offers (offline).

Lists the document's servers, security schemes and every operation with its
operationId, method, path, result shape and the parameters the ``openapi``
connector would declare; operations it cannot import say why. Exit 0, or 2 with
one line on stderr when the document cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from talkwire.connectors.openapi import SpecError, describe_document, load_document

__all__ = ["add_inspect_command", "inspect_openapi"]


def inspect_openapi(path: str, out: TextIO, err: TextIO) -> int:
    """Print what the document at ``path`` offers; returns the exit code."""
    try:
        doc = load_document(Path(path).read_bytes(), path)
    except OSError as exc:
        print(f"talkwire: cannot read {path}: {exc.strerror}", file=err)
        return 2
    except SpecError as exc:
        print(f"talkwire: {exc}", file=err)
        return 2
    ops = describe_document(doc)
    print(f"{path}: OpenAPI {doc.version}, {len(ops)} operations", file=out)
    print(f"servers: {', '.join(doc.servers()) or 'none (give base_url)'}", file=out)
    schemes = doc.security_schemes()
    if schemes:
        print("security schemes:", file=out)
        for name, scheme in schemes.items():
            kind = " ".join(
                str(scheme[k]) for k in ("type", "scheme", "in", "name") if scheme.get(k)
            )
            print(f"  {name}: {kind}", file=out)
    print("operations:", file=out)
    for op in ops:
        print(_headline(op), file=out)
        for p in op["parameters"]:
            req = ", required" if p["required"] else ""
            print(f"    {p['name']}: {p['type']} ({p['in']}{req})", file=out)
    return 0


def _headline(op: dict[str, Any]) -> str:
    line = f"  {op['operation_id']}  {op['method']} {op['path']}"
    if op["method"] in ("POST", "PUT", "PATCH", "DELETE"):
        line += " [write]"
    if op["problem"]:
        return f"{line}  not importable: {op['problem']}"
    line += f" -> {op['result']}"
    return f"{line}  {op['summary']}".rstrip()


def _run(args: argparse.Namespace) -> int:
    return inspect_openapi(args.openapi, sys.stdout, sys.stderr)


def add_inspect_command(
    connectors_sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``inspect`` under ``talkwire connectors``."""
    p = connectors_sub.add_parser(
        "inspect", help="list what an OpenAPI document offers (no server needed)"
    )
    p.add_argument("--openapi", required=True, metavar="FILE", help="OpenAPI 3.0/3.1 YAML or JSON")
    p.set_defaults(func=_run, handler=_run)
