"""``medimg uncertainty``: QU-BraTS scoring of one submission (``score``) and team ranking (``rank``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from medimg.progress import tracked
from medimg.untrusted import terminal_text
from pipelines.commands.app import MaxPixelsOption, QuietOption, apply_max_pixels, console, err_console, error_exit

if TYPE_CHECKING:
    from uncertainty.ranking import Ranking

uncertainty_app = typer.Typer(
    help="QU-BraTS uncertainty scoring (exact to the official scorer) and team ranking.", no_args_is_help=True
)

#: Files ``uncertainty rank`` writes: from --from-scores, and when it scores TEAMS_DIR itself.
_RANKED_FILES: tuple[str, ...] = ("ranking.csv", "pairwise_p_values.csv", "errors.csv", "report.html")
_SCORED_AND_RANKED_FILES = ("ranking.csv", "pairwise_p_values.csv", "scores.csv", "errors.csv", "report.html")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _print_errors(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        where = " ".join(part for part in (row.get("team", ""), row["case_id"], row["file"]) if part)
        err_console.print(f"[red]error:[/red] {terminal_text(where)}: {terminal_text(row['error'])}")


@uncertainty_app.command("score")
def uncertainty_score(
    submission: Annotated[
        Path, typer.Argument(help="Submission folder: {ID}.nii.gz and {ID}_unc_{whole,core,enhance}.nii.gz.")
    ],
    truth: Annotated[
        Path, typer.Option("--truth", help="Truth folder: {ID}_seg.nii.gz (flat or one folder per case).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="scores.csv to write (errors.csv is written beside it).")],
    curves: Annotated[Optional[Path], typer.Option(help="Also write the per-threshold curves CSV.")] = None,  # noqa: UP045
    report: Annotated[Optional[Path], typer.Option(help="Also write a self-contained HTML report.")] = None,  # noqa: UP045
    num_thresholds: Annotated[
        int, typer.Option(min=2, help="Threshold grid size: 41 = 100 -> 0 in steps of 2.5 (the challenge's).")
    ] = 41,
    no_brain_mask: Annotated[
        bool,
        typer.Option("--no-brain-mask", help="Count the whole volume as brain when a case has no brain mask or T1."),
    ] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Processes (default: all cores).")] = None,  # noqa: UP045
    max_pixels: MaxPixelsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Score one QU-BraTS submission: DSC/FTP/FTN AUCs and the score per case and region."""
    from rich.table import Table

    apply_max_pixels(max_pixels)

    from uncertainty.scoring import score_submission, summarize, write_results

    bar, update = tracked(not quiet, "Scoring cases")
    with bar:
        result = score_submission(
            submission,
            truth,
            num_thresholds=num_thresholds,
            brain_mask="none" if no_brain_mask else "auto",
            workers=workers,
            progress=update,
        )
    write_results(result, out, curves_csv=curves)
    if report is not None:
        from uncertainty.report import score_report

        score_report(result, source=f"submission {submission}, truth {truth}").write(report)
    table = Table(title=f"QU-BraTS scores: {len(result.cases)} case(s) of {len(result.truth_case_ids)}")
    for column in ("region", "cases", "mean score", "median score", "mean DSC AUC", "mean FTP AUC", "mean FTN AUC"):
        table.add_column(column)
    for row in summarize(result.cases):
        table.add_row(
            row["region"],
            str(row["cases"]),
            _fmt(row["mean_SCORE"]),
            _fmt(row["median_SCORE"]),
            _fmt(row["mean_DSC_AUC"]),
            _fmt(row["mean_FTP_RATIO_AUC"]),
            _fmt(row["mean_FTN_RATIO_AUC"]),
        )
    console.print(table)
    console.print(
        terminal_text(
            f"wrote {out}"
            + (f", {curves}" if curves else "")
            + (f", {report}" if report else "")
            + f", {out.with_name('errors.csv')}, {out.with_name('warnings.csv')}"
        )
    )
    for row in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {terminal_text(row['case_id'])}: {terminal_text(row['warning'])}")
    _print_errors([e.to_row() for e in result.errors])
    if not result.ok:
        raise typer.Exit(1)


def _print_ranking(ranking: Ranking) -> None:
    """The ranking table and the team x team p-value matrix, on the console."""
    from rich.table import Table

    table = Table(title="QU-BraTS ranking")
    for column in ("#", "team", "mean rank", "NRS", "missing", "WT", "TC", "ET", "p vs next"):
        table.add_column(column)
    for row in ranking.table:
        table.add_row(
            str(row["position"]),
            terminal_text(row["team"]),
            f"{row['mean_rank']:.3f}",
            f"{row['normalized_ranking_score']:.3f}",
            str(row["pairs_missing"]),
            _fmt(row["mean_score_WT"]),
            _fmt(row["mean_score_TC"]),
            _fmt(row["mean_score_ET"]),
            _fmt(row["p_value_vs_next"]),
        )
    console.print(table)
    if ranking.permutations == 0 or len(ranking.teams) < 2:
        return
    from uncertainty.ranking import pairwise_rows

    matrix = Table(title=f"Pairwise p-values (permutation test over cases, unadjusted; * p < {ranking.alpha:g})")
    matrix.add_column("team")
    for team in ranking.teams:
        matrix.add_column(terminal_text(team))
    for row in pairwise_rows(ranking):
        cells = [row[t] for t in ranking.teams]
        matrix.add_row(
            terminal_text(row["team"]),
            *("-" if p is None else f"{p:.4f}" + ("*" if p < ranking.alpha else "") for p in cells),
        )
    console.print(matrix)


def _check_rank_sources(teams_dir: Path | None, truth: Path | None, from_scores: Path | None) -> None:
    """Exit 2 unless exactly one of (TEAMS_DIR with --truth) and --from-scores is given."""
    folder = teams_dir is not None or truth is not None
    problem = ""
    if from_scores is not None and folder:
        problem = "give either TEAMS_DIR with --truth, or --from-scores, not both"
    elif from_scores is None and not folder:
        problem = "give TEAMS_DIR with --truth (score and rank submissions) or --from-scores SCORES_CSV"
    elif from_scores is None and (teams_dir is None or truth is None):
        problem = "TEAMS_DIR needs --truth" if truth is None else "--truth needs TEAMS_DIR"
    if problem:
        raise error_exit(problem)


@uncertainty_app.command("rank")
def uncertainty_rank(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: ranking.csv, pairwise_p_values.csv, scores.csv, errors.csv, report.html.",
        ),
    ],
    teams_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(help="One sub-folder per team, each a submission folder (with --truth)."),
    ] = None,
    truth: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--truth", help="Truth folder: {ID}_seg.nii.gz (flat or one folder per case)."),
    ] = None,
    from_scores: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--from-scores",
            help="Rank teams already scored, instead of TEAMS_DIR and --truth: a CSV with team,case_id,region,SCORE "
            "(other columns ignored, e.g. the scores.csv this command writes).",
        ),
    ] = None,
    num_thresholds: Annotated[int, typer.Option(min=2, help="Threshold grid size (41: the challenge's).")] = 41,
    permutations: Annotated[int, typer.Option(min=0, help="Permutations per pairwise test (0: no tests).")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of the permutation tests.")] = 0,
    no_brain_mask: Annotated[
        bool, typer.Option("--no-brain-mask", help="Whole volume as brain when a case has no mask or T1.")
    ] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Processes (default: all cores).")] = None,  # noqa: UP045
    max_pixels: MaxPixelsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Rank teams: cumulative rank per case, mean rank, normalized ranking score, pairwise permutation tests."""
    from uncertainty.leaderboard import missing_rows, rank_from_scores

    apply_max_pixels(max_pixels)

    _check_rank_sources(teams_dir, truth, from_scores)
    try:
        if from_scores is not None:
            ranking = rank_from_scores(from_scores, out, permutations=permutations, seed=seed)
            errors = missing_rows(ranking, from_scores)
            written = _RANKED_FILES
        else:
            assert teams_dir is not None and truth is not None
            ranking, errors = _score_and_rank(
                teams_dir,
                truth,
                out,
                num_thresholds=num_thresholds,
                brain_mask="none" if no_brain_mask else "auto",
                permutations=permutations,
                seed=seed,
                workers=workers,
                quiet=quiet,
            )
            written = _SCORED_AND_RANKED_FILES
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        raise error_exit(exc) from exc
    _print_ranking(ranking)
    console.print("wrote " + terminal_text(", ".join(str(out / name) for name in written)))
    _print_errors(errors)
    if errors:
        raise typer.Exit(1)


def _score_and_rank(
    teams_dir: Path,
    truth: Path,
    out: Path,
    *,
    num_thresholds: int,
    brain_mask: str,
    permutations: int,
    seed: int,
    workers: int | None,
    quiet: bool,
) -> tuple[Ranking, list[dict[str, Any]]]:
    """Score every team's submission (one progress bar) and rank them; the ranking and the error rows."""
    from uncertainty.leaderboard import build_leaderboard

    bar, update = tracked(not quiet, "Scoring teams")
    with bar:
        board = build_leaderboard(
            teams_dir,
            truth,
            out,
            num_thresholds=num_thresholds,
            brain_mask=brain_mask,
            permutations=permutations,
            seed=seed,
            workers=workers,
            progress=update,
        )
    assert board.ranking is not None
    for row in board.warnings:
        where = terminal_text(f"{row['team']} {row['case_id']}")
        err_console.print(f"[yellow]warning:[/yellow] {where}: {terminal_text(row['warning'])}")
    errors = [{"team": team, **e.to_row()} for team, e in board.errors]  # type: ignore[attr-defined]
    return board.ranking, errors
