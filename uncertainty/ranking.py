"""Rank teams the QU-BraTS way: cumulative rank per case, mean rank, pairwise permutation tests.

The QU-BraTS challenge (Mehta et al., "QU-BraTS: MICCAI BraTS 2020 Challenge on Quantifying
Uncertainty in Brain Tumor Segmentation", MELBA 2022) ranked teams with the BraTS scheme (Bakas
et al., "Identifying the Best Machine Learning Algorithms for Brain Tumor Segmentation ... in the
BRATS Challenge", arXiv:1811.02629). In our words, and with our own rules where the papers are
silent (ties, missing results):

1. **Rank per case and region.** For every case and every region (WT, TC, ET), the teams are
   ranked by score, higher is better, rank 1 best. Tied scores share the mean of the ranks they
   span. A missing or failed result ranks below every real score (teams missing the same case
   and region tie among themselves at the bottom).
2. **Cumulative rank per case.** A team's cumulative rank for a case is the mean of its three
   region ranks. The three regions of a case are nested and scored from one segmentation, so
   they are not independent evidence: the case is the unit of everything that follows.
3. **Order.** A team's mean rank is the mean of its cumulative ranks over the cases (the same
   number as the mean over all case-region ranks). Teams are ordered by mean rank, then by name
   so that the order is reproducible. The normalized ranking score is mean rank / number of
   teams (lower is better).
4. **Significance.** Every pair of teams (not only neighbours in the order) is compared by a
   paired sign-flip permutation test over **cases**: the statistic is the mean over cases of the
   difference of the two teams' cumulative ranks; under the null that the two teams are
   exchangeable, swapping their labels within a case flips the sign of that case's difference,
   so each random permutation flips every case's sign independently with probability 1/2
   (seeded; one sign draw is shared by all pairs). The two-sided p-value is
   (1 + #{|null| >= |observed|}) / (1 + N) for N permutations; it is not adjusted for the number
   of pairs. The p-value matrix is symmetric, in final team order, with NaN on the diagonal (a
   team is not tested against itself) and everywhere when N = 0 (no tests).

Flipping signs per case-region pair instead, as if the three regions were independent cases,
is anti-conservative: with correlated regions it rejects about a quarter of the time at a
nominal 5% (see tests/uncertainty/test_ranking.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from uncertainty.qubrats import REGIONS

__all__ = [
    "RANKING_COLUMNS",
    "Ranking",
    "cumulative_ranks",
    "pairwise_permutation_test",
    "pairwise_rows",
    "rank_per_pair",
    "rank_teams",
]

#: Columns of a ranking table row (see :func:`rank_teams`), in ``ranking.csv`` order.
RANKING_COLUMNS = (
    "position",
    "team",
    "mean_rank",
    "normalized_ranking_score",
    "pairs_scored",
    "pairs_missing",
    "mean_score_WT",
    "mean_score_TC",
    "mean_score_ET",
    "p_value_vs_next",
    "significant_vs_next",
)

#: Elements of one block of the sign matrix times the pairs (bounds the test's memory).
_BLOCK_ELEMENTS = 4_000_000


def rank_per_pair(scores: np.ndarray) -> np.ndarray:
    """Ranks of teams within each column: 1 = best (highest score), ties share the mean rank.

    Args:
        scores: float array (teams, ...) ranked along axis 0; NaN marks a missing or failed
            result, which ranks below every real score.

    Returns:
        float64 array of the same shape, ranks in [1, teams].
    """
    from scipy.stats import rankdata

    keyed = np.where(np.isnan(scores), -np.inf, scores)
    return rankdata(-keyed, method="average", axis=0)


def cumulative_ranks(scores: np.ndarray) -> np.ndarray:
    """Each team's cumulative rank per case: the mean of its region ranks (rule 2).

    Args:
        scores: float array (teams, cases, regions); NaN marks a missing or failed result.

    Returns:
        float64 array (teams, cases).

    Raises:
        ValueError: ``scores`` is not 3-D.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 3:
        raise ValueError(f"scores must be (teams, cases, regions), got shape {scores.shape}")
    return rank_per_pair(scores).mean(axis=2)


def pairwise_permutation_test(values: np.ndarray, *, permutations: int = 100_000, seed: int = 0) -> np.ndarray:
    """Two-sided paired sign-flip permutation tests between every pair of rows (rule 4).

    Each column is one unit (a case): a permutation flips the sign of each unit's difference
    independently. The same seeded sign draws serve every pair; the work is one matrix product
    per block of permutations.

    Args:
        values: float array (teams, units), e.g. the cumulative ranks of :func:`cumulative_ranks`.
        permutations: random sign-flip permutations N (0: no tests, every entry NaN).
        seed: seed of the generator (results are reproducible).

    Returns:
        float64 array (teams, teams): entry (i, j) is the p-value of mean(values[i] - values[j])
        = 0, (1 + #{|null| >= |observed|}) / (1 + N); symmetric, NaN on the diagonal.

    Raises:
        ValueError: ``values`` is not 2-D, or ``permutations`` is negative.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be (teams, units), got shape {values.shape}")
    if permutations < 0:
        raise ValueError(f"permutations must be >= 0, got {permutations}")
    teams, units = values.shape
    p_values = np.full((teams, teams), np.nan)
    if teams < 2 or permutations == 0:
        return p_values
    first, second = np.triu_indices(teams, k=1)
    diffs = values[first] - values[second]  # (pairs, units)
    totals = diffs.sum(axis=1)
    observed = np.abs(totals)
    # Sums of equal magnitude can differ in the last bits depending on the order of the terms.
    tolerance = 1e-9 * max(1.0, float(np.abs(diffs).sum(axis=1).max(initial=0.0)))
    exceed = np.zeros(len(first), dtype=np.int64)
    rng = np.random.default_rng(seed)
    block = max(1, min(permutations, _BLOCK_ELEMENTS // max(units, len(first), 1)))
    done = 0
    while done < permutations:
        size = min(block, permutations - done)
        # One random bit per unit; a set bit flips the unit's sign: sum(+-d) = sum(d) - 2 * sum(flipped d).
        random_bytes = rng.integers(0, 256, size=(size, (units + 7) // 8), dtype=np.uint8)
        flipped = np.unpackbits(random_bytes, axis=1, count=units)
        null = np.abs(totals - 2.0 * (flipped @ diffs.T))  # (size, pairs)
        exceed += np.count_nonzero(null >= observed - tolerance, axis=0)
        done += size
    p = (1 + exceed) / (1 + permutations)
    p_values[first, second] = p
    p_values[second, first] = p
    return p_values


@dataclass(frozen=True)
class Ranking:
    """Result of :func:`rank_teams`; every array is in the final team order (best first).

    Attributes:
        teams: team names.
        case_ids: the case IDs ranked over.
        scores: (teams, cases, regions) scores, NaN where missing or failed.
        ranks: (teams, cases, regions) ranks per case and region.
        cumulative: (teams, cases) cumulative ranks (mean of the region ranks).
        p_values: (teams, teams) unadjusted pairwise permutation-test p-values, symmetric,
            NaN on the diagonal (and everywhere when ``permutations`` is 0).
        table: one dict per team with the :data:`RANKING_COLUMNS`.
        permutations: permutations per test; seed: their seed; alpha: the significance level.
    """

    teams: tuple[str, ...]
    case_ids: tuple[str, ...]
    scores: np.ndarray
    ranks: np.ndarray
    cumulative: np.ndarray
    p_values: np.ndarray
    table: tuple[dict, ...]
    permutations: int
    seed: int
    alpha: float

    def missing(self) -> list[tuple[str, str, str]]:
        """Every (team, case_id, region) without a score, in team, case and region order."""
        where = np.argwhere(np.isnan(self.scores))
        return [(self.teams[t], self.case_ids[c], REGIONS[r]) for t, c, r in where]


def _score_array(
    scores: Mapping[str, Mapping[tuple[str, str], float]], names: Sequence[str], cases: Sequence[str]
) -> np.ndarray:
    """(teams, cases, regions) array of ``scores``, NaN where a pair is absent."""
    array = np.full((len(names), len(cases), len(REGIONS)), np.nan)
    for t, team in enumerate(names):
        for c, case in enumerate(cases):
            for r, region in enumerate(REGIONS):
                value = scores[team].get((case, region))
                if value is not None:
                    array[t, c, r] = float(value)
    return array


def _table(
    names: Sequence[str], scores: np.ndarray, mean_rank: np.ndarray, p_values: np.ndarray, alpha: float
) -> tuple[dict, ...]:
    """Ranking rows of teams already in final order."""
    rows = []
    for t, team in enumerate(names):
        missing = np.isnan(scores[t])
        row = {
            "position": t + 1,
            "team": team,
            "mean_rank": float(mean_rank[t]),
            "normalized_ranking_score": float(mean_rank[t] / len(names)),
            "pairs_scored": int(np.count_nonzero(~missing)),
            "pairs_missing": int(np.count_nonzero(missing)),
        }
        for r, region in enumerate(REGIONS):
            valid = scores[t, :, r][~missing[:, r]]
            row[f"mean_score_{region}"] = float(valid.mean()) if valid.size else None
        p = p_values[t, t + 1] if t + 1 < len(names) else np.nan
        row["p_value_vs_next"] = None if np.isnan(p) else float(p)
        row["significant_vs_next"] = None if np.isnan(p) else bool(p < alpha)
        rows.append(row)
    return tuple(rows)


def rank_teams(
    scores: Mapping[str, Mapping[tuple[str, str], float]],
    case_ids: Sequence[str],
    *,
    permutations: int = 100_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Ranking:
    """Rank teams by their cumulative ranks per case (see the module docstring).

    Args:
        scores: per team, ``{(case_id, region): score}``; absent pairs are missing.
        case_ids: the cases every team should have (the truth set).
        permutations: permutations per pairwise test (0 skips the tests).
        seed: seed of the permutation tests.
        alpha: significance level of ``significant_vs_next``.

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
    array = _score_array(scores, names, cases)
    ranks = rank_per_pair(array)
    cumulative = ranks.mean(axis=2)
    mean_rank = cumulative.mean(axis=1)
    order = sorted(range(len(names)), key=lambda t: (mean_rank[t], names[t]))
    ordered = [names[t] for t in order]
    p_values = pairwise_permutation_test(cumulative[order], permutations=permutations, seed=seed)
    return Ranking(
        teams=tuple(ordered),
        case_ids=tuple(cases),
        scores=array[order],
        ranks=ranks[order],
        cumulative=cumulative[order],
        p_values=p_values,
        table=_table(ordered, array[order], mean_rank[order], p_values, alpha),
        permutations=permutations,
        seed=seed,
        alpha=alpha,
    )


def pairwise_rows(ranking: Ranking) -> list[dict]:
    """The p-value matrix as table rows (the rows of ``pairwise_p_values.csv``).

    Args:
        ranking: a ranking.

    Returns:
        One dict per team in final order: ``team`` (the row's team) and one key per team (the
        column's team) holding the p-value, or None on the diagonal and where no test ran.
    """
    return [
        {
            "team": row_team,
            **{
                col_team: None if np.isnan(ranking.p_values[i, j]) else float(ranking.p_values[i, j])
                for j, col_team in enumerate(ranking.teams)
            },
        }
        for i, row_team in enumerate(ranking.teams)
    ]
