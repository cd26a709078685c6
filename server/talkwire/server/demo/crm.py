"""The demo CRM/ERP database (SQLite): customers, accounts, orders, tickets, payments.

``await create_demo_crm("demo.db")`` creates the schema and seeds it; running
it again changes nothing (``CREATE TABLE IF NOT EXISTS`` / ``INSERT OR IGNORE``).

Seed customers: ``c-100`` Alice, ``c-200`` Bob, ``c-300`` Carol. Orders 1001,
1002 (Alice), 2001, 2002 (Bob), 3001 (Carol); a few tickets; one EUR/USD
account per customer.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["CUSTOMERS", "ORDERS", "create_demo_crm", "sqlite_url"]

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS customers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE)""",
    """CREATE TABLE IF NOT EXISTS accounts (
        customer_id TEXT PRIMARY KEY REFERENCES customers(id),
        currency TEXT NOT NULL, balance NUMERIC NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS orders (
        id INTEGER PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id),
        item TEXT NOT NULL, status TEXT NOT NULL, eta TEXT, total NUMERIC NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tickets (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        customer_id TEXT NOT NULL REFERENCES customers(id),
        subject TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open',
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS payments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        customer_id TEXT NOT NULL REFERENCES customers(id),
        amount NUMERIC NOT NULL, currency TEXT NOT NULL,
        idempotency_key TEXT UNIQUE, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)""",
    # Closed conversations, written by the outbound connector sink (one row per event).
    """CREATE TABLE IF NOT EXISTS notes (
        event_id TEXT PRIMARY KEY, customer TEXT NOT NULL, session_id TEXT NOT NULL,
        body TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)""",
    "CREATE INDEX IF NOT EXISTS orders_customer ON orders(customer_id)",
    "CREATE INDEX IF NOT EXISTS tickets_customer ON tickets(customer_id)",
)

CUSTOMERS = (
    ("c-100", "Alice", "alice@example.com", "EUR", 120.50),
    ("c-200", "Bob", "bob@example.com", "EUR", -15.00),
    ("c-300", "Carol", "carol@example.com", "USD", 980.00),
)

ORDERS = (
    (1001, "c-100", "Espresso machine", "shipped", "2025-06-03", 349.00),
    (1002, "c-100", "Coffee beans 1kg", "processing", "2025-06-07", 24.90),
    (2001, "c-200", "Standing desk", "delivered", "2025-05-20", 499.00),
    (2002, "c-200", "Desk lamp", "backordered", "2025-06-21", 39.90),
    (3001, "c-300", "Noise-cancelling headphones", "shipped", "2025-06-04", 279.00),
)

TICKETS = (
    (1, "c-100", "Espresso machine leaks", "open", "2025-06-01 09:12:00"),
    (2, "c-200", "Invoice address wrong", "resolved", "2025-05-18 14:40:00"),
    (3, "c-300", "Headphones missing charger", "open", "2025-06-02 17:03:00"),
)


def sqlite_url(path_or_url: str | Path) -> str:
    """``sqlite+aiosqlite`` URL for a file path (URLs are returned unchanged)."""
    s = str(path_or_url)
    if "://" in s:
        return s
    return f"sqlite+aiosqlite:///{Path(s).resolve()}"


async def create_demo_crm(path_or_url: str | Path) -> str:
    """Create and seed the demo database (idempotent); returns its SQLAlchemy URL."""
    url = sqlite_url(path_or_url)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for ddl in SCHEMA:
                await conn.execute(text(ddl))
            for cid, name, email, currency, balance in CUSTOMERS:
                await conn.execute(
                    text("INSERT OR IGNORE INTO customers (id, name, email) VALUES (:i, :n, :e)"),
                    {"i": cid, "n": name, "e": email},
                )
                await conn.execute(
                    text(
                        "INSERT OR IGNORE INTO accounts (customer_id, currency, balance) "
                        "VALUES (:i, :c, :b)"
                    ),
                    {"i": cid, "c": currency, "b": balance},
                )
            for oid, cid, item, status, eta, total in ORDERS:
                await conn.execute(
                    text(
                        "INSERT OR IGNORE INTO orders (id, customer_id, item, status, eta, total) "
                        "VALUES (:o, :c, :i, :s, :e, :t)"
                    ),
                    {"o": oid, "c": cid, "i": item, "s": status, "e": eta, "t": total},
                )
            for tid, cid, subject, status, created in TICKETS:
                await conn.execute(
                    text(
                        "INSERT OR IGNORE INTO tickets (id, customer_id, subject, status, "
                        "created_at) VALUES (:t, :c, :s, :st, :cr)"
                    ),
                    {"t": tid, "c": cid, "s": subject, "st": status, "cr": created},
                )
    finally:
        await engine.dispose()
    return url
