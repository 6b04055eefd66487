"""The domain-expansion comparison report: tables, the lambda trade-off plot, accuracy matrices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medimg.report import Report, new_figure

__all__ = ["write_compare_report", "write_federated_report"]


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
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    *,
    settings: Mapping[str, Any],
    reset: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """``OUT/report.html`` for :func:`pipelines.continual_expansion.compare_arms` (generic over the
    rows); ``reset``: rows of :func:`continual.layer_reset.reset_attribution` per run."""
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
    if reset:
        report.heading("Where the forgetting is: layer reset")
        report.table(
            list(reset),
            list(reset[0]),
            caption="Each adapted model (first seed) with one depth group of layers put back to the old model "
            "(Ramasesh et al. 2021): a reset that restores the old site locates the forgetting; if it also undoes "
            "the new site, the two sites compete for those layers. 'none' = the adapted model, 'all' = the old one.",
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


def _matrix_figure(matrix: Mapping[str, Mapping[str, float]], sites: Sequence[str], metric: str) -> Any:
    """Heat map of the cross-site matrix: rows = models, columns = test sites."""
    import numpy as np

    models = list(matrix)
    values = np.array([[float(matrix[m].get(s, float("nan"))) for s in sites] for m in models])
    fig, axes = new_figure(width=1.6 + 1.1 * len(sites), height=0.9 + 0.45 * len(models))
    ax = axes[0, 0]
    image = ax.imshow(values, cmap="viridis", vmin=min(0.0, float(np.nanmin(values))), vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(sites)), sites, fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.set_xlabel("test site")
    for i in range(len(models)):
        for j in range(len(sites)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    return fig


def _rounds_figure(rounds: Sequence[Mapping[str, Any]], metric: str) -> Any:
    """Validation metric of the global model per round, per site and weighted mean."""
    fig, axes = new_figure(width=6.5, height=3.6)
    ax = axes[0, 0]
    for site in sorted({str(r["site"]) for r in rounds}):
        points = [
            (int(r["round"]), float(r[metric]))
            for r in rounds
            if str(r["site"]) == site and r.get(metric) not in (None, "")
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=site, linewidth=2.5 if site.startswith("(") else 1.2)
    ax.set_xlabel("round")
    ax.set_ylabel(f"validation {metric} of the global model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _interval(entry: Mapping[str, Any] | None, key: str = "value", ci: str = "ci95", fmt: str = "{:+.3f}") -> str:
    """``value [lo, hi]`` of a summary entry, or an empty string."""
    if not entry or entry.get(key) is None:
        return ""
    lo, hi = (entry.get(ci) or [float("nan")] * 2)[:2]

    def text(value: Any) -> str:
        return fmt.format(value) if value is not None and value == value else "n/a"

    return f"{text(entry[key])} [{text(lo)}, {text(hi)}]"


def _gain_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per claim of a federated summary (local gain, generalization gains) and the
    personalized own-site score, with intervals and the paper's figure beside them."""
    paper = summary.get("paper", {})
    compared = summary.get("bn_compared", {})
    rows = []
    claims = (
        ("local_gain", "local gain: federated vs local-only, own test site", "federated_own", "local_own",
         paper.get("local_gain_relative")),
        ("generalizability_gain", "generalization: held-out federation vs local-only, on sites never trained on",
         "federated_heldout", "local_unseen", paper.get("generalizability_gain")),
        ("generalizability_gain_tta", "the same, both with test-time BN on the unseen site",
         "federated_heldout", "local_unseen", None),
    )  # fmt: skip
    for key, label, fl, local, reported in claims:
        entry = summary.get(key)
        if not entry:
            continue
        bn = compared.get(key, {})
        rows.append(
            {
                "quantity": label,
                "BN (federated / local)": " / ".join(str(v) for v in bn.values()),
                "federated": _interval(entry.get(fl), fmt="{:.3f}"),
                "local-only": _interval(entry.get(local), fmt="{:.3f}"),
                "gain (95% CI)": _interval(entry),
                "relative (95% CI)": _interval(entry, "relative", "relative_ci95", "{:+.1%}"),
                "status": entry.get("status", ""),
                "paper (relative)": "" if reported is None else f"{reported:+.1%}",
            }
        )
    personal = summary.get("personalized_own_site")
    if personal:
        rows.append({"quantity": "personalized own-site score (FedBN, each site's own BN; not generalization)",
                     "BN (federated / local)": "site_own", "federated": _interval(personal, fmt="{:.3f}")})  # fmt: skip
    return rows


def write_federated_report(
    out: Path,
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    rounds_csv: Path | None = None,
) -> Path:
    """``OUT/report.html`` of a federated simulation: gains with intervals beside the paper's, the
    cross-site matrix (mean over seeds), every score, and the first seed's rounds."""
    import csv

    metric = str(summary.get("metric", "kappa_linear"))
    sites = list(summary.get("sites", []))
    report = Report("Federated training: cross-site evaluation", subtitle=", ".join(sites))
    for warning in summary.get("data_warnings") or []:
        report.text(f"Data warning: {warning}", warning=True)  # single-class or duplicated sites affect the gains
    gains = _gain_rows(summary)
    if gains:
        boot = summary.get("bootstrap", {})
        report.heading("Gains of the federated model")
        report.table(
            gains,
            list(gains[0]),
            caption=f"metric: {metric}; seeds {summary.get('seeds')}; 95% percentile bootstrap over "
            f"{boot.get('replicates')} replicates ({boot.get('resampled')}). {boot.get('status', '')}. Paper: Roth "
            "et al. 2020 (7 real institutions; its federated model had trained on every site).",
        )
    if summary.get("generalizability_note"):
        report.text(f"Generalization gain: {summary['generalizability_note']}.")
    matrix = summary.get("matrix", {})
    if matrix:
        report.heading("Cross-site matrix")
        report.figure(
            _matrix_figure(matrix, sites, metric),
            f"{metric} of each model [BN statistics used] (row) on each site's test split, mean over seeds.",
        )
    if rows:
        report.table(list(rows), list(rows[0]), caption="cross_site.csv")
    if rounds_csv is not None and rounds_csv.is_file():
        with rounds_csv.open(newline="") as fh:
            rounds = list(csv.DictReader(fh))
        if rounds and metric in rounds[0]:
            report.heading("Rounds")
            report.figure(
                _rounds_figure(rounds, metric),
                "Each site's validation of the global model after every round (first seed, all sites).",
            )
    report.heading("Settings")
    settings = summary.get("settings", {})
    report.table([{"setting": k, "value": str(v)} for k, v in settings.items()], ["setting", "value"])
    return report.write(out / "report.html")
