"""The validated ``web:`` section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from talkwire.connectors.sections import Section

__all__ = ["WebSettings"]

_KEYS = ("enabled", "listen", "path", "allowed_origins", "open_timeout", "demo_page")


class WebSettings:
    """``web:``: where the gateway listens and which browser origins may connect.

    ``allowed_origins``: exact origins (``https://shop.example``) or ``*``; empty
    means the gateway's own origin only. A client that sends no ``Origin`` (not
    a browser) is not subject to it; it authenticates like any gRPC caller.
    """

    def __init__(self, section: Mapping[str, Any] | None, where: str = "web") -> None:
        sec = Section(section or {}, where, known=_KEYS)
        self.enabled = sec.flag("enabled", bool(section))
        listen = sec.text("listen", "127.0.0.1:8080")
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise sec.error("listen", f"expected host:port, got {listen!r}")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.path = sec.text("path", "/ws")
        if not self.path.startswith("/"):
            raise sec.error("path", f"must start with '/', got {self.path!r}")
        self.allowed_origins = tuple(sec.strings("allowed_origins", (), split=True))
        for origin in self.allowed_origins:
            if origin != "*" and "://" not in origin:
                raise sec.error("allowed_origins", f"expected scheme://host[:port], got {origin!r}")
        self.open_timeout = sec.number("open_timeout", 10.0, positive=True)
        self.demo_page = sec.flag("demo_page", True)

    def __repr__(self) -> str:
        return f"WebSettings(listen={self.host}:{self.port}, path={self.path})"
