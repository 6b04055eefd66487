"""Hand-written metric kernels, kept because the bootstrap calls them thousands of times.

:func:`medimg.evaluation.bootstrap.bootstrap_ci` recomputes :func:`~medimg.evaluation.binary.binary_metrics`
or :func:`~medimg.evaluation.multiclass.multiclass_metrics` on every resample (1,000 by default).
scikit-learn's ``roc_auc_score``, ``average_precision_score``, ``confusion_matrix``,
``recall_score``/``precision_score``, ``accuracy_score`` and ``cohen_kappa_score`` give the same
numbers but spend most of their time validating their inputs: built from them, the metrics of one
resample of 500 cases cost 75-140x (binary) and 35-65x (4-class) as much as with these kernels,
which turns a 0.1-0.3 s ``evaluate_binary`` into 15-25 s (shared 2-core CPU, scikit-learn 1.9.1).
``python tests/benchmarks/bench_evaluation.py`` measures the ratios in one run;
tests/medimg/test_evaluation_kernels.py checks every kernel against scikit-learn on random inputs
with ties and degenerate cases.

The kernels take arrays already checked by :mod:`medimg.evaluation.inputs` (``y`` bool or int64,
scores float64). Every curve, plot and one-off number elsewhere in the package comes from
scikit-learn itself.

Where they differ from scikit-learn on purpose: with one class only, :func:`average_precision_from_curve`
gives NaN (scikit-learn: 1.0 with positives only, 0.0 with a warning with negatives only), so that
the ROC AUC and AP of a degenerate resample are both left out of an interval rather than pulling it
to 1 or 0 regardless of the scores; and the threshold rates give NaN for a zero denominator, as
scikit-learn does with ``zero_division=np.nan``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "average_precision_from_curve",
    "clf_curve",
    "cohen_kappa",
    "confusion_counts",
    "roc_auc",
    "roc_auc_from_curve",
    "safe_ratio",
    "threshold_rates",
]


def safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` as a float, NaN when the denominator is zero."""
    return float(numerator / denominator) if denominator else math.nan


def clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positives at each distinct score, thresholds decreasing.

    The counts of scikit-learn's private ``_binary_clf_curve``, in integers.

    Args:
        y: ``(N,)`` bool labels.
        s: ``(N,)`` float64 scores.

    Returns:
        ``(fps, tps, thresholds)``, each ``(T,)``: ``fps[i]``/``tps[i]`` (int64) count the negatives
        and positives with ``score >= thresholds[i]``; ``thresholds`` (float64) are the distinct
        scores, highest first.
    """
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]  # last case of each distinct score
    tps = np.cumsum(y[order], dtype=np.int64)[last]
    fps = last + 1 - tps
    return fps, tps, s_sorted[last]


def roc_auc_from_curve(fps: np.ndarray, tps: np.ndarray) -> float:
    """Trapezoidal area under the ROC points of :func:`clf_curve`, exactly the Mann-Whitney U / (P N).

    A tie between a positive and a negative moves the curve diagonally, so it counts one half, as
    average ranks do. Computed in integers (twice the area) and divided once. NaN for one class.
    """
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        return math.nan
    twice_area = int(np.sum(np.diff(fps, prepend=0) * (tps + np.r_[0, tps[:-1]])))
    return twice_area / (2.0 * n_pos * n_neg)


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of a bool ``y`` and float ``s`` (ties count one half); NaN for one class."""
    return roc_auc_from_curve(*clf_curve(y, s)[:2])


def average_precision_from_curve(fps: np.ndarray, tps: np.ndarray) -> float:
    """Step-wise average precision ``sum_n (R_n - R_{n-1}) P_n`` from :func:`clf_curve`; NaN for one class."""
    n_pos = int(tps[-1])
    if n_pos == 0 or fps[-1] == 0:
        return math.nan
    precision = tps / (tps + fps)
    return float(np.sum(np.diff(tps, prepend=0) * precision) / n_pos)


def threshold_rates(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV of ``s >= threshold`` against bool ``y``.

    Returns:
        ``{"sensitivity", "specificity", "ppv", "npv"}``, floats, NaN for a zero denominator.
    """
    predicted = s >= threshold
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    tp = int(np.count_nonzero(predicted & y))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = n_pos - tp
    tn = n_neg - fp
    return {
        "sensitivity": safe_ratio(tp, n_pos),
        "specificity": safe_ratio(tn, n_neg),
        "ppv": safe_ratio(tp, tp + fp),
        "npv": safe_ratio(tn, tn + fn),
    }


def confusion_counts(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 confusion matrix of int64 class indices in ``[0, K)``: rows truth, columns prediction."""
    return np.bincount(y * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def cohen_kappa(confusion: ArrayLike, *, weights: str | None = None) -> float:
    """Cohen's kappa of a confusion matrix, as sklearn's ``cohen_kappa_score``.

    ``kappa = 1 - sum(W * O) / sum(W * E)`` with ``O`` the observed and ``E`` the chance-expected
    matrix (outer product of the marginals over N), and ``W`` 1 off the diagonal (unweighted),
    ``|i - j|`` (linear) or ``(i - j)^2`` (quadratic) for ordinal classes.

    Args:
        confusion: ``(K, K)`` counts, rows = truth, columns = prediction.
        weights: ``None``, ``"linear"`` or ``"quadratic"``.

    Returns:
        kappa (float): 1 for perfect agreement, 0 for chance-level agreement (e.g. a constant
        prediction); NaN when chance agreement is already perfect (``sum(W * E) == 0``).

    Raises:
        ValueError: a non-square matrix or unknown ``weights``.
    """
    observed = np.asarray(confusion, dtype=np.float64)
    if observed.ndim != 2 or observed.shape[0] != observed.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {observed.shape}")
    n = observed.sum()
    if n == 0:
        return math.nan
    index = np.arange(observed.shape[0])
    distance = np.abs(index[:, None] - index[None, :]).astype(np.float64)
    if weights is None:
        w = (distance > 0).astype(np.float64)
    elif weights == "linear":
        w = distance
    elif weights == "quadratic":
        w = distance**2
    else:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    chance = float((w * expected).sum())
    return 1.0 - float((w * observed).sum()) / chance if chance > 0 else math.nan
