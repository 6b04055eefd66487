"""Binary classification (e.g. chest X-ray pneumonia): metrics, curves and the Youden threshold.

:func:`binary_metrics` (ROC AUC, average precision, and sensitivity, specificity, PPV and NPV at a
threshold) is the bootstrap's metric function and is built from the fast kernels of
:mod:`medimg.evaluation.kernels`; the curves (:func:`roc_curve`, :func:`pr_curve`,
:func:`calibration_curve`) are scikit-learn's, wrapped to check inputs and to give NaN rather than
a warning or a convention for undefined values. scikit-learn is imported inside the functions that
use it (about 1 s), so importing this module stays cheap.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike

from medimg.evaluation.inputs import binary_inputs
from medimg.evaluation.kernels import average_precision_from_curve, clf_curve, roc_auc_from_curve, threshold_rates

__all__ = ["binary_metrics", "calibration_curve", "pr_curve", "roc_curve", "youden_threshold"]


def binary_metrics(y_true: ArrayLike, score: ArrayLike, *, threshold: float = 0.5) -> dict[str, float | int]:
    """Discrimination and operating-point metrics of a binary classifier.

    Args:
        y_true: ``(N,)`` int or bool, 1 for positive cases (e.g. pneumonia), 0 for negative.
        score: ``(N,)`` float, the predicted probability (any score where higher means more
            likely positive works for the AUCs).
        threshold: operating point; ``score >= threshold`` is a positive prediction.

    Returns:
        ``roc_auc`` (Mann-Whitney, ties count one half; equals sklearn's ``roc_auc_score``),
        ``pr_auc`` (step-wise average precision, equals sklearn's ``average_precision_score``),
        ``sensitivity``, ``specificity``, ``ppv``, ``npv`` at ``threshold`` (floats), ``threshold``
        (float), ``n`` and ``n_positive`` (ints). With one class only the AUCs are NaN, and so is
        any ratio whose denominator is zero (e.g. PPV when nothing is predicted positive).

    Raises:
        ValueError: mismatched shapes, no cases, labels other than 0/1, or non-finite scores.
    """
    y, s = binary_inputs(y_true, score)
    fps, tps, _ = clf_curve(y, s)
    return {
        "roc_auc": roc_auc_from_curve(fps, tps),
        "pr_auc": average_precision_from_curve(fps, tps),
        **threshold_rates(y, s, float(threshold)),
        "threshold": float(threshold),
        "n": int(y.size),
        "n_positive": int(np.count_nonzero(y)),
    }


def roc_curve(
    y_true: ArrayLike, score: ArrayLike, *, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic curve: sklearn's ``roc_curve`` after checking the inputs.

    Args:
        y_true: ``(N,)`` int or bool labels in {0, 1}.
        score: ``(N,)`` float scores.
        drop_intermediate: drop thresholds whose point lies on a straight line between its
            neighbours (they do not change the curve), as sklearn does by default.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(T + 1,)`` float64: the point for ``score >=
        thresholds[i]``; ``thresholds`` are the distinct scores in decreasing order after a first
        ``inf`` (nothing positive, the point (0, 0)). ``fpr`` (``tpr``) is all NaN without negative
        (positive) cases, without sklearn's warning.
    """
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import roc_curve as sklearn_roc_curve

    y, s = binary_inputs(y_true, score)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # one class: NaN rates, documented above
        fpr, tpr, thresholds = sklearn_roc_curve(y, s, drop_intermediate=drop_intermediate)
    return fpr, tpr, thresholds


def pr_curve(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve: sklearn's ``precision_recall_curve`` after checking the inputs.

    Args:
        y_true: ``(N,)`` int or bool labels in {0, 1}.
        score: ``(N,)`` float scores.

    Returns:
        ``(precision, recall, thresholds)``: ``precision`` and ``recall`` ``(T + 1,)`` float64 and
        ``thresholds`` ``(T,)`` float64, the distinct scores in increasing order; entry ``i`` is the
        point for ``score >= thresholds[i]``, and the last entry is the point (recall 0,
        precision 1) that closes the curve. ``recall`` is NaN without positive cases (sklearn
        warns and sets it to 1). ``sum(diff(recall) * precision[:-1])`` is minus the average
        precision.
    """
    from sklearn.metrics import precision_recall_curve

    y, s = binary_inputs(y_true, score)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No positive class found")
        precision, recall, thresholds = precision_recall_curve(y, s)
    if not y.any():
        recall[:-1] = np.nan  # 0 / 0: undefined, not 1
    return precision, recall, thresholds


def calibration_curve(
    y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability diagram data with uniform probability bins: sklearn's ``calibration_curve`` plus counts.

    The bins are sklearn's ``strategy="uniform"`` ones: ``(k / n_bins, (k + 1) / n_bins]``, the
    first one closed at 0.

    Args:
        y_true: ``(N,)`` int or bool labels in {0, 1}.
        prob: ``(N,)`` float predicted probabilities in [0, 1].
        n_bins: number of bins (>= 1).

    Returns:
        ``(mean_predicted, fraction_positive, counts)`` for the non-empty bins, in increasing
        order: the mean predicted probability and the observed fraction of positives (float64)
        and the number of cases (int64) of each bin, each ``(B,)`` with ``B <= n_bins``.

    Raises:
        ValueError: probabilities outside [0, 1] or ``n_bins < 1``.
    """
    from sklearn.calibration import calibration_curve as sklearn_calibration_curve

    y, p = binary_inputs(y_true, prob)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"prob must lie in [0, 1], got [{p.min()}, {p.max()}]")
    fraction_positive, mean_predicted = sklearn_calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    # sklearn does not return the counts: the same bins (inner edges, right-closed), counted.
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)
    counts = np.bincount(bins, minlength=n_bins)
    return mean_predicted, fraction_positive, counts[counts > 0].astype(np.int64)


def youden_threshold(y_true: ArrayLike, score: ArrayLike) -> float:
    """The ROC threshold that maximizes Youden's J = sensitivity + specificity - 1.

    Choose it on validation data and pass it as ``threshold`` when evaluating test data; choosing
    it on the test data itself biases sensitivity and specificity upwards.

    Args:
        y_true: ``(N,)`` int or bool labels in {0, 1}, both classes present.
        score: ``(N,)`` float scores.

    Returns:
        One of the scores (``score >= threshold`` is positive); among equally good thresholds the
        highest (most specific) one.

    Raises:
        ValueError: only one class in ``y_true`` (J is undefined).
    """
    fpr, tpr, thresholds = roc_curve(y_true, score)
    if np.isnan(fpr[-1]) or np.isnan(tpr[-1]):
        raise ValueError("youden_threshold needs both positive and negative cases")
    j = tpr[1:] - fpr[1:]  # skip the (0, 0) point at threshold inf
    return float(thresholds[1 + int(np.argmax(j))])
