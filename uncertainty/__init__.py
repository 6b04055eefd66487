"""Uncertainty: QU-BraTS scoring (exact to the official scorer, vectorized) and team ranking.

- :mod:`uncertainty.qubrats`: the score of one case from arrays (numpy only).
- :mod:`uncertainty.submission`: finding and validating submission and truth files.
- :mod:`uncertainty.scoring`: a whole submission folder, in parallel, and its CSV outputs.
- :mod:`uncertainty.ranking` / :mod:`uncertainty.leaderboard`: ranking teams.
- :mod:`uncertainty.report`: HTML reports.
- :mod:`uncertainty.estimation`: uncertainty maps for any segmentation model (test-time
  augmentation, Monte-Carlo dropout, ensembles), needs torch.

Generic over any model; never imports ``pipelines``. The scoring modules never import torch
(importing this package does not either): the names that need torch or matplotlib
(:func:`estimate_uncertainty`, the reports) are importable from here but imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg.lazy import lazy_exports
from uncertainty.leaderboard import Leaderboard, build_leaderboard, rank_from_scores
from uncertainty.qubrats import REGIONS, CaseScore, RegionScore, score_case, thresholds
from uncertainty.ranking import Ranking, rank_teams
from uncertainty.scoring import SubmissionScores, score_submission

__all__ = [
    "REGIONS",
    "SUPPORTED_METHODS",
    "CaseScore",
    "Leaderboard",
    "Ranking",
    "RegionScore",
    "SubmissionScores",
    "UncertaintyResult",
    "build_leaderboard",
    "estimate_uncertainty",
    "predictive_entropy_map",
    "rank_from_scores",
    "rank_teams",
    "ranking_report",
    "score_case",
    "score_report",
    "score_submission",
    "thresholds",
]

#: Public names that need torch (estimation) or matplotlib (reports) -> their module, imported when
#: the name is first used (PEP 562).
_EXPORTS: dict[str, str] = {
    "SUPPORTED_METHODS": "uncertainty.estimation",
    "UncertaintyResult": "uncertainty.estimation",
    "estimate_uncertainty": "uncertainty.estimation",
    "predictive_entropy_map": "uncertainty.estimation",
    "ranking_report": "uncertainty.report",
    "score_report": "uncertainty.report",
}

if TYPE_CHECKING:
    from uncertainty.estimation import (
        SUPPORTED_METHODS,
        UncertaintyResult,
        estimate_uncertainty,
        predictive_entropy_map,
    )
    from uncertainty.report import ranking_report, score_report


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
