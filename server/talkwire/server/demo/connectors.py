"""Connector sections of the demo: the ``crm`` (sql) and ``erp`` (openapi) connectors.

Operations (names used by the demo bot):

crm (sql, SQLite demo database):
- ``order_status(order_id: integer, customer_id: string) -> row``
  ``{order_id, item, status, eta, total}`` or ``None`` (scoped to the customer);
  cached 30 s, invalidated by ``order:{order_id}``
- ``list_orders(customer_id: string) -> rows`` ``[{order_id, item, status, eta, total}]``
- ``open_ticket(customer_id: string, subject: string) -> row`` (write)
  ``{ticket_id, status}``
- ``ticket_status(ticket_id: integer, customer_id: string) -> row``
  ``{ticket_id, subject, status, created_at}`` or ``None``; invalidated by ``ticket:{ticket_id}``
- ``cancel_order(order_id: integer, customer_id: string) -> rows`` (write)
  ``[{order_id, item, status}]``, or ``[]`` when the order is not the customer's
  or is already delivered or cancelled
- ``order_owner(order_id: integer) -> row`` ``{customer_id}`` or ``None``

erp (openapi: the demo ERP app, described by ``erp-openapi.yaml``):
- ``get_balance(customer_id: string) -> object`` ``{balance, currency}``;
  cached 10 s, invalidated by ``balance:{customer_id}``
- ``make_payment(customer_id: string, amount: number) -> object`` (write;
  invalidates ``balance:{customer_id}``)
  ``{payment_id, amount, currency, balance}``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from talkwire.server.demo.crm import sqlite_url

__all__ = ["DEMO_OUTBOUND", "demo_connector_sections"]


# Every closed or expired session's transcript becomes a row of the CRM's notes table
# (the outbound connector sink; the event id makes a re-send a no-op).
DEMO_OUTBOUND: dict[str, Any] = {
    "crm_notes": {
        "connector": "crm",
        "operation": "add_note",
        "on": ["session.closed", "session.expired"],
        "params": {
            "event_id": "{event.id}",
            "customer": "{session.subject}",
            "session_id": "{session.id}",
            "body": "{transcript}",
        },
    }
}


def demo_connector_sections(crm_url: str, erp_base_url: str) -> dict[str, Any]:
    """The ``connectors:`` config of the demo (``crm`` may be a file path or a URL)."""
    cust = {"type": "string", "description": "Customer id, e.g. c-100"}
    return {
        "crm": {
            "type": "sql",
            "url": sqlite_url(crm_url),
            "row_limit": 100,
            "statement_timeout": 5,
            "operations": {
                "order_status": {
                    "description": "Status and ETA of one of the customer's orders",
                    "sql": (
                        "SELECT id AS order_id, item, status, eta, total FROM orders "
                        "WHERE id = :order_id AND customer_id = :customer_id"
                    ),
                    "params": {
                        "order_id": {"type": "integer", "description": "Order number"},
                        "customer_id": cust,
                    },
                    "result": "row",
                    "cache_ttl": 30,
                    "cache_keys": ["order:{order_id}"],
                },
                "list_orders": {
                    "description": "The customer's orders",
                    "sql": (
                        "SELECT id AS order_id, item, status, eta, total FROM orders "
                        "WHERE customer_id = :customer_id ORDER BY id"
                    ),
                    "params": {"customer_id": cust},
                    "result": "rows",
                },
                "open_ticket": {
                    "description": "Open a support ticket for the customer",
                    "sql": (
                        "INSERT INTO tickets (customer_id, subject, status, created_at) "
                        "VALUES (:customer_id, :subject, 'open', CURRENT_TIMESTAMP) "
                        "RETURNING id AS ticket_id, status"
                    ),
                    "params": {
                        "customer_id": cust,
                        "subject": {"type": "string", "description": "What the ticket is about"},
                    },
                    "write": True,
                    "result": "row",
                },
                "ticket_status": {
                    "description": "Status of one of the customer's tickets",
                    "sql": (
                        "SELECT id AS ticket_id, subject, status, created_at FROM tickets "
                        "WHERE id = :ticket_id AND customer_id = :customer_id"
                    ),
                    "params": {
                        "ticket_id": {"type": "integer", "description": "Ticket number"},
                        "customer_id": cust,
                    },
                    "result": "row",
                    "cache_ttl": 30,
                    "cache_keys": ["ticket:{ticket_id}"],
                },
                "cancel_order": {
                    "description": "Cancel one of the customer's orders (not once delivered)",
                    "sql": (
                        "UPDATE orders SET status = 'cancelled' "
                        "WHERE id = :order_id AND customer_id = :customer_id "
                        "AND status NOT IN ('delivered', 'cancelled') "
                        "RETURNING id AS order_id, item, status"
                    ),
                    "params": {
                        "order_id": {"type": "integer", "description": "Order number"},
                        "customer_id": cust,
                    },
                    "write": True,
                    "result": "rows",
                },
                "add_note": {
                    "description": "Attach a closed conversation's transcript to the customer",
                    "sql": (
                        "INSERT INTO notes (event_id, customer, session_id, body) "
                        "VALUES (:event_id, :customer, :session_id, :body) "
                        "ON CONFLICT (event_id) DO NOTHING"
                    ),
                    "params": {
                        "event_id": {"type": "string"},
                        "customer": {"type": "string"},
                        "session_id": {"type": "string"},
                        "body": {"type": "string"},
                    },
                    "write": True,
                },
                "order_owner": {
                    "description": "Which customer an order belongs to (for authorisation)",
                    "sql": "SELECT customer_id FROM orders WHERE id = :order_id",
                    "params": {"order_id": {"type": "integer"}},
                    "result": "row",
                },
            },
        },
        "erp": {
            # The demo ERP as an OpenAPI-described backend: the operations come from
            # erp-openapi.yaml; only the two listed are exposed.
            "type": "openapi",
            "spec": str(Path(__file__).with_name("erp-openapi.yaml")),
            "base_url": erp_base_url,
            "allow_private": True,
            "timeout": 5,
            "retries": {"attempts": 3, "base_delay": 0.05, "max_delay": 0.5},
            "breaker": {"failures": 5, "reset_after": 10},
            "operations": {
                "getBalance": {
                    "name": "get_balance",
                    "description": "The customer's account balance",
                    "fields": {"balance": "balance", "currency": "currency"},
                    "cache_ttl": 10,
                    "cache_keys": ["balance:{customer_id}"],
                },
                "makePayment": {
                    "name": "make_payment",
                    "description": "Pay an amount towards the customer's balance",
                    "fields": {
                        "payment_id": "payment_id",
                        "amount": "amount",
                        "currency": "currency",
                        "balance": "balance",
                    },
                    "invalidates": ["balance:{customer_id}"],
                },
            },
        },
    }
