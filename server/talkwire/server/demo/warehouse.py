"""The demo warehouse: moves the demo orders through their lifecycle in the CRM database.

It only writes rows, as a real back office would; the change reaches the
sessions through the CDC feed (:mod:`.cdc`), never as an invented event. Every
``interval`` seconds each order that is not cancelled moves one step along
:data:`LIFECYCLE` (after ``delivered`` it starts over as a new shipment, so the
demo keeps moving); a cancelled order stays cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

__all__ = ["LIFECYCLE", "advance_orders", "run_warehouse"]

log = logging.getLogger(__name__)

LIFECYCLE: tuple[str, ...] = ("processing", "packed", "shipped", "out for delivery", "delivered")


def advance_orders(db_path: Path) -> int:
    """Move every order that is not cancelled one step along :data:`LIFECYCLE`; returns how many."""
    with sqlite3.connect(db_path, timeout=10) as db:
        rows = db.execute("SELECT id, status FROM orders WHERE status != 'cancelled'").fetchall()
        for order_id, status in rows:
            step = LIFECYCLE.index(status) + 1 if status in LIFECYCLE else 0
            db.execute(
                "UPDATE orders SET status = ? WHERE id = ?",
                (LIFECYCLE[step % len(LIFECYCLE)], order_id),
            )
    return len(rows)


async def run_warehouse(db_path: Path, interval: float) -> None:
    """Advance the orders every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)  # the demo's pace, not synchronisation
        try:
            await asyncio.to_thread(advance_orders, db_path)
        except sqlite3.Error as exc:
            log.warning("demo warehouse: %s", exc)
