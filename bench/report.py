"""Result rows, the printed table, JSON and PNG plots."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    metric: str
    ours: float | None
    bare: float | None
    unit: str
    goal: str = ""  # e.g. "<=1.3x" (ratio goal) or "<=10ms" (absolute goal on ours)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.bare is None or not self.bare:
            return None
        return self.ours / self.bare

    def verdict(self) -> str:
        if not self.goal:
            return ""
        limit_txt = self.goal.lstrip("<>=")
        try:
            if limit_txt.endswith("x"):
                value, limit = self.ratio, float(limit_txt[:-1])
            else:
                value, limit = self.ours, float("".join(c for c in limit_txt if c in "0123456789."))
        except ValueError:
            return ""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "?"
        ok = value <= limit if self.goal.startswith("<") else value >= limit
        return "ok" if ok else "MISS"


@dataclass
class Result:
    scenario: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    # plot title -> {label: samples (ms)}
    cdfs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # plot title -> {label: [(x, y), ...]}
    lines: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    skipped: str = ""
    seconds: float = 0.0


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table(results: list[Result]) -> str:
    head = f"{'scenario':<11} {'metric':<34} {'ours':>10} {'bare':>10} {'unit':<8} {'ratio':>7} {'goal':>8}  "
    lines = [head, "-" * len(head)]
    for r in results:
        if r.skipped:
            lines.append(f"{r.scenario:<11} SKIPPED: {r.skipped}")
            continue
        for row in r.rows:
            ratio = row.ratio
            lines.append(
                f"{r.scenario:<11} {row.metric:<34} {_fmt(row.ours):>10} {_fmt(row.bare):>10} "
                f"{row.unit:<8} {(f'{ratio:.2f}x' if ratio is not None else '-'):>7} "
                f"{row.goal:>8} {row.verdict():<4}{(' ' + row.note) if row.note else ''}"
            )
    return "\n".join(lines)


def write(results: list[Result], out: Path, meta: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in results:
        doc = {
            "scenario": r.scenario,
            "skipped": r.skipped,
            "seconds": r.seconds,
            "rows": [
                {**asdict(row), "ratio": row.ratio, "verdict": row.verdict()} for row in r.rows
            ],
            "data": r.data,
            "meta": meta,
        }
        p = out / f"{r.scenario}.json"
        p.write_text(json.dumps(doc, indent=2, default=str))
        written.append(p)
        written += _plots(r, out)
    summary = out / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "meta": meta,
                "table": table(results),
                "results": {
                    r.scenario: {
                        "skipped": r.skipped,
                        "rows": [
                            {**asdict(x), "ratio": x.ratio, "verdict": x.verdict()} for x in r.rows
                        ],
                    }
                    for r in results
                },
            },
            indent=2,
            default=str,
        )
    )
    written.append(summary)
    return written


def _plots(r: Result, out: Path) -> list[Path]:
    if not r.cdfs and not r.lines:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for i, (title, series) in enumerate(r.cdfs.items()):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, samples in series.items():
            s = sorted(samples)
            if not s:
                continue
            ys = [(k + 1) / len(s) for k in range(len(s))]
            ax.plot(s, ys, label=f"{label} (n={len(s)})")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction <= x")
        ax.set_title(f"{r.scenario}: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        p = out / f"{r.scenario}-cdf{i}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    for i, (title, series) in enumerate(r.lines.items()):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, pts in series.items():
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        ax.set_title(f"{r.scenario}: {title}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        p = out / f"{r.scenario}-line{i}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths
