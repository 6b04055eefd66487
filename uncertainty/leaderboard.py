"""Rank challenge teams and write the leaderboard outputs, from submissions or from scores.

:func:`build_leaderboard` scores every team folder against the truth and ranks them;
:func:`rank_from_scores` ranks teams an organizer has already scored (a ``scores.csv`` with
``team,case_id,region,SCORE``). Both write ``OUT/ranking.csv`` (one row per team, final order),
``OUT/pairwise_p_values.csv`` (team x team permutation-test p-values), ``OUT/errors.csv`` (what
was missing or failed, per team) and ``OUT/report.html``; the folder path also writes
``OUT/scores.csv`` (every team's per-case, per-region AUCs and scores). All written atomically.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medimg.parallel import ProgressCallback
from medimg.writers import write_csv
from uncertainty.qubrats import DEFAULT_NUM_THRESHOLDS, REGIONS
from uncertainty.ranking import RANKING_COLUMNS, Ranking, pairwise_rows, rank_teams
from uncertainty.scoring import ERROR_COLUMNS, SCORE_COLUMNS, SubmissionScores, score_rows, score_submission

__all__ = [
    "SCORES_CSV_COLUMNS",
    "Leaderboard",
    "build_leaderboard",
    "missing_rows",
    "rank_from_scores",
    "read_scores_csv",
]

#: Columns a scores file for :func:`rank_from_scores` must have (others are ignored).
SCORES_CSV_COLUMNS = ("team", "case_id", "region", "SCORE")


@dataclass
class Leaderboard:
    """Every team's :class:`SubmissionScores` and the :class:`Ranking` over them."""

    results: dict[str, SubmissionScores] = field(default_factory=dict)
    ranking: Ranking | None = None

    @property
    def errors(self) -> list[tuple[str, object]]:
        return [(team, e) for team, r in self.results.items() for e in r.errors]

    @property
    def warnings(self) -> list[dict[str, str]]:
        """Every team's warning rows (``team,case_id,file,warning``): scored, but may mislead."""
        return [{"team": team, **w} for team, r in self.results.items() for w in r.warnings]


def build_leaderboard(
    teams_dir: str | os.PathLike[str],
    truth_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
    brain_mask: str = "auto",
    permutations: int = 100_000,
    seed: int = 0,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> Leaderboard:
    """Score each sub-folder of ``teams_dir`` as one team's submission, rank, write ``out``.

    Raises:
        NotADirectoryError: ``teams_dir`` is not a folder.
        ValueError: ``teams_dir`` has no team folders, or the truth folder has no cases.
    """
    teams_dir = Path(teams_dir)
    if not teams_dir.is_dir():
        raise NotADirectoryError(f"{teams_dir}: not a folder")
    teams = sorted(p for p in teams_dir.iterdir() if p.is_dir())
    if not teams:
        raise ValueError(f"{teams_dir}: no team folders (expected one sub-folder per team)")
    board = Leaderboard()
    for i, team_dir in enumerate(teams):
        board.results[team_dir.name] = score_submission(
            team_dir, truth_dir, num_thresholds=num_thresholds, brain_mask=brain_mask, workers=workers
        )
        if progress:
            progress(i + 1, len(teams))
    case_ids = next((r.truth_case_ids for r in board.results.values() if r.truth_case_ids), [])
    if not case_ids:
        raise ValueError(f"{truth_dir}: no reference cases ({{ID}}_seg.nii.gz)")
    scores = {
        team: {(case.case_id, region.region): region.score for case in result.cases for region in case.regions}
        for team, result in board.results.items()
    }
    board.ranking = rank_teams(scores, case_ids, permutations=permutations, seed=seed)

    out = Path(out)
    rows = [row for team, r in board.results.items() for row in score_rows(r.cases, team=team)]
    errors = [{"team": team, **e.to_row()} for team, r in board.results.items() for e in r.errors]
    _write_outputs(out, board.ranking, errors, results=board.results)
    write_csv(out / "scores.csv", rows, ("team", *SCORE_COLUMNS))
    return board


def _write_outputs(
    out: Path,
    ranking: Ranking,
    errors: list[dict],
    *,
    results: Mapping[str, SubmissionScores] | None = None,
    source: str = "",
) -> None:
    """Write ``ranking.csv``, ``pairwise_p_values.csv``, ``errors.csv`` and ``report.html``."""
    from uncertainty.report import ranking_report

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "ranking.csv", ranking.table, RANKING_COLUMNS)
    write_csv(out / "pairwise_p_values.csv", pairwise_rows(ranking), ("team", *ranking.teams))
    write_csv(out / "errors.csv", errors, ("team", *ERROR_COLUMNS))
    ranking_report(ranking, results, source=source).write(out / "report.html")


def _parse_score_row(row: Mapping[str, str | None], where: str) -> tuple[str, str, str, float]:
    """(team, case_id, region, score) of one scores-file row; ``where`` names file and line."""
    team, case_id, region, text = ((row.get(c) or "").strip() for c in SCORES_CSV_COLUMNS)
    if not team or not case_id:
        raise ValueError(f"{where}: empty {'team' if not team else 'case_id'}")
    if region not in REGIONS:
        raise ValueError(f"{where}: region {region!r} is not one of {', '.join(REGIONS)}")
    try:
        score = float(text)
    except ValueError:
        raise ValueError(f"{where}: SCORE {text!r} is not a number (leave a missing result out of the file)") from None
    if not math.isfinite(score):
        raise ValueError(f"{where}: SCORE {text!r} is not a finite number (leave a missing result out of the file)")
    return team, case_id, region, score


def read_scores_csv(
    path: str | os.PathLike[str],
) -> tuple[dict[str, dict[tuple[str, str], float]], list[str]]:
    """Read a scores file: one row per team, case and region with the :data:`SCORES_CSV_COLUMNS`.

    Extra columns are ignored, so the ``scores.csv`` that :func:`build_leaderboard` writes is
    accepted as it is.

    Args:
        path: the CSV file.

    Returns:
        ``({team: {(case_id, region): score}}, case_ids)``: the case IDs are the sorted union of
        the file's case IDs (a team without a row for a case and region is missing there).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a required column is missing, the file has no rows, or a row has an empty
            team or case ID, an unknown region, a score that is not a finite number, or repeats
            a team, case and region (the message names the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scores file")
    scores: dict[str, dict[tuple[str, str], float]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in SCORES_CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(
                    f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(SCORES_CSV_COLUMNS)})"
                )
            for row in reader:
                where = f"{path}: line {reader.line_num}"
                team, case_id, region, score = _parse_score_row(row, where)
                key = (team, case_id, region)
                if key in seen:
                    raise ValueError(
                        f"{where}: duplicate row for team {team}, case {case_id}, region {region} "
                        f"(first at line {seen[key]})"
                    )
                seen[key] = reader.line_num
                scores.setdefault(team, {})[(case_id, region)] = score
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable UTF-8 CSV file ({exc})") from exc
    if not scores:
        raise ValueError(f"{path}: no score rows")
    return scores, sorted({case_id for _, case_id, _ in seen})


def rank_from_scores(
    scores_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    permutations: int = 100_000,
    seed: int = 0,
) -> Ranking:
    """Rank teams from a scores file (see :func:`read_scores_csv`) and write ``out``.

    Every team is ranked over the union of the file's cases; each (team, case) without a row for
    every region is listed in ``errors.csv`` and the report, and ranks last where it is missing.

    Args:
        scores_csv: the scores file.
        out: output folder (``ranking.csv``, ``pairwise_p_values.csv``, ``errors.csv``,
            ``report.html``).
        permutations: permutations per pairwise test (0 skips the tests).
        seed: seed of the permutation tests.

    Returns:
        The :class:`Ranking`.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_scores_csv`.
    """
    scores, case_ids = read_scores_csv(scores_csv)
    ranking = rank_teams(scores, case_ids, permutations=permutations, seed=seed)
    _write_outputs(Path(out), ranking, missing_rows(ranking, scores_csv), source=f"scores file {scores_csv}")
    return ranking


def missing_rows(ranking: Ranking, scores_csv: str | os.PathLike[str]) -> list[dict[str, str]]:
    """One ``errors.csv`` row (``team,case_id,file,error``) per team and case with a region missing.

    Args:
        ranking: a ranking made from ``scores_csv``.
        scores_csv: the scores file (named in the rows).

    Returns:
        The rows, in team (ranking) and case order.
    """
    absent: dict[tuple[str, str], list[str]] = {}
    for team, case_id, region in ranking.missing():
        absent.setdefault((team, case_id), []).append(region)
    return [
        {
            "team": team,
            "case_id": case_id,
            "file": str(scores_csv),
            "error": f"no score for {', '.join(regions)} in the scores file: ranked last there",
        }
        for (team, case_id), regions in absent.items()
    ]
