"""matcher: the intent-matcher benchmark (bench/matcher.py, owned elsewhere); no bare baseline."""

from __future__ import annotations

import asyncio
import inspect

from bench.common import progress
from bench.report import Result, Row


def run(quick: bool) -> Result:
    from bench import matcher as m

    progress("matcher: running bench/matcher.py run()")
    out = m.run(quick)
    if inspect.isawaitable(out):
        out = asyncio.run(out)  # type: ignore[arg-type]
    res = Result("matcher", data=out)
    for key, unit, goal in (
        ("p50_us", "us", ""),
        ("p99_us", "us", "<=1000us"),
        ("turns_per_s", "turns/s", ""),
    ):
        if key in out:
            res.rows.append(
                Row(key.replace("_us", "").replace("_", " "), float(out[key]), None, unit, goal)
            )
    return res
