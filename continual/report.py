"""The domain-expansion comparison report: tables, the lambda trade-off plot, accuracy matrices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medimg.report import Report, new_figure

__all__ = ["write_compare_report"]


def _tradeoff_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Old-site kappa after adaptation against new-site kappa after, one point per (arm, lambda)."""
    from continual.metrics import tradeoff_curve

    fig, axes = new_figure(width=6.5, height=4.5)
    ax = axes[0, 0]
    for arm in sorted({str(r["arm"]) for r in rows}):
        points = tradeoff_curve(list(rows), arm)
        if not points:
            continue
        xs = [p["new_after"] for p in points]
        ys = [p["old_after"] for p in points]
        ax.plot(xs, ys, marker="o", label=arm, linestyle="-" if len(points) > 1 else "none")
    ax.set_xlabel("new-site kappa after (plasticity)")
    ax.set_ylabel("old-site kappa after (retention)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_compare_report(
    out: Path, rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], *, settings: Mapping[str, Any]
) -> Path:
    """``OUT/report.html`` for :func:`pipelines.continual_expansion.compare_arms` (generic over the rows)."""
    report = Report("Domain expansion: forgetting and plasticity per arm", subtitle=str(settings.get("new", "")))
    report.heading("Summary (mean over seeds)")
    if summary:
        report.table(list(summary), list(summary[0]))
    report.heading("Trade-off")
    if rows:
        report.figure(
            _tradeoff_figure(rows),
            "Each point: an arm (EWC arms: one point per lambda, joined). Up = less forgetting, right = better "
            "on the new site.",
        )
    report.heading("Accuracy matrices (R[stage][site], linear kappa)")
    for row in rows:
        report.table(
            [
                {
                    "stage": "after training on the old site",
                    "old site": row.get("old_kappa_before"),
                    "new site": row.get("new_kappa_before"),
                },
                {
                    "stage": f"after {row['arm']} (lambda {row.get('lambda')}, seed {row.get('seed')})",
                    "old site": row.get("old_kappa_after"),
                    "new site": row.get("new_kappa_after"),
                },
            ],  # fmt: skip
            ["stage", "old site", "new site"],
        )
    report.heading("All runs")
    if rows:
        report.table(list(rows), list(rows[0]), caption="arms.csv")
    report.heading("Settings")
    report.table([{"setting": k, "value": str(v)} for k, v in settings.items()], ["setting", "value"])
    return report.write(out / "report.html")
