"""Percentile bootstrap confidence intervals for any metric function: :func:`bootstrap_ci`.

Cases are resampled with replacement, stratified by class by default, and the metric function is
recomputed on every resample; undefined (NaN) resamples are left out of the percentiles.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from medimg.evaluation.inputs import is_scalar

__all__ = ["bootstrap_ci"]


def _scalars(value: float | Mapping[str, Any]) -> dict[str, float]:
    """The real-scalar entries of a metric result as ``{key: float}`` (``{"value": x}`` for a number)."""
    if isinstance(value, Mapping):
        return {str(key): float(v) for key, v in value.items() if is_scalar(v)}
    if is_scalar(value):
        return {"value": float(value)}
    raise TypeError(f"metric_fn must return a number or a dict, got {type(value).__name__}")


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float | Mapping[str, Any]],
    y_true: ArrayLike,
    scores: ArrayLike,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals for every scalar ``metric_fn`` returns.

    Each of ``n_boot`` resamples draws N cases with replacement; stratified, each class is
    resampled within itself, so every resample has exactly the class counts of ``y_true`` (and
    metrics such as ROC AUC stay defined whenever they are on the full data). The interval is the
    ``alpha / 2`` and ``1 - alpha / 2`` percentiles (linear interpolation) of the resampled values,
    ignoring resamples where the metric is NaN. Deterministic for a given ``seed``.

    Args:
        metric_fn: ``metric_fn(y_true, scores)`` returning a number or a dict; dict entries that
            are not real scalars (lists, nested dicts, bools) are skipped.
        y_true: ``(N,)`` labels (any values; their distinct values are the strata).
        scores: ``(N, ...)`` scores or probabilities, resampled along the first axis.
        n_boot: number of resamples (>= 1).
        seed: seed of the ``numpy.random.default_rng`` generator.
        alpha: 1 - confidence level, in (0, 1).
        stratified: resample within each class (default) or from all cases.

    Returns:
        ``{metric: (lo, hi)}`` (Python floats) for each scalar key of ``metric_fn`` on the full
        data, or ``{"value": (lo, hi)}`` when it returns a number; ``(nan, nan)`` when every
        resample is NaN.

    Raises:
        ValueError: mismatched lengths, no cases, ``n_boot < 1`` or ``alpha`` outside (0, 1).
    """
    y = np.asarray(y_true)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim < 1 or s.shape[0] != y.shape[0]:
        raise ValueError(f"y_true must be (N,) and scores (N, ...), got {y.shape} and {s.shape}")
    if y.size == 0:
        raise ValueError("no cases")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    keys = list(_scalars(metric_fn(y, s)))
    rng = np.random.default_rng(seed)
    if stratified:
        # Cases grouped by class; position j draws uniformly among the cases of its own class.
        _, strata = np.unique(y, return_inverse=True)
        order = np.argsort(strata, kind="stable")
        counts = np.bincount(strata)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        size = np.repeat(counts, counts)
    values = np.full((len(keys), n_boot), np.nan)
    for b in range(n_boot):
        if stratified:
            index = order[first + rng.integers(0, size)]
        else:
            index = rng.integers(0, y.size, size=y.size)
        result = _scalars(metric_fn(y[index], s[index]))
        values[:, b] = [result.get(key, math.nan) for key in keys]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        lo, hi = np.nanpercentile(values, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)], axis=1)
    return {key: (float(a), float(b)) for key, a, b in zip(keys, lo, hi, strict=True)}
