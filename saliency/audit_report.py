"""The saliency audit's report: figures and tables over the audit's per-image results.

One self-contained ``report.html`` (figures as embedded PNGs) and, when the ``pdf`` extra
(WeasyPrint) is installed, the same report as ``report.pdf``. Every figure is drawn from the rows
written to the CSV files beside it, so a reader can redraw or re-test any of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medimg.report import Report, new_figure

__all__ = ["pass_matrix_rows", "write_pdf", "write_report"]

_MARK = {True: "pass", False: "FAIL", None: "n/a"}


def _label(method: str) -> str:
    """Display name of a method (the eight post-hoc methods and the trainable attention)."""
    from saliency.methods import LABELS

    return "Attention (trainable)" if method == "attention" else LABELS.get(method, method)


def pass_matrix_rows(matrix: Mapping[str, Mapping[str, bool | None]], criteria: Sequence[str]) -> list[dict[str, str]]:
    """Rows ``{"method": label, criterion label: pass/FAIL/n/a}`` of the pass/fail matrix."""
    from saliency.audit import CRITERION_LABELS

    return [
        {"method": _label(m), **{CRITERION_LABELS[c]: _MARK[row.get(c)] for c in criteria}} for m, row in matrix.items()
    ]


def _slice(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A 2-D view: the array itself, or for 3-D the slice (last axis) with the most mask voxels."""
    if array.ndim == 2:
        return array
    if mask is not None and mask.any():
        k = int(np.argmax(mask.reshape(-1, mask.shape[-1]).sum(axis=0)))
    else:
        k = array.shape[-1] // 2
    return array[..., k]


def _examples_figure(data: Any, maps: Mapping[str, Any], methods: Sequence[str], count: int) -> Any:
    masks = data.masks
    order = [i for i in range(len(data.ids)) if masks is None or np.asarray(masks[i]).any()] or list(
        range(len(data.ids))
    )
    chosen = order[: max(1, count)]
    fig, axes = new_figure(
        width=1.6 * (len(methods) + 1), height=1.7 * len(chosen), ncols=len(methods) + 1, nrows=len(chosen)
    )
    axes = np.atleast_2d(axes)
    for r, i in enumerate(chosen):
        mask = None if masks is None else np.asarray(masks[i], dtype=bool)
        image = data.images[i, 0].numpy()
        image = data.display(_slice(image, mask))
        shown_mask = None if mask is None else data.display(_slice(mask, mask))
        lo, hi = np.percentile(image, [1, 99])
        for c in range(len(methods) + 1):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
            if c > 0:
                batch = maps["trained"][methods[c - 1]]
                heat = data.display(_slice(np.asarray(batch.maps[i]), mask))
                ax.imshow(np.nan_to_num(heat), cmap="jet", alpha=0.45, vmin=0, vmax=1)
                title = _label(methods[c - 1]) + (" (degenerate)" if batch.degenerate[i] else "")
            else:
                title = str(data.ids[i])[:18]
            if shown_mask is not None and shown_mask.any():
                ax.contour(shown_mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
            if r == 0 or c == 0:
                ax.set_title(title, fontsize=7)
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def _box_figure(groups: Sequence[tuple[str, np.ndarray]], ylabel: str, line: float | None = None) -> Any:
    fig, axes = new_figure(width=max(6.0, 0.55 * len(groups) + 2), height=3.4)
    ax = axes[0, 0]
    values = [v[np.isfinite(v)] for _, v in groups]
    ax.boxplot([v if v.size else [np.nan] for v in values], showmeans=True, meanline=True)
    ax.set_xticks(range(1, len(groups) + 1), [name for name, _ in groups], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if line is not None:
        ax.axhline(line, color="tab:blue", alpha=0.4, linewidth=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _randomization_figure(
    rand_rows: Sequence[Mapping[str, Any]], baselines: Mapping[str, np.ndarray], methods: Sequence[str]
) -> Any:
    from saliency.audit import _finite_mean

    ncols = min(4, len(methods))
    nrows = int(np.ceil(len(methods) / ncols))
    fig, axes = new_figure(width=3.0 * ncols, height=2.6 * nrows, ncols=ncols, nrows=nrows)
    axes = np.atleast_1d(axes).ravel()
    for ax, method in zip(axes, methods, strict=False):
        rows = [r for r in rand_rows if r["method"] == method and r["stage_index"] > 0]
        stage_names = {int(r["stage_index"]): r["stage"] for r in rows}
        xs = [0, *sorted(stage_names)]
        for model in sorted({r["model"] for r in rows}):
            ys = [1.0] + [
                _finite_mean([r["ssim"] for r in rows if r["model"] == model and r["stage_index"] == k]) for k in xs[1:]
            ]
            ax.plot(xs, ys, marker="o", markersize=3, label=model)
        base = baselines.get(method)
        if base is not None and np.isfinite(base).any():
            mean, sd = float(np.nanmean(base)), float(np.nanstd(base))
            ax.axhspan(mean - sd, mean + sd, color="grey", alpha=0.25)
            ax.axhline(mean, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(xs, ["original", *[stage_names[k] for k in xs[1:]]], rotation=60, ha="right", fontsize=6)
        ax.set_ylim(-0.1, 1.05)
        ax.set_title(_label(method), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(methods) :]:
        ax.set_axis_off()
    axes[0].legend(fontsize=7)
    axes[0].set_ylabel("mean SSIM vs original")
    fig.tight_layout()
    return fig


def _matrix_figure(matrix: Mapping[str, Mapping[str, bool | None]], criteria: Sequence[str]) -> Any:
    from saliency.audit import CRITERION_LABELS

    methods = list(matrix)
    grid = np.array([[{True: 1.0, False: 0.0, None: 0.5}[matrix[m].get(c)] for c in criteria] for m in methods])
    fig, axes = new_figure(width=1.8 * len(criteria) + 2.5, height=0.42 * len(methods) + 1.2)
    ax = axes[0, 0]
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for r, m in enumerate(methods):
        for c, crit in enumerate(criteria):
            ax.text(c, r, _MARK[matrix[m].get(crit)], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(criteria)), [CRITERION_LABELS[c] for c in criteria], fontsize=8)
    ax.set_yticks(range(len(methods)), [_label(m) for m in methods], fontsize=8)
    fig.tight_layout()
    return fig


def _kind(method: str) -> str:
    return "trainable" if method == "attention" else "post-hoc"


def _means(rows: Sequence[Mapping[str, Any]], method: str | None) -> dict[str, Any]:
    chosen = [r for r in rows if method is None or (r["method"] == method and r["source"] == "trained")]
    ap = np.asarray([r["average_precision"] for r in chosen], dtype=float)
    trap = np.asarray([r["trapezoid"] for r in chosen], dtype=float)
    finite = np.isfinite(ap)
    return {
        "mean_average_precision": float(ap[finite].mean()) if finite.any() else float("nan"),
        "mean_trapezoid": float(trap[np.isfinite(trap)].mean()) if np.isfinite(trap).any() else float("nan"),
        "n": int(finite.sum()),
    }


def write_report(
    out: Path,
    *,
    title: str,
    data: Any,
    maps: Mapping[str, Mapping[str, Any]],
    methods: Sequence[str],
    summary: Sequence[Mapping[str, Any]],
    matrix: Mapping[str, Mapping[str, bool | None]],
    loc_rows: Sequence[Mapping[str, Any]],
    rand_rows: Sequence[Mapping[str, Any]],
    baselines: Mapping[str, np.ndarray],
    pair_rows: Mapping[str, Sequence[Mapping[str, Any]]],
    settings: Mapping[str, Any],
    variant_rows: Sequence[Mapping[str, Any]] = (),
    criteria: Sequence[str],
    notes: Sequence[str],
    config: Any,
) -> dict[str, Path]:
    """Write ``report.html`` (and ``report.pdf`` when WeasyPrint is installed); returns the paths."""
    from saliency.audit import CRITERION_LABELS

    report = Report(
        title,
        subtitle=f"{len(data.ids)} images{' - ' + data.description if data.description else ''}; "
        f"methods: {', '.join(_label(m) for m in methods)}; preset '{config.preset}'.",
    )
    report.heading("Pass/fail matrix")
    if criteria:
        report.figure(_matrix_figure(matrix, criteria), "Each method against each criterion (rules below).")
        report.table(pass_matrix_rows(matrix, criteria), ["method", *[CRITERION_LABELS[c] for c in criteria]])
        rules = {row["criterion"]: row["rule"] for row in summary if not row["rule"].startswith("informative")}
        report.table(
            [{"criterion": CRITERION_LABELS[c], "rule": rules.get(c, "")} for c in criteria],
            ["criterion", "rule"],
            caption="Rules",
        )
    for note in notes:
        report.text(note, warning=True)
    degenerate = [
        f"{_label(m)}: {int(np.sum(maps['trained'][m].degenerate))}"
        for m in methods
        if np.sum(maps["trained"][m].degenerate)
    ]
    report.text(
        "Degenerate maps (constant or not finite) of the trained model: "
        + (", ".join(degenerate) if degenerate else "none")
        + ". Their scores are NaN; every table keeps them with a flag and the summary counts them."
    )

    report.heading("Examples")
    report.figure(
        _examples_figure(data, maps, methods, config.examples),
        "Post-processed maps of the trained model (jet, 0-1) over the input; white outline: ground truth.",
    )

    if "localization" in criteria and loc_rows:
        report.heading("Localisation utility (AUPRC)")
        groups: list[tuple[str, np.ndarray]] = []
        for method in methods:
            for source in ("trained", "untrained"):
                values = [r["average_precision"] for r in loc_rows if r["method"] == method and r["source"] == source]
                if values:
                    groups.append((f"{_label(method)} ({source})", np.asarray(values, dtype=float)))
        for source, label in (("prior", "average-mask prior"), ("localizer", "supervised localiser")):
            values = [r["average_precision"] for r in loc_rows if r["source"] == source]
            if values:
                groups.append((label, np.asarray(values, dtype=float)))
        report.figure(
            _box_figure(groups, "average precision per image"),
            "Per-image average precision of each map against the ground-truth mask (box: quartiles, "
            "solid line: median, dashed: mean). Table: localization.csv (also the paper's trapezoid AUPRC).",
        )
        comparison = []
        for method in methods:
            for source in ("trained", "untrained"):
                values = [r["average_precision"] for r in loc_rows if r["method"] == method and r["source"] == source]
                if values and source == "trained":
                    comparison.append({"maps": _label(method), "kind": _kind(method), **_means(loc_rows, method)})
        for source, label, kind in (
            ("prior", "average-mask prior", "baseline"),
            ("localizer", "supervised localiser", "baseline (fully supervised)"),
        ):
            rows = [r for r in loc_rows if r["source"] == source]
            if rows:
                comparison.append({"maps": label, "kind": kind, **_means(rows, None)})
        report.table(
            comparison,
            ["maps", "kind", "mean_average_precision", "mean_trapezoid", "n"],
            caption="Comparison on the same images: mean average precision (primary) and the paper's trapezoid AUPRC",
        )
        if variant_rows:
            report.table(
                list(variant_rows),
                ["model", "method", "mean_average_precision", "mean_trapezoid", "n_degenerate", "source"],
                caption="Differently trained models on the same images (e.g. attention with 0%, 10% and 100% box "
                "supervision)",
            )
        report.table(
            [r for r in summary if r["criterion"] == "localization"],
            ["method", "baseline", "value", "baseline_value", "p_value", "p_holm", "n", "n_degenerate", "passed"],
            caption="Mean average precision of the trained model against each baseline (one-sided paired Wilcoxon)",
        )

    if "randomization" in criteria and rand_rows:
        report.heading("Sensitivity to cascading weight randomisation")
        report.figure(
            _randomization_figure(rand_rows, baselines, methods),
            "Mean SSIM between each image's map under the progressively randomised network and under the "
            "trained one (top-down, cumulative). Grey band: inter-image SSIM baseline (mean +/- sd); a "
            f"trustworthy method falls below it. SSIM data range {config.data_range}. Table: randomization.csv.",
        )

    for criterion in ("repeatability", "reproducibility"):
        rows = pair_rows.get(criterion) or []
        if criterion not in criteria or not rows:
            continue
        report.heading(CRITERION_LABELS[criterion])
        what = (
            "two replicates of one architecture trained with different seeds"
            if criterion == "repeatability"
            else ("two architectures")
        )
        groups = [(_label(m), np.asarray([r["ssim"] for r in rows if r["method"] == m], dtype=float)) for m in methods]
        report.figure(
            _box_figure(groups, "SSIM per image", line=config.repeat_threshold),
            f"Per-image SSIM between the maps of {what}; blue line: the {config.repeat_threshold} reference. "
            f"Table: {criterion}.csv.",
        )

    report.heading("Summary")
    report.table(
        summary,
        [
            "method",
            "criterion",
            "statistic",
            "value",
            "baseline",
            "baseline_value",
            "p_holm",
            "n",
            "n_degenerate",
            "passed",
        ],
        caption="summary.csv",
    )
    report.heading("Settings")
    flat = [{"setting": k, "value": json.dumps(v, default=str)} for k, v in settings.get("config", {}).items()]
    report.table(flat, ["setting", "value"], caption="Audit")
    report.table(
        [
            {"method": _label(m), "passes per image": settings["passes_per_image"][m], "settings": json.dumps(s)}
            for m, s in settings["methods"].items()
        ],
        ["method", "passes per image", "settings"],
        caption="Methods (each map then post-processed as stated in its settings)",
    )
    if settings.get("randomization"):
        report.table(
            [{"setting": k, "value": json.dumps(v, default=str)} for k, v in settings["randomization"].items()],
            ["setting", "value"],
            caption="Randomisation",
        )
    report.table(
        [{"role": k, **v} for k, v in settings["models"].items()],
        ["role", "architecture", "source", "layer"],
        caption="Models",
    )
    files = {"report.html": report.write(out / "report.html")}
    pdf = write_pdf(out / "report.html", out / "report.pdf")
    if pdf is not None:
        files["report.pdf"] = pdf
    return files


def write_pdf(html_path: Path, pdf_path: Path) -> Path | None:
    """``report.pdf`` from the HTML with WeasyPrint (the ``pdf`` extra); None when it is not installed."""
    try:
        from weasyprint import HTML  # type: ignore[import-not-found]
    except (ImportError, OSError):  # not installed, or its system libraries (pango) are missing
        return None
    from medimg.writers import atomic_path

    with atomic_path(pdf_path) as tmp:
        HTML(filename=str(html_path)).write_pdf(str(tmp))
    return pdf_path
