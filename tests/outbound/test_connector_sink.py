"""The connector sink: each closed session's transcript becomes a row of a CRM notes table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from talkwire.connectors.registry import ConnectorRegistry
from tests.outbound.helpers import converse, outbound_store
from tests.support.waiting import eventually

NOTES = """CREATE TABLE notes (
    event_id TEXT PRIMARY KEY, customer TEXT NOT NULL, session_id TEXT NOT NULL, body TEXT NOT NULL
)"""


def crm(url: str) -> dict[str, Any]:
    return {
        "crm": {
            "type": "sql",
            "url": url,
            "operations": {
                "add_note": {
                    "sql": "INSERT INTO notes (event_id, customer, session_id, body) "
                    "VALUES (:event_id, :customer, :session_id, :body) "
                    "ON CONFLICT (event_id) DO NOTHING",
                    "params": {
                        "event_id": "string",
                        "customer": "string",
                        "session_id": "string",
                        "body": "string",
                    },
                    "write": True,
                }
            },
        }
    }


CRM_NOTES = {
    "crm_notes": {
        "connector": "crm",
        "operation": "add_note",
        "on": ["session.closed"],
        "params": {
            "event_id": "{event.id}",
            "customer": "{session.subject}",
            "session_id": "{session.id}",
            "body": "{transcript}",
        },
    }
}


async def test_closed_session_transcript_lands_in_the_crm(tmp_path: Path) -> None:
    crm_url = f"sqlite+aiosqlite:///{tmp_path}/crm.db"
    engine = create_async_engine(crm_url)
    async with engine.begin() as conn:
        await conn.execute(sa.text(NOTES))
    try:
        async with ConnectorRegistry(crm(crm_url)) as registry:
            url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
            async with outbound_store(url, CRM_NOTES, registry) as (store, service):
                sid = await converse(store, 2, subject="cust-42")
                open_only = await converse(store, 1, subject="cust-7")
                await store.close_session(sid)

                async def notes() -> list[Any]:
                    async with engine.connect() as conn:
                        return list(await conn.execute(sa.text("SELECT * FROM notes")))

                rows = await eventually(notes, message="the note")
                status = (await service.status())[0]
                assert status.pending == 0 and status.delivered == 1
        assert len(rows) == 1
        _, customer, session_id, body = rows[0]
        assert (customer, session_id) == ("cust-42", sid)
        assert body == "user: q0\nbot: answer 0\nuser: q1\nbot: answer 1"
        assert open_only not in {r[2] for r in rows}
    finally:
        await engine.dispose()


async def test_unknown_operation_is_refused_naming_the_key(tmp_path: Path) -> None:
    import pytest

    from talkwire.server.errors import ConfigError

    crm_url = f"sqlite+aiosqlite:///{tmp_path}/crm.db"
    section = {"crm_notes": {**CRM_NOTES["crm_notes"], "operation": "nope"}}
    async with ConnectorRegistry(crm(crm_url)) as registry:
        with pytest.raises(ConfigError, match=r"outbound\.crm_notes\.operation"):
            async with outbound_store(f"sqlite+aiosqlite:///{tmp_path}/s.db", section, registry):
                pass
