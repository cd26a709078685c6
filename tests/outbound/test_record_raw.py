"""SQLite's raw record path: each pending row points at its own event, for every sink."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from talkwire.server import schema
from talkwire.server.identity import Identity
from talkwire.server.outbound.record import EventRecorder, SinkRoute
from talkwire.server.store import SessionStore
from tests.outbound.helpers import reply, user_message


async def test_pending_rows_name_their_own_events(tmp_path: Path) -> None:
    recorder = EventRecorder([SinkRoute("all"), SinkRoute("frames", frozenset({"frame.appended"}))])
    url = f"sqlite+aiosqlite:///{tmp_path}/r.db"
    async with SessionStore(url, events=recorder) as store:
        sids = [(await store.create_session(Identity(f"u{i}")))[0].id for i in range(3)]
        for t in range(4):
            for sid in sids:  # a turn and two frames: three events in one statement
                frames = [reply(f"{sid} {t} a", f"f{t}"), reply(f"{sid} {t} b", f"f{t}")]
                await store.append(sid, frames, turn=user_message(f"{sid} q{t}", f"f{t}"))

        def rows(conn: sa.Connection) -> list[tuple[str, str, str, str, int]]:
            e, p = schema.conversation_events, schema.outbound_pending
            query = sa.select(p.c.sink, p.c.session_id, e.c.session_id, e.c.kind, e.c.id).join(
                e, e.c.id == p.c.event_id
            )
            return [tuple(r) for r in conn.execute(query)]  # type: ignore[misc]

        pending = await store.executor.read(rows)
        events = await store.executor.read(
            lambda conn: conn.execute(
                sa.select(sa.func.count()).select_from(schema.conversation_events)
            ).scalar()
        )
    opened, turns = 3, 3 * 4
    assert events == opened + turns * 3
    assert all(row_sid == event_sid for _, row_sid, event_sid, _, _ in pending)
    by_sink: dict[str, list[str]] = {}
    for sink, _, _, kind, _ in pending:
        by_sink.setdefault(sink, []).append(kind)
    assert len(by_sink["all"]) == events
    assert by_sink["frames"] == ["frame.appended"] * (turns * 2)

    # Each event's pending row carries the body written for it (the ids line up).
    def bodies(conn: sa.Connection) -> list[tuple[str, bytes]]:
        e, p = schema.conversation_events, schema.outbound_pending
        query = (
            sa.select(e.c.session_id, e.c.body)
            .join(p, p.c.event_id == e.c.id)
            .where(p.c.sink == "frames")
        )
        return [(r[0], bytes(r[1])) for r in conn.execute(query)]

    async with SessionStore(url, events=recorder) as store:
        for sid, body in await store.executor.read(bodies):
            assert sid.encode() in body
