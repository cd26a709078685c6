"""connectors: the connector-overhead benchmark (bench/connectors_overhead.py, owned elsewhere)."""

from __future__ import annotations

import asyncio
import inspect

from bench.common import progress
from bench.report import Result, Row


def run(quick: bool) -> Result:
    from bench import connectors_overhead

    progress("connectors: running bench/connectors_overhead.py run()")
    out = connectors_overhead.run(quick)
    if inspect.isawaitable(out):
        out = asyncio.run(out)  # type: ignore[arg-type]
    res = Result("connectors", data=out)
    goal = f"<={out.get('goal', 1.15)}x"
    for name in ("sql", "rest", "openapi", "mcp"):
        r = out.get(name)
        if not r:
            continue
        # "bare" column = direct SQLAlchemy / httpx
        res.rows.append(
            Row(f"{name} p50 (vs direct)", r["ours_p50_us"], r["direct_p50_us"], "us", goal)
        )
        res.rows.append(Row(f"{name} p99 (vs direct)", r["ours_p99_us"], r["direct_p99_us"], "us"))
    return res
