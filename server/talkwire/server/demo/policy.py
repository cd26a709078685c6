"""The demo's subscription policy: a customer may follow only their own data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEMO_POLICY"]

DEMO_POLICY: Mapping[str, Any] = {
    "default": "deny",
    "rules": [
        {"key": "customer:{user.customer_id}"},
        {"key": "balance:{user.customer_id}"},
        {
            "key": "order:{order_id}",
            "check": {
                "connector": "crm",
                "operation": "order_owner",
                "params": {"order_id": "{order_id}"},
                "expect": {"customer_id": "{user.customer_id}"},
            },
        },
        {
            "key": "ticket:{ticket_id}",
            "check": {
                "connector": "crm",
                "operation": "ticket_status",
                "params": {"ticket_id": "{ticket_id}", "customer_id": "{user.customer_id}"},
                "expect": {"ticket_id": "{ticket_id}"},
            },
        },
    ],
}
"""The ``policy:`` section of the demo (``{user.customer_id}`` is the caller's claim)."""
