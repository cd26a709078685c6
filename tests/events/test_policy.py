"""ConfigPolicy: pattern bindings, claims and a real SQL connector check on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from talkwire.connectors.registry import ConnectorRegistry
from talkwire.server.errors import ConfigError
from talkwire.server.identity import Identity
from talkwire.server.policy import ConfigPolicy, from_config

ALICE = Identity("alice", {"customer_id": "c-1"})
BOB = Identity("bob", {"customer_id": "c-2"})


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[ConnectorRegistry]:
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id TEXT)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(1001, "c-1"), (2002, "c-2")])
    sections = {
        "crm": {
            "type": "sql",
            "url": f"sqlite+aiosqlite:///{db}",
            "read_only": True,
            "operations": {
                "order_owner": {
                    "sql": "SELECT customer_id FROM orders WHERE id = :order_id",
                    "params": {"order_id": {"type": "integer"}},
                    "result": "row",
                }
            },
        }
    }
    async with ConnectorRegistry(sections) as reg:
        yield reg


DEMO = {
    "rules": [
        {"key": "customer:{user.customer_id}"},
        {
            "key": "order:{order_id}",
            "check": {
                "connector": "crm",
                "operation": "order_owner",
                "params": {"order_id": "{order_id}"},
                "expect": {"customer_id": "{user.customer_id}"},
            },
        },
    ]
}


async def test_claim_bound_rule(registry: ConnectorRegistry) -> None:
    policy = from_config(DEMO, registry)
    assert await policy.allowed(ALICE, "customer:c-1")
    assert not await policy.allowed(ALICE, "customer:c-2")
    assert not await policy.allowed(Identity("anon", {}), "customer:")


async def test_connector_check(registry: ConnectorRegistry) -> None:
    policy = ConfigPolicy.from_config(DEMO, registry)
    assert await policy.allowed(ALICE, "order:1001")
    assert not await policy.allowed(ALICE, "order:2002")  # another customer's order
    assert await policy.allowed(BOB, "order:2002")
    assert not await policy.allowed(ALICE, "order:9999")  # no such order
    assert not await policy.allowed(ALICE, "order:abc")  # invalid parameter -> deny
    assert not await policy.allowed(ALICE, "ticket:1")  # no rule -> default deny


async def test_defaults_and_config_errors() -> None:
    assert not await from_config(None).allowed(ALICE, "customer:c-1")
    allow_all = from_config({"default": "allow"})
    assert await allow_all.allowed(ALICE, "anything:1")
    with pytest.raises(ConfigError, match=r"policy\.rules\[1\]\.check"):
        from_config(DEMO, None)
    with pytest.raises(ConfigError, match=r"policy\.default"):
        from_config({"default": "maybe"})
    with pytest.raises(ConfigError, match=r"policy\.rules\[0\]\.key"):
        from_config({"rules": [{"key": "order:{bad"}]})


async def test_both_subject_spellings_bind_the_caller() -> None:
    """``{user.sub}`` (documented) and ``{user.subject}`` (deprecated) are the subject."""
    policy = from_config({"rules": [{"key": "inbox:{user.sub}"}, {"key": "legacy:{user.subject}"}]})
    for prefix in ("inbox", "legacy"):
        assert await policy.allowed(ALICE, f"{prefix}:alice")
        assert not await policy.allowed(ALICE, f"{prefix}:bob")
    with pytest.raises(ConfigError, match=r"policy\.rules\[0\]\.key: filters are not allowed"):
        from_config({"rules": [{"key": "inbox:{user.sub|upper}"}]})
