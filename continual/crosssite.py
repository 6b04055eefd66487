"""Cross-site evaluation of a federation: what it gains at its own sites and at sites it never saw.

Roth et al. (2020, "Federated Learning for Breast Density Classification: A Real-World
Implementation") report two gains of federated over local-only training: +6.3% on each site's own
test data, and +45.8% in "generalizability" on the other sites' test data. Scoring a federated
model on the other sites' test data measures generalization only if the federation never trained
on those sites; under FedBN the model at a site even carries that site's own BN, so its own-site
score is personalization. This module keeps these apart.

**The score table.** Every evaluated (seed, model, BN, test site) is a :class:`Score`: the labels
and probabilities of one model on one site's test split, with its *role*:

======================  ========================================================================
role                    meaning
======================  ========================================================================
``local_own``           a local-only model (trained on site k alone) on site k's test split
``local_unseen``        local-only model k on another site h's test split (never trained on h)
``federated_own``       the federation's shared model on a member site's test split
``personalized_own``    FedBN: the shared weights with site k's own BN (``federated_<k>``) on site k
``heldout``             a federation of every site but h (leave-one-out) on h's test split
``pooled_own``          all sites' data in one place (upper bound) on a site's test split
======================  ========================================================================

and which batch-norm statistics it normalized with (``bn``, see :data:`BN_SOURCES`): a site's own,
a local model's training site, the example-weighted mean over a federation's training sites (how
both FedAvg and FedBN's server aggregate them), the frozen initial statistics (``global_frozen``),
or ``tta``: statistics re-estimated on the test site's unlabelled training and validation images
(test-time BN adaptation, :func:`adapt_bn_statistics`; labels are never read).

**The quantities** (:func:`seed_quantities`, :func:`combine`), over seeds s (each seed trains the
whole federation, the leave-one-out federations and the local-only models) and K sites:

* ``local_gain`` = mean_s mean_k [F_s(k) - L_s(k)], with F_s(k) the federation's model for site k
  on k (the personalized model under FedBN, else the shared one) and L_s(k) local-only model k on
  k; ``local_gain_relative`` = ``local_gain`` / mean_s mean_k L_s(k). Roth et al.'s +6.3%.
* ``generalizability_gain`` = (G_FL - G_local) / G_local, with G_FL = mean_s mean_h H_s(h), H_s(h)
  the federation of every site but h scored on h (never seen), and G_local = mean_s mean_h of the
  mean over k != h of local-only model k on h (never seen). Both terms score only models on sites
  they never trained on, over the same held-out sites: a site where either side is undefined (e.g.
  a resampled test set with one class, where kappa is NaN) leaves both sides, so the difference
  stays paired. With every score defined, G_local is the mean over ordered pairs (k, h != k). Roth et
  al.'s +45.8% is this ratio with their federated model trained on every site (their exact formula
  is not published); ours holds the site out, so it measures generalization to a new institution.
  ``generalizability_gain_absolute`` = G_FL - G_local. The headline uses each model's BN as
  trained (``federation_mean`` / ``initial_frozen`` for the held-out federation,
  ``training_site`` for the local models); ``..._tta`` repeats it with test-time BN adaptation on
  both sides (like with like).
* ``personalized_own_site`` = mean_s mean_k of FedBN's personalized models on their own site:
  reported under its own name, never as generalization.

**Intervals** (:func:`bootstrap`): a two-level percentile bootstrap. Each replicate draws the seeds
with replacement, and, at every site, the test split's patients (exams) with replacement (all
images of a patient move together; the same draw for every model and seed, so comparisons stay
paired), rescores every model on the resampled test sets and recomputes every quantity. A claim
(:func:`claim_status`) is ``"met"`` when its 95% interval lies above zero, ``"reversed"`` when it
lies below, and ``"not shown"`` when it includes zero (or is undefined).

Generic: takes labels, probabilities and a score function; imports nothing from ``pipelines``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medimg.stats import finite_mean

__all__ = [
    "BN_SOURCES",
    "CLAIMS",
    "ROLES",
    "Score",
    "bootstrap",
    "bootstrap_draws",
    "claim_status",
    "combine",
    "replicate",
    "seed_quantities",
    "summarize",
    "adapt_bn_statistics",
]

ROLES: dict[str, str] = {
    "local_own": "local-only model k on site k's test split",
    "local_unseen": "local-only model k on another site's test split (never trained there)",
    "federated_own": "the federation's shared model on a member site's test split",
    "personalized_own": "FedBN: shared weights + site k's own BN, on site k (personalization)",
    "heldout": "federation of every site but h, on h's test split (never trained there)",
    "pooled_own": "all sites' images in one place (upper bound), on a site's test split",
}

BN_SOURCES: dict[str, str] = {
    "site_own": "the test site's own BN, learned in training there",
    "training_site": "a local model's BN, learned at its training site (not the test site)",
    "federation_mean": "example-weighted mean of the federation's training sites' BN (FedAvg / FedBN server)",
    "initial_frozen": "the initial model's BN statistics, frozen during federated training (global_frozen)",
    "pooled": "BN learned on all sites' images pooled",
    "tta": "re-estimated on the test site's unlabelled training+validation images (test-time BN)",
}

#: BN of each side of the generalization comparison: (held-out federation, local model on an unseen site).
_AS_TRAINED = ({"federation_mean", "initial_frozen"}, {"training_site", "initial_frozen"})
_TTA = ({"tta"}, {"tta"})

#: The claims and the quantity each one rests on (the absolute difference; its sign is the claim's).
CLAIMS: dict[str, str] = {
    "local_gain": "local_gain",
    "generalizability_gain": "generalizability_gain_absolute",
    "generalizability_gain_tta": "generalizability_gain_tta_absolute",
}


@dataclass
class Score:
    """One model's predictions on one site's test split (a row of the score table).

    Attributes:
        seed: the training seed of the model.
        model: its name (e.g. ``federated``, ``heldout_site_a``, ``local_site_b``).
        role: one of :data:`ROLES`.
        bn: one of :data:`BN_SOURCES`.
        site: the test site.
        y_true: ``(N,)`` labels of the site's test split (same order for every model).
        y_prob: ``(N, K)`` probabilities.
        trained_on: the sites whose images trained the model.
    """

    seed: int
    model: str
    role: str
    bn: str
    site: str
    y_true: np.ndarray
    y_prob: np.ndarray
    trained_on: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; choose from {list(ROLES)}")
        if self.bn not in BN_SOURCES:
            raise ValueError(f"unknown BN source {self.bn!r}; choose from {list(BN_SOURCES)}")
        if self.role in ("heldout", "local_unseen") and self.site in self.trained_on:
            raise ValueError(f"{self.model} trained on {self.site}: it cannot be scored there as {self.role!r}")


def seed_quantities(table: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Per seed, the means each gain is built from (NaN scores are left out of the means).

    Args:
        table: rows with ``seed``, ``role``, ``bn``, ``site`` and ``score`` (a hand-made table, or
            :class:`Score` rows scored by a metric).

    Returns:
        ``{seed: {...}}`` with ``federated_own`` (per site the personalized model where there is
        one, else the shared model), ``local_own``, ``local_gain`` (mean over sites of the paired
        difference, sites with both scores), ``heldout`` and ``local_unseen`` (BN as trained),
        ``heldout_tta`` and ``local_unseen_tta`` (test-time BN), ``personalized_own``,
        ``federated_shared_own`` and ``pooled_own``; NaN where the table has no such rows.
    """
    out: dict[int, dict[str, float]] = {}
    for seed in sorted({int(r["seed"]) for r in table}):
        rows = [r for r in table if int(r["seed"]) == seed]

        def pick(role: str, bns: set[str] | None = None, rows: list = rows) -> list[Mapping[str, Any]]:
            return [r for r in rows if r["role"] == role and (bns is None or r["bn"] in bns)]

        own: dict[str, float] = {str(r["site"]): float(r["score"]) for r in pick("federated_own")}
        own.update({str(r["site"]): float(r["score"]) for r in pick("personalized_own")})
        local = {str(r["site"]): float(r["score"]) for r in pick("local_own")}
        paired = [own[k] - local[k] for k in own if k in local]
        heldout, unseen = _paired_unseen(pick("heldout", _AS_TRAINED[0]), pick("local_unseen", _AS_TRAINED[1]))
        heldout_tta, unseen_tta = _paired_unseen(pick("heldout", _TTA[0]), pick("local_unseen", _TTA[1]))
        q = {
            "federated_own": finite_mean(own.values()),
            "local_own": finite_mean(local.values()),
            "local_gain": finite_mean(paired),
            "heldout": heldout,
            "local_unseen": unseen,
            "heldout_tta": heldout_tta,
            "local_unseen_tta": unseen_tta,
            "personalized_own": finite_mean(r["score"] for r in pick("personalized_own")),
            "federated_shared_own": finite_mean(r["score"] for r in pick("federated_own")),
            "pooled_own": finite_mean(r["score"] for r in pick("pooled_own")),
        }
        out[seed] = q
    return out


def _paired_unseen(heldout: Sequence[Mapping[str, Any]], unseen: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """(G_FL, G_local) of one seed over the held-out sites where both are defined.

    Per site h: the held-out federation's score on h, and the mean over local models of their
    scores on h (NaN scores left out). A site where either is undefined is dropped from both sides.
    Without held-out rows (no leave-one-out): (NaN, the mean over every local model and unseen site).
    """
    if not heldout:
        return math.nan, finite_mean(r["score"] for r in unseen)
    held = {str(r["site"]): float(r["score"]) for r in heldout}
    local = {h: finite_mean(float(r["score"]) for r in unseen if str(r["site"]) == h) for h in held}
    sites = [h for h in held if math.isfinite(held[h]) and math.isfinite(local[h])]
    return finite_mean(held[h] for h in sites), finite_mean(local[h] for h in sites)


def _ratio(num: float, den: float) -> float:
    """num / den; NaN where undefined or where den <= 0 (a relative gain over a score at or below
    chance, e.g. a negative kappa, would flip its sign)."""
    return num / den if math.isfinite(num) and math.isfinite(den) and den > 0 else math.nan


def combine(per_seed: Mapping[int, Mapping[str, float]], seeds: Sequence[int] | None = None) -> dict[str, float]:
    """The gains over ``seeds`` (repeats count again, as a bootstrap draw of seeds does).

    Args:
        per_seed: :func:`seed_quantities` output.
        seeds: the seeds to average over (default: every seed once).

    Returns:
        The mean of every per-seed quantity, plus ``local_gain_relative`` = mean ``local_gain`` /
        mean ``local_own``, ``generalizability_gain_absolute`` = mean ``heldout`` - mean
        ``local_unseen``, ``generalizability_gain`` = that / mean ``local_unseen`` (relative), and
        the same two with test-time BN (``generalizability_gain_tta[_absolute]``). NaN where
        undefined.
    """
    chosen = list(per_seed) if seeds is None else list(seeds)
    keys = sorted({k for q in per_seed.values() for k in q})
    mean = {k: finite_mean(per_seed[s][k] for s in chosen) for k in keys}
    out = dict(mean)
    out["local_gain_relative"] = _ratio(mean.get("local_gain", math.nan), mean.get("local_own", math.nan))
    for suffix in ("", "_tta"):
        held, unseen = mean.get("heldout" + suffix, math.nan), mean.get("local_unseen" + suffix, math.nan)
        out[f"generalizability_gain{suffix}_absolute"] = held - unseen
        out[f"generalizability_gain{suffix}"] = _ratio(held - unseen, unseen)
    return out


def claim_status(interval: Sequence[float]) -> str:
    """``"met"`` if the interval lies above 0, ``"reversed"`` if below, else ``"not shown"`` (also NaN)."""
    lo, hi = (float(v) for v in interval)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "not shown"
    if lo > 0:
        return "met"
    if hi < 0:
        return "reversed"
    return "not shown"


def _site_positions(groups: Mapping[str, Sequence[Any]]) -> dict[str, list[np.ndarray]]:
    """Per site, the test-split positions of each patient (the bootstrap's resampling unit)."""
    out: dict[str, list[np.ndarray]] = {}
    for site, keys in groups.items():
        ids = np.asarray([str(k) for k in keys])
        out[site] = [np.flatnonzero(ids == g) for g in dict.fromkeys(ids.tolist())]
    return out


def _check_scores(scores: Sequence[Score], groups: Mapping[str, Sequence[Any]]) -> None:
    for s in scores:
        if s.site not in groups:
            raise ValueError(f"no patient groups for test site {s.site!r}")
        if len(s.y_true) != len(groups[s.site]) or len(s.y_prob) != len(s.y_true):
            raise ValueError(
                f"{s.model} on {s.site}: {len(s.y_true)} labels, {len(s.y_prob)} predictions, "
                f"{len(groups[s.site])} patient keys"
            )


def replicate(
    scores: Sequence[Score],
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    indices: Mapping[str, np.ndarray] | None,
    seeds: Sequence[int] | None = None,
) -> dict[str, float]:
    """Every quantity of :func:`combine` on one resample.

    Args:
        scores: the score table.
        score_fn: ``(y_true, y_prob) -> metric`` (e.g. linear kappa).
        indices: per test site, the positions drawn from its test split (None: the full splits).
        seeds: the seeds drawn (None: every seed once).

    Returns:
        :func:`combine` of the rescored table.
    """
    wanted = None if seeds is None else set(seeds)
    table = []
    for s in scores:
        if wanted is not None and s.seed not in wanted:
            continue
        idx = slice(None) if indices is None else indices[s.site]
        table.append({"seed": s.seed, "role": s.role, "bn": s.bn, "site": s.site,
                      "score": score_fn(s.y_true[idx], s.y_prob[idx])})  # fmt: skip
    return combine(seed_quantities(table), seeds)


def bootstrap(
    scores: Sequence[Score],
    groups: Mapping[str, Sequence[Any]],
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every quantity of :func:`combine` (see the module docstring).

    Args:
        scores: the score table (every seed's models).
        groups: per test site, the patient (exam) key of each test image, in the order of ``y_true``.
        score_fn: ``(y_true, y_prob) -> metric``.
        n_boot: replicates (>= 1).
        seed: seed of the ``numpy.random.default_rng`` generator (deterministic).
        alpha: 1 - confidence level.

    Returns:
        ``{quantity: (lo, hi)}``, the ``alpha/2`` and ``1 - alpha/2`` percentiles over replicates
        where the quantity is defined; ``(nan, nan)`` where it never is.

    Raises:
        ValueError: labels and patient keys of different lengths, ``n_boot < 1``, bad ``alpha``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    draws = bootstrap_draws(scores, groups, score_fn, n_boot=n_boot, seed=seed)
    return {key: _interval(arr, alpha) for key, arr in draws.items()}


def _interval(draws: np.ndarray, alpha: float) -> tuple[float, float]:
    """The ``alpha/2`` and ``1 - alpha/2`` percentiles of the defined draws; (NaN, NaN) if none is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_draws(
    scores: Sequence[Score],
    groups: Mapping[str, Sequence[Any]],
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Every quantity of :func:`combine` on each of ``n_boot`` bootstrap replicates (NaN where a
    replicate leaves it undefined); :func:`bootstrap` takes their percentiles.

    Raises:
        ValueError: labels and patient keys of different lengths, ``n_boot < 1``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _check_scores(scores, groups)
    positions = _site_positions(groups)
    all_seeds = sorted({s.seed for s in scores})
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(n_boot):
        drawn_seeds = [all_seeds[i] for i in rng.integers(0, len(all_seeds), size=len(all_seeds))]
        indices = {}
        for site in sorted(positions):
            patients = positions[site]
            picks = rng.integers(0, len(patients), size=len(patients))
            indices[site] = np.concatenate([patients[i] for i in picks]) if patients else np.zeros(0, int)
        for key, value in replicate(scores, score_fn, indices, drawn_seeds).items():
            values.setdefault(key, []).append(value)
    return {key: np.asarray(vals, dtype=np.float64) for key, vals in values.items()}


def summarize(
    scores: Sequence[Score],
    groups: Mapping[str, Sequence[Any]],
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Point estimates, 95% intervals and claim statuses (the ``summary.json`` gains).

    Returns:
        ``{"quantities": {name: {"value", "ci95"}}, "claims": {claim: {"value", "ci95", "status",
        "relative", "relative_ci95"}}, "per_seed": {seed: quantities}}``; ``local_gain`` and
        ``generalizability_gain[_tta]`` claims rest on the absolute differences (their relative
        forms beside them). A claim whose terms are absent from the table is left out.
    """
    _check_scores(scores, groups)
    per_seed = seed_quantities(
        [{"seed": s.seed, "role": s.role, "bn": s.bn, "site": s.site, "score": score_fn(s.y_true, s.y_prob)}
         for s in scores]
    )  # fmt: skip
    point = combine(per_seed)
    draws = bootstrap_draws(scores, groups, score_fn, n_boot=n_boot, seed=seed)
    intervals = {key: _interval(arr, 0.05) for key, arr in draws.items()}
    nan2 = (math.nan, math.nan)
    quantities = {k: {"value": point[k], "ci95": list(intervals.get(k, nan2))} for k in point}
    claims = {}
    relative = {
        "local_gain": "local_gain_relative",
        "generalizability_gain": "generalizability_gain",
        "generalizability_gain_tta": "generalizability_gain_tta",
    }
    for claim, key in CLAIMS.items():
        if not math.isfinite(point.get(key, math.nan)):
            continue
        ci = intervals.get(key, nan2)
        claims[claim] = {
            "value": point[key],
            "ci95": list(ci),
            "status": claim_status(ci),
            "relative": point[relative[claim]],
            "relative_ci95": list(intervals.get(relative[claim], nan2)),
            "undefined_replicates": int(np.isnan(draws[key]).sum()) if key in draws else 0,
        }
    return {"quantities": quantities, "claims": claims, "per_seed": {str(k): v for k, v in per_seed.items()}}


class _ImagesOnly(torch.utils.data.Dataset):
    """A view of a dataset that hands out only each item's ``"image"`` (its label is never read)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        image = self.dataset[index]["image"]
        return image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)


def adapt_bn_statistics(model: torch.nn.Module, dataset: Any, *, batch_size: int = 16) -> int:
    """Test-time BN adaptation: re-estimate every BN layer's statistics on a site's unlabelled images.

    The model's weights and BN affine parameters are kept; its running means and variances are
    replaced by the exact population statistics of each BN layer's input over ``dataset``
    (:func:`continual.bn.recompute_bn_stats`: one pass, BN layers normalizing with batch statistics
    as in training). Only ``item["image"]`` is read from the dataset, never a label.

    Args:
        model: the network (changed in place).
        dataset: map-style dataset of ``{"image": ...}`` items (e.g. the site's training and
            validation images, through the inference transforms).
        batch_size: forward-pass batch size.

    Returns:
        The number of images seen.

    Raises:
        ValueError: an empty dataset.
    """
    from continual.bn import recompute_bn_stats

    if len(dataset) == 0:
        raise ValueError("test-time BN adaptation needs at least one image")
    loader = torch.utils.data.DataLoader(_ImagesOnly(dataset), batch_size=batch_size, shuffle=False)
    return recompute_bn_stats(model, loader)
