"""What ``talkwire demo`` prints once it runs: the addresses and what to type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_TARGET", "DemoAddresses", "demo_banner"]

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class DemoAddresses:
    """Where the parts of a running demo listen.

    ``web``: the web page, when a web gateway runs with the demo (``None``: none);
    ``program``: how to run ``talkwire`` in another terminal (a path when it is not on PATH).
    """

    grpc: str
    crm: Path
    bootstrap: str | None = None
    topics: tuple[str, ...] = ()
    interval: float = 0.0
    web: str | None = None
    program: str = "talkwire"


def demo_banner(addr: DemoAddresses) -> str:
    """The lines ``talkwire demo`` prints after start."""
    chat = f"{addr.program} chat"
    if addr.grpc != DEFAULT_TARGET:
        chat += f" --target {addr.grpc}"
    lines = ["", "talkwire demo is running:"]
    rows: list[tuple[str, str]] = [("gRPC", f"{addr.grpc}  (chat, admin, health, reflection)")]
    if addr.web:
        rows.append(("web", addr.web))
    if addr.bootstrap:
        rows.append(("Kafka", f"{addr.bootstrap}  (topics {', '.join(addr.topics)}; Debezium)"))
    rows.append(("CRM", f"{addr.crm}  (SQLite)"))
    lines += [f"  {name:<6} {value}" for name, value in rows]
    lines += ["", "In another terminal:", f"  {chat}", "  you> where is my order 1001"]
    if addr.bootstrap:
        lines.append(
            f"  (the demo warehouse moves every order along every {addr.interval:g} s: "
            "the change is pushed to your chat)"
        )
    lines += [
        '  then try: "cancel my order 1002", "I want to pay 20 EUR", "what\'s my balance", "help"',
        "Ctrl-C stops the demo.",
        "",
    ]
    return "\n".join(lines)
