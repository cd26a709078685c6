"""What the client subcommands share: connection flags, one-line errors, exit codes, pipes.

Exit codes: 0 done; 1 the server (or broker) said no or could not be reached,
printed as one line ``talkwire: error: STATUS: details`` on stderr; 2 bad
arguments (argparse's own); 130 Ctrl-C; 141 stdout was closed by the reader
(``talkwire ... | head``), which ends the command quietly, as ``SIGPIPE`` ends
``cat``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TextIO

import grpc

from talkwire.clients.channel import channel_credentials
from talkwire.clients.errors import RpcError, TalkwireError

__all__ = [
    "DEFAULT_TARGET",
    "EXIT_PIPE_CLOSED",
    "CommandError",
    "add_connection_flags",
    "credentials",
    "error_line",
    "guarded",
    "quiet_broken_pipe",
    "runner",
]

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for `cat | head`


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """The TLS credentials the connection flags ask for (``None``: plaintext)."""
    return channel_credentials(
        tls=args.tls, ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file
    )


def error_line(exc: BaseException) -> str:
    """``STATUS: details`` for an RPC failure, else the exception's message."""
    if isinstance(exc, RpcError):
        return f"{exc.code.name}: {exc.details}" if exc.details else exc.code.name
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        name = code.name if code is not None else "UNKNOWN"
        return f"{name}: {exc.details() or ''}".rstrip(": ")
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED: no answer in time"
    return str(exc) or type(exc).__name__


def quiet_broken_pipe() -> int:
    """The reader of stdout went away: silence the interpreter's last flush, exit 141."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE_CLOSED


async def guarded(coro: Awaitable[int], stderr: TextIO) -> int:
    """Run a command; an expected failure becomes one ``talkwire: error:`` line and exit 1."""
    try:
        return await coro
    except BrokenPipeError:
        raise  # not an error: the reader closed the pipe (see runner)
    except (TalkwireError, grpc.aio.AioRpcError, CommandError, TimeoutError, OSError) as exc:
        print(f"talkwire: error: {error_line(exc)}", file=stderr)
        return 1


def runner(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """A ``handler(args) -> exit code`` running ``command`` with ``asyncio.run``."""

    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(command(args))
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            return quiet_broken_pipe()

    run.__name__ = getattr(command, "__name__", "run")
    return run


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--token`` and the TLS flags, in their own help group."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=os.environ.get("TALKWIRE_TARGET", DEFAULT_TARGET),
        metavar="HOST:PORT",
        help="server address (env TALKWIRE_TARGET; default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("TALKWIRE_TOKEN"),
        help="bearer token sent as 'authorization: Bearer TOKEN' (env TALKWIRE_TOKEN)",
    )
    group.add_argument("--tls", action="store_true", help="use TLS with the system roots")
    group.add_argument(
        "--ca-file", metavar="PEM", help="root certificates to trust (implies --tls)"
    )
    group.add_argument(
        "--cert-file", metavar="PEM", help="client certificate for mTLS (implies --tls)"
    )
    group.add_argument("--key-file", metavar="PEM", help="private key of --cert-file")
