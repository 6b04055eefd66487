"""Rank teams the QU-BraTS way: per case and region, then mean rank, with permutation tests.

Protocol (spec section 10; the paper's exact tie and missing-case rules are not public, so ours
are stated here and in the README):

1. For every case of the truth set and every region (WT, TC, ET), teams are ranked by score,
   higher is better, rank 1 best. Ties share the mean of the ranks they span. A team whose case
   is missing or failed takes the worst rank: it is ranked as if its score were below every real
   score (several such teams tie among themselves at the bottom).
2. Each team's ranks are averaged over all case-region pairs (the mean rank); the normalised
   ranking score is mean rank / number of teams (lower is better). Teams are ordered by mean
   rank (then by name, so that the order is reproducible).
3. Each team is compared with the next one in that order by a paired permutation test on their
   per-pair ranks: the statistic is the mean rank difference, and the null distribution flips
   the sign of each pair's difference at random (seeded), as swapping the two teams' labels
   within a pair would. The two-sided p-value is (1 + #{|null| >= |observed|}) / (1 + N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from uncertainty.qubrats import REGIONS

__all__ = ["RANKING_COLUMNS", "Ranking", "rank_per_pair", "paired_permutation_test", "rank_teams"]

#: Columns of a ranking table row (see :func:`rank_teams`), in ``ranking.csv`` order.
RANKING_COLUMNS = (
    "position",
    "team",
    "mean_rank",
    "normalised_ranking_score",
    "pairs_scored",
    "pairs_missing",
    "mean_score_WT",
    "mean_score_TC",
    "mean_score_ET",
    "p_value_vs_next",
    "significant_vs_next",
)


def rank_per_pair(scores: np.ndarray) -> np.ndarray:
    """Ranks of teams within each column: 1 = best (highest score), ties share the mean rank.

    Args:
        scores: float array (teams, pairs); NaN marks a missing or failed result, which ranks
            below every real score.

    Returns:
        float64 array (teams, pairs) of ranks in [1, teams].
    """
    from scipy.stats import rankdata

    keyed = np.where(np.isnan(scores), -np.inf, scores)
    return rankdata(-keyed, method="average", axis=0)


def paired_permutation_test(a: np.ndarray, b: np.ndarray, *, permutations: int = 100_000, seed: int = 0) -> float:
    """Two-sided paired sign-flip permutation test of mean(a - b) = 0.

    Args:
        a, b: paired values (e.g. ranks of two teams over case-region pairs), shape (n,).
        permutations: random sign-flip permutations.
        seed: seed of the generator (results are reproducible).

    Returns:
        p-value in (0, 1].
    """
    diff = np.asarray(a, float) - np.asarray(b, float)
    observed = abs(diff.mean()) if diff.size else 0.0
    if not diff.size or not np.any(diff):
        return 1.0
    rng = np.random.default_rng(seed)
    exceed = 0
    chunk = max(1, min(permutations, 2_000_000 // max(diff.size, 1)))
    done = 0
    while done < permutations:
        n = min(chunk, permutations - done)
        signs = rng.integers(0, 2, size=(n, diff.size), dtype=np.int8) * 2 - 1
        null = np.abs(signs @ diff) / diff.size
        exceed += int(np.count_nonzero(null >= observed - 1e-12))
        done += n
    return (1 + exceed) / (1 + permutations)


@dataclass(frozen=True)
class Ranking:
    """Result of :func:`rank_teams`.

    Attributes:
        teams: team names in final order (best first).
        case_ids: the case IDs ranked over.
        ranks: (teams, cases, regions) rank array in the order of ``teams``.
        scores: (teams, cases, regions) score array, NaN where missing or failed.
        table: one dict per team (final order): position, mean rank, normalised ranking
            score, scored and missing pairs, mean score per region, p-value against the next team.
        permutations: permutations used per test; seed: their seed.
    """

    teams: tuple[str, ...]
    case_ids: tuple[str, ...]
    ranks: np.ndarray
    scores: np.ndarray
    table: tuple[dict, ...]
    permutations: int
    seed: int


def rank_teams(
    scores: Mapping[str, Mapping[tuple[str, str], float]],
    case_ids: Sequence[str],
    *,
    permutations: int = 100_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Ranking:
    """Rank teams over every (case, region) pair (see the module docstring).

    Args:
        scores: per team, ``{(case_id, region): score}``; absent pairs are missing.
        case_ids: the cases every team should have (the truth set).
        permutations: permutations per adjacent-team test (0 skips the tests).
        seed: seed of the permutation tests.
        alpha: significance level reported in the table.

    Returns:
        The :class:`Ranking`.

    Raises:
        ValueError: no teams or no cases.
    """
    names = sorted(scores)
    if not names:
        raise ValueError("no teams to rank")
    if not case_ids:
        raise ValueError("no cases to rank over")
    cases = list(case_ids)
    array = np.full((len(names), len(cases), len(REGIONS)), np.nan)
    for t, team in enumerate(names):
        for c, case in enumerate(cases):
            for r, region in enumerate(REGIONS):
                value = scores[team].get((case, region))
                if value is not None:
                    array[t, c, r] = float(value)
    flat = array.reshape(len(names), -1)
    ranks = rank_per_pair(flat).reshape(array.shape)
    mean_rank = ranks.reshape(len(names), -1).mean(axis=1)
    order = sorted(range(len(names)), key=lambda t: (mean_rank[t], names[t]))
    table = []
    for position, t in enumerate(order, start=1):
        row = {
            "position": position,
            "team": names[t],
            "mean_rank": float(mean_rank[t]),
            "normalised_ranking_score": float(mean_rank[t] / len(names)),
            "pairs_scored": int(np.count_nonzero(~np.isnan(flat[t]))),
            "pairs_missing": int(np.count_nonzero(np.isnan(flat[t]))),
        }
        for r, region in enumerate(REGIONS):
            valid = array[t, :, r][~np.isnan(array[t, :, r])]
            row[f"mean_score_{region}"] = float(valid.mean()) if valid.size else None
        row["p_value_vs_next"] = None
        row["significant_vs_next"] = None
        table.append(row)
    if permutations > 0:
        for i in range(len(order) - 1):
            a, b = order[i], order[i + 1]
            p = paired_permutation_test(ranks[a].ravel(), ranks[b].ravel(), permutations=permutations, seed=seed)
            table[i]["p_value_vs_next"] = p
            table[i]["significant_vs_next"] = bool(p < alpha)
    return Ranking(
        teams=tuple(names[t] for t in order),
        case_ids=tuple(cases),
        ranks=ranks[order],
        scores=array[order],
        table=tuple(table),
        permutations=permutations,
        seed=seed,
    )
