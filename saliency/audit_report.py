"""The saliency audit's report: figures and tables over the audit's per-image results.

One self-contained ``report.html`` (figures as embedded PNGs) and, when the ``pdf`` extra
(WeasyPrint) is installed, the same report as ``report.pdf``. Every figure is drawn from the rows
written to the CSV files beside it, so a reader can redraw or re-test any of them. The report
opens with what limits its verdicts: criteria that a model-blind control passes (not
discriminating on this setting), and anything skipped or substituted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medimg.report import Report, new_figure
from saliency.audit_result import AuditResult
from saliency.verdicts import CRITERION_LABELS, RandomizationScores, finite_mean, method_label

__all__ = ["pass_matrix_rows", "write_pdf", "write_report"]

_MARK = {True: "pass", False: "FAIL", None: "n/a"}


def _criterion_header(criterion: str, flagged: Mapping[str, Sequence[str]]) -> str:
    return CRITERION_LABELS[criterion] + (" (not discriminating)" if criterion in flagged else "")


def pass_matrix_rows(
    matrix: Mapping[str, Mapping[str, bool | None]],
    criteria: Sequence[str],
    flagged: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, str]]:
    """Rows ``{"method": label, criterion label: pass/FAIL/n/a}`` of the pass/fail matrix.

    A criterion that a control passes (``flagged``) is headed "... (not discriminating)".
    """
    flagged = flagged or {}
    return [
        {"method": method_label(m), **{_criterion_header(c, flagged): _MARK[row.get(c)] for c in criteria}}
        for m, row in matrix.items()
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
        image = data.display(_slice(data.images[i, 0].numpy(), mask))
        shown_mask = None if mask is None else data.display(_slice(mask, mask))
        lo, hi = np.percentile(image, [1, 99])
        for c in range(len(methods) + 1):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
            if c > 0:
                batch = maps["trained"][methods[c - 1]]
                heat = data.display(_slice(np.asarray(batch.maps[i]), mask))
                ax.imshow(np.nan_to_num(heat), cmap="jet", alpha=0.45, vmin=0, vmax=1)
                title = method_label(methods[c - 1]) + (" (degenerate)" if batch.degenerate[i] else "")
            else:
                title = str(data.ids[i])[:18]
            if shown_mask is not None and shown_mask.any():
                ax.contour(shown_mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
            if r == 0 or c == 0:
                ax.set_title(title, fontsize=6)
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def _box_figure(
    groups: Sequence[tuple[str, np.ndarray]], ylabel: str, lines: Sequence[float | None] | float | None = None
) -> Any:
    """Box plots; ``lines``: one horizontal line for all, or one short line per box (None: none)."""
    fig, axes = new_figure(width=max(6.0, 0.55 * len(groups) + 2), height=3.4)
    ax = axes[0, 0]
    values = [v[np.isfinite(v)] for _, v in groups]
    ax.boxplot([v if v.size else [np.nan] for v in values], showmeans=True, meanline=True)
    ax.set_xticks(range(1, len(groups) + 1), [name for name, _ in groups], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if isinstance(lines, (int, float)):
        ax.axhline(float(lines), color="tab:blue", alpha=0.4, linewidth=2)
    elif lines is not None:
        for k, line in enumerate(lines, start=1):
            if line is not None and np.isfinite(line):
                ax.hlines(line, k - 0.4, k + 0.4, color="tab:blue", alpha=0.6, linewidth=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _randomization_figure(scores: Mapping[str, RandomizationScores], methods: Sequence[str]) -> Any:
    shown = [m for m in methods if m in scores]
    ncols = min(4, len(shown))
    nrows = int(np.ceil(len(shown) / ncols))
    fig, axes = new_figure(width=3.0 * ncols, height=2.6 * nrows, ncols=ncols, nrows=nrows)
    axes = np.atleast_1d(axes).ravel()
    for ax, method in zip(axes, shown, strict=False):
        score = scores[method]
        xs = np.arange(len(score.states) + 1)
        for values in score.ssim.values():
            ys = [1.0] + [finite_mean(row) for row in values]
            ax.plot(xs, ys, color="tab:blue", alpha=0.3, linewidth=0.8, label=None)
        mean, sd = score.curve()
        ax.plot(xs, [1.0, *mean], marker="o", markersize=3, color="tab:blue", label="mean over models")
        if np.isfinite(sd).any():
            ax.fill_between(xs[1:], mean - sd, mean + sd, color="tab:blue", alpha=0.2, label="+/- SD")
        base = score.baseline_mean()
        if np.isfinite(base):
            ax.axhline(base, color="grey", linestyle="--", linewidth=1, label="inter-image baseline")
        ax.set_xticks(xs, ["original", *score.states], rotation=60, ha="right", fontsize=6)
        ax.set_ylim(-0.1, 1.05)
        ax.set_title(method_label(method), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(shown) :]:
        ax.set_axis_off()
    axes[0].legend(fontsize=6)
    axes[0].set_ylabel("mean SSIM vs original")
    fig.tight_layout()
    return fig


def _matrix_figure(
    matrix: Mapping[str, Mapping[str, bool | None]], criteria: Sequence[str], flagged: Mapping[str, Any]
) -> Any:
    methods = list(matrix)
    grid = np.array([[{True: 1.0, False: 0.0, None: 0.5}[matrix[m].get(c)] for c in criteria] for m in methods])
    fig, axes = new_figure(width=1.9 * len(criteria) + 3.0, height=0.42 * len(methods) + 1.2)
    ax = axes[0, 0]
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for r, m in enumerate(methods):
        for c, crit in enumerate(criteria):
            ax.text(c, r, _MARK[matrix[m].get(crit)], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(criteria)), [_criterion_header(c, flagged).replace(" (", "\n(") for c in criteria])
    ax.tick_params(axis="x", labelsize=7)
    ax.set_yticks(range(len(methods)), [method_label(m) for m in methods], fontsize=8)
    fig.tight_layout()
    return fig


def _source_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ap = np.asarray([r["average_precision"] for r in rows], dtype=float)
    trap = np.asarray([r["trapezoid"] for r in rows], dtype=float)
    return {
        "mean_average_precision": finite_mean(ap),
        "mean_trapezoid": finite_mean(trap),
        "n": int(np.isfinite(ap).sum()),
    }


def _opening(report: Report, result: AuditResult, config: Any) -> None:
    """What limits the verdicts, first: non-discriminating criteria, then the other notes."""
    for note in result.notes:
        report.text(note, warning=True)
    protocol = result.settings["protocol"]
    report.text(
        f"Preset '{protocol['name']}': SSIM data range {protocol['data_range']:g} for every criterion; "
        f"localization statistic: {protocol['localization_statistic'].replace('_', ' ')}; model replicates: "
        f"{len(result.settings['replicates'])} used ({protocol['replicates']} in the preset); randomization "
        f"{'includes' if config.include_stem else 'stops above'} the stem. Method settings: '{config.method_preset}'."
    )


def _localization_section(report: Report, result: AuditResult, methods: Sequence[str]) -> None:
    rows = result.rows["localization.csv"]
    statistic = result.settings["protocol"]["localization_statistic"]
    report.heading("Localization utility (AUPRC)")
    groups: list[tuple[str, np.ndarray]] = []
    for method in methods:
        for source in ("trained", "untrained"):
            values = [r[statistic] for r in rows if r["method"] == method and r["source"] == source]
            if values:
                groups.append((f"{method_label(method)} ({source})", np.asarray(values, dtype=float)))
    for source, label in (("prior", "average-mask prior"), ("localizer", "supervised localizer")):
        values = [r[statistic] for r in rows if r["source"] == source]
        if values:
            groups.append((label, np.asarray(values, dtype=float)))
    report.figure(
        _box_figure(groups, f"{statistic.replace('_', ' ')} per image"),
        f"Per-image {statistic.replace('_', ' ')} of each map against the ground-truth mask (box: quartiles, "
        "solid line: median, dashed: mean). Table: localization.csv (both estimators).",
    )
    comparison = [
        {"maps": method_label(m), **_source_means([r for r in rows if r["method"] == m and r["source"] == "trained"])}
        for m in methods
    ]
    for source, label in (("prior", "average-mask prior"), ("localizer", "supervised localizer")):
        chosen = [r for r in rows if r["source"] == source]
        if chosen:
            comparison.append({"maps": label, **_source_means(chosen)})
    report.table(
        comparison,
        ["maps", "mean_average_precision", "mean_trapezoid", "n"],
        caption="Comparison on the same images: mean average precision and the paper's trapezoid AUPRC",
    )
    if result.variant_rows:
        report.table(
            result.variant_rows,
            ["model", "method", "mean_average_precision", "mean_trapezoid", "n_degenerate", "source"],
            caption="Differently trained models on the same images (e.g. attention with 0%, 10% and 100% box "
            "supervision)",
        )
    report.table(
        [r for r in result.summary if r["criterion"] == "localization"],
        ["method", "baseline", "value", "baseline_value", "p_value", "p_holm", "n", "n_degenerate", "passed"],
        caption="Mean of the trained model's maps against each baseline (one-sided paired Wilcoxon)",
    )


def _agreement_sections(report: Report, result: AuditResult, methods: Sequence[str]) -> None:
    fixed = result.settings["protocol"]["agreement_line"]
    lines = result.settings.get("calibrated_lines", {})
    for criterion in ("repeatability", "reproducibility"):
        rows = result.rows.get(f"{criterion}.csv") or []
        if criterion not in result.criteria or not rows:
            continue
        report.heading(CRITERION_LABELS[criterion])
        what = "replicates of one architecture (every pair)" if criterion == "repeatability" else "two architectures"
        shown = [m for m in methods if any(r["method"] == m for r in rows)]
        groups = [(method_label(m), np.asarray([r["ssim"] for r in rows if r["method"] == m], float)) for m in shown]
        if fixed is not None:
            marks: Any = float(fixed)
            line_text = f"blue line: the paper's {fixed:g}"
        else:
            marks = [lines.get(m, {}).get("value") for m in shown]
            line_text = "blue marks: each method's calibrated line (the paper's 0.5 at range 2, at this range)"
        report.figure(
            _box_figure(groups, "SSIM per image", marks),
            f"Per-image SSIM between the maps of {what}; {line_text}. Table: {criterion}.csv.",
        )


def write_report(
    out: Path, *, title: str, data: Any, maps: Mapping[str, Any], result: AuditResult, config: Any
) -> dict:
    """Write ``report.html`` (and ``report.pdf`` when WeasyPrint is installed); returns the paths."""
    methods, criteria, flagged = result.methods, result.criteria, result.non_discriminating
    report = Report(
        title,
        subtitle=f"{len(data.ids)} images{' - ' + data.description if data.description else ''}; "
        f"methods: {', '.join(method_label(m) for m in methods)}.",
    )
    _opening(report, result, config)
    report.heading("Pass/fail matrix")
    if criteria:
        report.figure(_matrix_figure(result.matrix, criteria, flagged), "Each method and control against each rule.")
        report.table(
            pass_matrix_rows(result.matrix, criteria, flagged),
            ["method", *[_criterion_header(c, flagged) for c in criteria]],
        )
        report.table(
            [{"criterion": CRITERION_LABELS[c], "rule": result.settings["rules"][c]} for c in criteria],
            ["criterion", "rule"],
            caption="Rules",
        )
    degenerate = [
        f"{method_label(m)}: {int(np.sum(maps['trained'][m].degenerate))}"
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
    if "localization" in criteria and result.rows["localization.csv"]:
        _localization_section(report, result, methods)
    if "randomization" in criteria and result.randomization:
        report.heading("Sensitivity to cascading weight randomization")
        report.figure(
            _randomization_figure(result.randomization, methods),
            "Mean SSIM between each image's map under the progressively randomized network and under the "
            "trained one (top-down, cumulative): thin lines per model replicate, thick line their mean, band "
            "+/- SD over replicates; dashed: the inter-image SSIM baseline. Table: randomization.csv.",
        )
    _agreement_sections(report, result, methods)
    _summary_and_settings(report, result)
    files = {"report.html": report.write(out / "report.html")}
    pdf = write_pdf(out / "report.html", out / "report.pdf")
    if pdf is not None:
        files["report.pdf"] = pdf
    return files


def _summary_and_settings(report: Report, result: AuditResult) -> None:
    settings = result.settings
    report.heading("Summary")
    columns = ["method", "criterion", "statistic", "value", "baseline", "baseline_value", "p_holm", "n"]
    report.table(result.summary, [*columns, "n_degenerate", "passed", "discriminating"], caption="summary.csv")
    report.heading("Settings")
    flat = [{"setting": k, "value": json.dumps(v, default=str)} for k, v in settings.get("config", {}).items()]
    report.table(flat, ["setting", "value"], caption="Audit")
    report.table(
        [
            {"method": method_label(m), "passes per image": settings["passes_per_image"][m], "settings": json.dumps(s)}
            for m, s in settings["methods"].items()
        ],
        ["method", "passes per image", "settings"],
        caption="Methods and controls (each map then post-processed as stated in its settings)",
    )
    if settings.get("randomization"):
        report.table(
            [{"setting": k, "value": json.dumps(v, default=str)} for k, v in settings["randomization"].items()],
            ["setting", "value"],
            caption="Randomization",
        )
    report.table(
        [{"role": k, **v} for k, v in settings["models"].items()],
        ["role", "architecture", "source", "layer"],
        caption="Models",
    )


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
