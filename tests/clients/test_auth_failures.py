"""ChatClient never retries an authentication failure (against ``talkwire serve``).

A session whose credentials stop working -- the token is revoked, or now names
another subject -- must end its iterator with the typed error as soon as the
server answers the resume, not keep resuming until the reconnect policy gives up.
The server runs in a subprocess and is restarted with the new token table; the
sessions resume by themselves.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import grpc
import pytest

from talkwire.clients import (
    NEVER_RETRIED,
    RETRIABLE_CODES,
    ChatClient,
    ChatSession,
    ConnectionEvent,
    ConnectionEventKind,
    ReconnectPolicy,
)
from talkwire.clients.errors import TalkwireError
from tests.conftest import TOKENS
from tests.support.server_proc import ServerProcess

SESSIONS = 100
CAROL = "carol-token"
FAST = ReconnectPolicy(initial_backoff=0.01, max_backoff=0.05, max_attempts=None, max_elapsed=None)
#: What a resume meets while the server is away (killed, not yet listening again).
SERVER_AWAY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
WAIT = 60  # a guard against hangs, never a synchronisation point


def _config(tmp_path: Path, carol: dict[str, Any] | None) -> dict[str, Any]:
    tokens = {**TOKENS, CAROL: carol} if carol is not None else dict(TOKENS)
    return {
        "server": {"handler": "echo", "sweep_interval": 3600},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"},
        "auth": {"kind": "static", "tokens": tokens},
        "demo": False,
    }


async def _end_of(session: ChatSession) -> str:
    try:
        frame = await session.next_frame(timeout=WAIT)
    except TalkwireError as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"a frame: {frame}"


@pytest.mark.parametrize(
    ("carol_after", "end"),
    [
        (None, "Unauthenticated: UNAUTHENTICATED: invalid token"),
        (
            {"subject": "mallory"},
            "SessionPermissionDenied: PERMISSION_DENIED: "
            "resume token or subject does not match this session",
        ),
    ],
    ids=["token-revoked", "token-names-another-subject"],
)
async def test_an_auth_failure_on_resume_ends_every_session_at_once(
    tmp_path: Path, carol_after: dict[str, Any] | None, end: str
) -> None:
    server = ServerProcess(_config(tmp_path, {"subject": "carol"}), workdir=tmp_path)
    await server.start()
    events: list[ConnectionEvent] = []
    try:
        async with ChatClient(
            server.target, token=CAROL, reconnect=FAST, on_connection_event=events.append
        ) as client:
            sessions = await asyncio.gather(*(client.open() for _ in range(SESSIONS)))
            server.set_config(_config(tmp_path, carol_after))
            await server.restart()  # kill -9, then up again with the new token table
            async with asyncio.timeout(WAIT):
                ends = await asyncio.gather(*(_end_of(s) for s in sessions))
    finally:
        await server.terminate()
    assert collections.Counter(ends) == {end: SESSIONS}
    assert [s.reconnects for s in sessions] == [0] * SESSIONS
    # Each session retried only while the server was away; the auth failure itself
    # (before the fix often masked by grpc as INTERNAL) was never retried.
    retried_after = collections.Counter(
        (e.code.name, e.details)
        for e in events
        if e.kind is ConnectionEventKind.RETRYING
        if e.code not in SERVER_AWAY
    )
    assert retried_after == {}
    assert not [e for e in events if e.kind is ConnectionEventKind.GAVE_UP]


@pytest.mark.parametrize("code", sorted(NEVER_RETRIED, key=lambda c: c.name))
def test_a_policy_cannot_make_an_auth_failure_retriable(code: grpc.StatusCode) -> None:
    with pytest.raises(ValueError, match=f"{code.name} is an authentication failure"):
        ReconnectPolicy(retriable_codes=RETRIABLE_CODES | {code})
    assert not ReconnectPolicy().retries(code)
