"""Score every team of a challenge folder, rank them, and write the leaderboard outputs.

``OUT/ranking.csv`` (one row per team, final order), ``OUT/scores.csv`` (every team's per-case,
per-region AUCs and scores), ``OUT/errors.csv`` (what was missing or failed, per team) and
``OUT/report.html``. All written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medimg.parallel import ProgressCallback
from medimg.writers import write_csv
from uncertainty.qubrats import DEFAULT_NUM_THRESHOLDS
from uncertainty.ranking import RANKING_COLUMNS, Ranking, rank_teams
from uncertainty.scoring import ERROR_COLUMNS, SCORE_COLUMNS, SubmissionScores, score_rows, score_submission

__all__ = ["Leaderboard", "build_leaderboard"]


@dataclass
class Leaderboard:
    """Every team's :class:`SubmissionScores` and the :class:`Ranking` over them."""

    results: dict[str, SubmissionScores] = field(default_factory=dict)
    ranking: Ranking | None = None

    @property
    def errors(self) -> list[tuple[str, object]]:
        return [(team, e) for team, r in self.results.items() for e in r.errors]


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
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "ranking.csv", board.ranking.table, RANKING_COLUMNS)
    rows = [row for team, r in board.results.items() for row in score_rows(r.cases, team=team)]
    write_csv(out / "scores.csv", rows, ("team", *SCORE_COLUMNS))
    errors = [{"team": team, **e.to_row()} for team, r in board.results.items() for e in r.errors]
    write_csv(out / "errors.csv", errors, ("team", *ERROR_COLUMNS))
    from uncertainty.report import ranking_report

    ranking_report(board.ranking, board.results).write(out / "report.html")
    return board
