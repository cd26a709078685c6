"""The demo CDC feed: row changes of the demo CRM as Debezium change events on Kafka.

A real deployment runs Debezium against its database; the demo CRM is a
SQLite file, which Debezium does not read, so this feed does the same job the
simple way: it snapshots the watched tables every ``poll`` seconds, compares
each row with the previous snapshot and produces one Debezium envelope per
changed row (``op`` ``c`` / ``u`` / ``d``, ``before`` and ``after``, ``source``
with ``db``, ``table`` and a growing ``lsn``, ``ts_ms``) to the table's topic,
``demo.crm.<table>``, keyed by the row's primary key as Debezium keys it
(``{"id": 1001}``). Whoever changed the row -- the demo warehouse, the bot's
cancel or payment, or you with ``sqlite3`` -- the change is pushed the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = ["CDC_TABLES", "TOPIC_PREFIX", "ChangeFeed", "Sender", "topic_for"]

log = logging.getLogger(__name__)

TOPIC_PREFIX = "demo.crm"
# table -> primary key column
CDC_TABLES: Mapping[str, str] = {"orders": "id", "accounts": "customer_id", "tickets": "id"}

Row = dict[str, Any]


def topic_for(table: str) -> str:
    """The Debezium-style topic of ``table``: ``<prefix>.<table>``."""
    return f"{TOPIC_PREFIX}.{table}"


class Sender(Protocol):
    """What the feed produces with (``AIOKafkaProducer`` fits)."""

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> Any: ...


def _snapshot(db_path: Path, tables: Mapping[str, str]) -> dict[str, dict[Any, Row]]:
    with sqlite3.connect(db_path, timeout=10) as db:
        db.row_factory = sqlite3.Row
        return {
            table: {row[pk]: dict(row) for row in db.execute(f"SELECT * FROM {table}")}  # noqa: S608 - fixed table names
            for table, pk in tables.items()
        }


class ChangeFeed:
    """Polls the demo CRM and produces each row change as a Debezium envelope."""

    def __init__(
        self,
        db_path: Path,
        sender: Sender,
        *,
        tables: Mapping[str, str] = CDC_TABLES,
        poll: float = 0.25,
    ) -> None:
        self.db_path = db_path
        self.sender = sender
        self.tables = dict(tables)
        self.poll = poll
        self._lsn = 0
        self._seen: dict[str, dict[Any, Row]] = {}

    async def prime(self) -> None:
        """Take the starting snapshot (rows as they are now produce no event)."""
        self._seen = await asyncio.to_thread(_snapshot, self.db_path, self.tables)

    def envelope(self, table: str, op: str, before: Row | None, after: Row | None) -> bytes:
        """One Debezium change event (the JSON converter without schemas)."""
        self._lsn += 1
        now = int(time.time() * 1000)
        payload = {
            "before": before,
            "after": after,
            "op": op,
            "source": {
                "version": "talkwire-demo",
                "connector": "sqlite",
                "name": "demo",
                "db": "crm",
                "table": table,
                "ts_ms": now,
                "lsn": self._lsn,
            },
            "ts_ms": now,
        }
        return json.dumps(payload).encode()

    async def step(self) -> int:
        """Compare one snapshot with the last; produce the changes; returns how many."""
        current = await asyncio.to_thread(_snapshot, self.db_path, self.tables)
        sent = 0
        for table, rows in current.items():
            old = self._seen.get(table, {})
            pk = self.tables[table]
            for key in rows.keys() | old.keys():
                before, after = old.get(key), rows.get(key)
                if before == after:
                    continue
                op = "c" if before is None else "d" if after is None else "u"
                await self.sender.send_and_wait(
                    topic_for(table),
                    self.envelope(table, op, before, after),
                    key=json.dumps({pk: key}).encode(),
                )
                sent += 1
        self._seen = current
        return sent

    async def run(self) -> None:
        """Poll until cancelled (a failed poll is logged and retried)."""
        if not self._seen:
            await self.prime()
        while True:
            await asyncio.sleep(self.poll)  # the polling interval of the feed
            try:
                await self.step()
            except Exception as exc:  # noqa: BLE001 - the demo keeps going; the next poll retries
                log.warning("demo CDC feed: %s", exc)
