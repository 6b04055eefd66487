"""Uncertainty: QU-BraTS scoring (exact to the official scorer, vectorised) and team ranking.

- :mod:`uncertainty.qubrats`: the score of one case from arrays (numpy only).
- :mod:`uncertainty.submission`: finding and validating submission and truth files.
- :mod:`uncertainty.scoring`: a whole submission folder, in parallel, and its CSV outputs.
- :mod:`uncertainty.ranking` / :mod:`uncertainty.leaderboard`: ranking teams.
- :mod:`uncertainty.report`: HTML reports.
- :mod:`uncertainty.estimation`: uncertainty maps for any segmentation model (test-time
  augmentation, Monte-Carlo dropout, ensembles), needs torch.

Generic over any model; never imports ``pipelines``. The scoring modules never import torch
(importing this package does not either).
"""

from uncertainty.qubrats import REGIONS, CaseScore, RegionScore, score_case, thresholds
from uncertainty.scoring import SubmissionScores, score_submission

__all__ = ["REGIONS", "CaseScore", "RegionScore", "SubmissionScores", "score_case", "score_submission", "thresholds"]
