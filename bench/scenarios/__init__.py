"""Benchmark scenarios; each module has ``run(quick: bool) -> Result``."""

SCENARIOS = (
    "roundtrip",
    "idle",
    "fanout",
    "events",
    "storm",
    "connectors",
    "matcher",
    "outbound",
    "web",
)
