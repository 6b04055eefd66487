"""HTML reports for QU-BraTS scoring and team ranking (curves, distributions, tables, errors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medimg.report import Report, new_figure
from medimg.untrusted import plot_text
from uncertainty.qubrats import REGIONS, CaseScore
from uncertainty.ranking import RANKING_COLUMNS, Ranking, pairwise_rows
from uncertainty.scoring import SubmissionScores, summarize
from uncertainty.submission import CaseError

__all__ = ["ranking_report", "score_report"]

_CURVES = (
    ("dsc", "DSC (higher is better)"),
    ("ftp", "filtered TP ratio (lower)"),
    ("ftn", "filtered TN ratio (lower)"),
)
_METHOD = (
    "Per region, voxels with uncertainty u > tau are filtered out at each threshold tau (100 down to 0). "
    "DSC is computed on the kept voxels (whole volume; 1 when both sides are empty); the filtered true-positive "
    "and true-negative ratios count, inside the brain mask, the fraction of TP / TN voxels filtered out. "
    "Each curve's area (trapezoid rule over [0, 100], divided by 100) gives an AUC, and "
    "score = (DSC_AUC + (1 - FTP_AUC) + (1 - FTN_AUC)) / 3; higher is better."
)


def _curve_figure(groups: Mapping[str, Sequence[CaseScore]], title: str) -> Any:
    """3 x 3 grid: rows = regions, columns = DSC/FTP/FTN against the threshold; one line per group."""
    fig, axes = new_figure(width=11, height=8.5, ncols=3, nrows=3)
    for row, region in enumerate(REGIONS):
        for col, (attr, label) in enumerate(_CURVES):
            ax = axes[row][col]
            for name, cases in groups.items():
                if not cases:
                    continue
                taus = cases[0][region].thresholds
                curves = np.array([getattr(case[region], attr) for case in cases], dtype=float)
                if len(groups) == 1:
                    for curve in curves:
                        ax.plot(taus, curve, color="0.8", linewidth=0.6)
                ax.plot(taus, curves.mean(axis=0), linewidth=1.8, label=plot_text(f"{name} (mean of {len(cases)})"))
            ax.set_xlim(100, 0)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{region}: {label}", fontsize=9)
            if row == 2:
                ax.set_xlabel("threshold tau (voxels with u > tau filtered)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(plot_text(title))
    fig.tight_layout()
    return fig


def _distribution_figure(groups: Mapping[str, Mapping[str, Sequence[float]]]) -> Any:
    """One box plot per region: ``groups[name][region]`` holds the scores of one group."""
    fig, axes = new_figure(width=11, height=3.4, ncols=3)
    names = list(groups)
    for col, region in enumerate(REGIONS):
        ax = axes[0][col]
        data = [list(groups[n][region]) or [np.nan] for n in names]
        ax.boxplot(data, showfliers=False)
        for i, values in enumerate(data, start=1):
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.plot(np.add(i, jitter), values, "o", markersize=3, alpha=0.6)
        ax.set_xticks(
            range(1, len(names) + 1), [plot_text(n) for n in names], rotation=30 if len(names) > 3 else 0, fontsize=8
        )
        ax.set_title(f"{region} score per case", fontsize=9)
        ax.set_ylim(0, 1)
    fig.tight_layout()
    return fig


def _pairwise_figure(ranking: Ranking) -> Any:
    """Heat map of the pairwise p-values (log color scale); cells with p < alpha outlined."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    n = len(ranking.teams)
    side = min(12.0, 2.5 + 0.6 * n)
    fig, axes = new_figure(width=side + 1.5, height=side)
    ax = axes[0][0]
    floor = 1.0 / (1 + ranking.permutations)
    shown = np.ma.masked_invalid(ranking.p_values)
    image = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=floor, vmax=1.0))
    ax.set_facecolor("0.85")
    for i in range(n):
        for j in range(n):
            p = ranking.p_values[i, j]
            if np.isnan(p):
                continue
            significant = p < ranking.alpha
            ax.text(
                j, i, f"{p:.2g}", ha="center", va="center", fontsize=8 if n <= 12 else 6,
                color="white" if p < floor ** 0.5 else "black", fontweight="bold" if significant else "normal",
            )  # fmt: skip
            if significant:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    labels = [plot_text(team) for team in ranking.teams]  # names are data: no mathtext
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_title(f"Pairwise permutation tests over cases (red: p < {ranking.alpha:g}, unadjusted)", fontsize=9)
    fig.colorbar(image, ax=ax, label="p-value", shrink=0.8)
    fig.tight_layout()
    return fig


def _region_scores(cases: Sequence[CaseScore]) -> dict[str, list[float]]:
    return {region: [case[region].score for case in cases] for region in REGIONS}


def score_report(result: SubmissionScores, *, title: str = "QU-BraTS uncertainty scores", source: str = "") -> Report:
    """Report of one submission: summary, curves, score distribution, per-case table, errors."""
    report = Report(title, subtitle=source)
    report.heading("Summary")
    report.text(
        f"{len(result.cases)} case(s) scored of {len(result.truth_case_ids)} in the truth set; "
        f"{len(result.errors)} problem(s). Threshold grid: {result.num_thresholds} values from 100 to 0."
    )
    for row in result.warnings:
        report.text(f"Warning, case {row['case_id']}: {row['warning']}", warning=True)
    summary = summarize(result.cases)
    report.table(
        summary,
        ["region", "cases", "mean_SCORE", "median_SCORE", "mean_DSC_AUC", "mean_FTP_RATIO_AUC", "mean_FTN_RATIO_AUC"],
    )
    report.text(_METHOD)
    if result.cases:
        report.heading("Curves")
        report.figure(
            _curve_figure({"submission": result.cases}, "DSC / FTP / FTN against the threshold"),
            "Grey: each case; color: the mean over cases.",
        )
        report.heading("Score distribution")
        report.figure(_distribution_figure({"submission": _region_scores(result.cases)}), "Score per case and region.")
        report.heading("Per case")
        rows = [
            {
                "case_id": c.case_id,
                "region": r.region,
                "DSC_AUC": r.dsc_auc,
                "FTP_RATIO_AUC": r.ftp_auc,
                "FTN_RATIO_AUC": r.ftn_auc,
                "SCORE": r.score,
                "brain mask": result.brain_mask_sources.get(c.case_id),
            }
            for c in result.cases
            for r in c.regions
        ]
        report.table(rows, ["case_id", "region", "DSC_AUC", "FTP_RATIO_AUC", "FTN_RATIO_AUC", "SCORE", "brain mask"])
    _errors(report, [(None, e) for e in result.errors])
    return report


def _errors(report: Report, errors: Sequence[tuple[str | None, CaseError]]) -> None:
    report.heading("Missing or failed")
    if not errors:
        report.text("Nothing: every case was scored.")
        return
    rows = [{"team": team or "", **e.to_row()} for team, e in errors]
    columns = (["team"] if any(team for team, _ in errors) else []) + ["case_id", "file", "error"]
    report.table(rows, columns)


def _pairwise(report: Report, ranking: Ranking) -> None:
    report.heading("Pairwise significance")
    if ranking.permutations == 0:
        report.text("No permutation tests were run (--permutations 0).")
        return
    report.text(
        f"Every pair of teams is compared by a paired sign-flip permutation test over cases on the cumulative "
        f"ranks ({ranking.permutations} permutations, seed {ranking.seed}); p-values are two-sided and not "
        f"adjusted for the {len(ranking.teams) * (len(ranking.teams) - 1) // 2} comparisons. Rows and columns "
        "are in ranking order; the same matrix is in pairwise_p_values.csv."
    )
    report.figure(_pairwise_figure(ranking), f"Outlined in red: p < {ranking.alpha:g}. Grey diagonal: no test.")
    report.table(pairwise_rows(ranking), ["team", *ranking.teams])


def _missing_pairs(report: Report, ranking: Ranking) -> None:
    report.heading("Missing")
    absent: dict[tuple[str, str], list[str]] = {}
    for team, case_id, region in ranking.missing():
        absent.setdefault((team, case_id), []).append(region)
    if not absent:
        report.text("Nothing: every team has a score for every case and region.")
        return
    rows = [{"team": t, "case_id": c, "regions": ", ".join(r)} for (t, c), r in absent.items()]
    report.table(rows, ["team", "case_id", "regions"], caption="Ranked last where missing.")


def ranking_report(
    ranking: Ranking, results: Mapping[str, SubmissionScores] | None = None, *, source: str = ""
) -> Report:
    """Report of a ranking: table, pairwise p-value heat map, score distributions, what was missing.

    Args:
        ranking: the ranking.
        results: every team's scoring, when the teams were scored here: adds the DSC/FTP/FTN
            curves per team and the reasons for failed cases. None when the ranking came from a
            scores file.
        source: where the scores came from, shown under the title.

    Returns:
        The :class:`~medimg.report.Report`.
    """
    report = Report(
        "QU-BraTS team ranking",
        subtitle=f"{len(ranking.teams)} teams, {len(ranking.case_ids)} cases" + (f"; {source}" if source else ""),
    )
    report.heading("Ranking")
    report.text(
        "Teams are ranked per case and region by score (ties share the mean rank; a missing or failed result "
        "takes the worst rank); a team's cumulative rank for a case is the mean of its three region ranks, its "
        "mean rank over cases orders the teams, and the normalized ranking score is the mean rank divided by the "
        f"number of teams (lower is better). p vs next: the pairwise test below (significant: p < {ranking.alpha:g})."
    )
    if results is None:
        report.text(
            f"This ranking came from a scores file ({source or 'given scores'}): the per-case DSC/FTP/FTN curves "
            "need a full scoring (medimg uncertainty rank TEAMS_DIR --truth TRUTH_DIR) and are not shown."
        )
    report.table(list(ranking.table), RANKING_COLUMNS)
    for team, result in (results or {}).items():
        for row in result.warnings:
            report.text(f"Warning, team {team}, case {row['case_id']}: {row['warning']}", warning=True)
    _pairwise(report, ranking)
    report.text(_METHOD)
    if results is not None:
        groups = {team: results[team].cases for team in ranking.teams}
        report.heading("Curves per team")
        report.figure(
            _curve_figure(groups, "Mean DSC / FTP / FTN against the threshold"), "Mean over each team's cases."
        )
    report.heading("Score distributions")
    distributions = {
        team: {region: ranking.scores[t, :, r][~np.isnan(ranking.scores[t, :, r])] for r, region in enumerate(REGIONS)}
        for t, team in enumerate(ranking.teams)
    }
    report.figure(_distribution_figure(distributions), "Score per case, region and team.")
    if results is not None:
        _errors(report, [(team, e) for team in ranking.teams for e in results[team].errors])
    else:
        _missing_pairs(report, ranking)
    return report
