"""Classification metrics with stratified bootstrap confidence intervals, their plots and report sections.

Two tasks are covered:

* **binary** (e.g. chest X-ray pneumonia): ROC AUC, average precision, and sensitivity,
  specificity, PPV and NPV at an operating threshold (:func:`binary_metrics`);
* **ordinal multiclass** (e.g. mammographic breast density A-D): accuracy, linearly and
  quadratically weighted Cohen's kappa, confusion matrix, per-class recall and one-vs-rest ROC AUC
  (:func:`multiclass_metrics`).

:func:`bootstrap_ci` turns any metric function into percentile confidence intervals by resampling
cases with replacement (stratified by class by default); :func:`evaluate_binary` and
:func:`evaluate_multiclass` return the metrics with their 95% intervals as a JSON-able dict, and
:func:`add_binary_section` / :func:`add_multiclass_section` put them, with ROC, precision-recall,
calibration and confusion-matrix figures, into a :class:`medimg.report.Report`.

The definitions follow scikit-learn's (``roc_auc_score``, ``average_precision_score``,
``roc_curve``, ``precision_recall_curve``, ``cohen_kappa_score``, ``calibration_curve``), which
is not a dependency. ROC AUC is the Mann-Whitney statistic with ties counting one half (average
ranks), computed exactly, in integers, from one sort that also gives the average precision.
MONAI's ``monai.metrics.compute_roc_auc`` computes the same number with a Python loop over the
cases (and takes tensors), too slow to call thousands of times in a bootstrap, so it serves as a
reference in the tests instead.

Degenerate inputs (one class only, no predicted positives, ...) give NaN for the metrics that are
undefined, never an exception, so that bootstrap resamples and small test sets are summarised
rather than aborted.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from medimg.report import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from medimg.report import Report

__all__ = [
    "add_binary_section",
    "add_multiclass_section",
    "binary_metrics",
    "bootstrap_ci",
    "calibration_curve",
    "cohen_kappa",
    "evaluate_binary",
    "evaluate_multiclass",
    "multiclass_metrics",
    "plot_calibration",
    "plot_confusion",
    "plot_pr",
    "plot_roc",
    "plot_roc_ovr",
    "pr_curve",
    "roc_curve",
    "youden_threshold",
]

# Keys of binary_metrics that describe the evaluation rather than estimate something: no CI.
_BINARY_FIXED = ("threshold", "n", "n_positive")
_BINARY_NAMES = {
    "roc_auc": "ROC AUC",
    "pr_auc": "Average precision (PR AUC)",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
}
_MULTICLASS_NAMES = {
    "accuracy": "Accuracy",
    "kappa_linear": "Cohen's kappa (linear weights)",
    "kappa_quadratic": "Cohen's kappa (quadratic weights)",
    "macro_roc_auc_ovr": "Macro one-vs-rest ROC AUC",
}


# --------------------------------------------------------------------------------------------
# Input checks and small helpers


def _binary_inputs(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(y, score)`` as ``(N,) bool`` and ``(N,) float64`` after checking shapes and values."""
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"y_true and score must be 1-D of the same length, got {y.shape} and {s.shape}")
    if y.size == 0:
        raise ValueError("no cases")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold 0 and 1 only, got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError("score holds NaN or infinite values")
    return y.astype(bool), s


def _multiclass_inputs(y_true: ArrayLike, prob: ArrayLike, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, prob)`` as ``(N,) int64`` in ``[0, K)`` and ``(N, K) float64`` after checking them."""
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true must be (N,) and prob (N, K), got {y.shape} and {p.shape}")
    if p.shape[1] != n_classes:
        raise ValueError(f"prob has {p.shape[1]} columns but {n_classes} labels were given")
    if y.size == 0:
        raise ValueError("no cases")
    if not np.issubdtype(y.dtype, np.integer) and not np.array_equal(y, np.round(y)):
        raise ValueError("y_true must hold integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    if not np.isfinite(p).all():
        raise ValueError("prob holds NaN or infinite values")
    return y, p


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python floats, ints and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


# --------------------------------------------------------------------------------------------
# Binary metrics and curves


def _clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positives at each distinct score, thresholds decreasing (sklearn's ``_binary_clf_curve``).

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


def _auc_from_curve(fps: np.ndarray, tps: np.ndarray) -> float:
    """Trapezoidal area under the ROC points of :func:`_clf_curve`, exactly the Mann-Whitney U / (P N).

    A tie between a positive and a negative moves the curve diagonally, so it counts one half, as
    average ranks do. Computed in integers (twice the area) and divided once.
    """
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        return math.nan
    twice_area = int(np.sum(np.diff(fps, prepend=0) * (tps + np.r_[0, tps[:-1]])))
    return twice_area / (2.0 * n_pos * n_neg)


def _roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of a bool ``y`` and float ``s`` (ties count one half); NaN for one class."""
    return _auc_from_curve(*_clf_curve(y, s)[:2])


def _average_precision_from_curve(fps: np.ndarray, tps: np.ndarray) -> float:
    """Step-wise average precision ``sum_n (R_n - R_{n-1}) P_n`` from :func:`_clf_curve`; NaN for one class."""
    n_pos = int(tps[-1])
    if n_pos == 0 or fps[-1] == 0:
        return math.nan
    precision = tps / (tps + fps)
    return float(np.sum(np.diff(tps, prepend=0) * precision) / n_pos)


def _threshold_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = s >= threshold
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    tp = int(np.count_nonzero(predicted & y))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = n_pos - tp
    tn = n_neg - fp
    return {
        "sensitivity": _ratio(tp, n_pos),
        "specificity": _ratio(tn, n_neg),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


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
    y, s = _binary_inputs(y_true, score)
    fps, tps, _ = _clf_curve(y, s)
    return {
        "roc_auc": _auc_from_curve(fps, tps),
        "pr_auc": _average_precision_from_curve(fps, tps),
        **_threshold_metrics(y, s, float(threshold)),
        "threshold": float(threshold),
        "n": int(y.size),
        "n_positive": int(np.count_nonzero(y)),
    }


def roc_curve(
    y_true: ArrayLike, score: ArrayLike, *, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic curve, as sklearn's ``roc_curve``.

    Args:
        y_true: ``(N,)`` int or bool labels in {0, 1}.
        score: ``(N,)`` float scores.
        drop_intermediate: drop thresholds whose point lies on a straight line between its
            neighbours (they do not change the curve), as sklearn does by default.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(T + 1,)`` float64: the point for ``score >=
        thresholds[i]``; ``thresholds`` are the distinct scores in decreasing order after a first
        ``inf`` (nothing positive, the point (0, 0)). ``fpr`` (``tpr``) is all NaN without negative
        (positive) cases.
    """
    y, s = _binary_inputs(y_true, score)
    fps, tps, thresholds = _clf_curve(y, s)
    if drop_intermediate and fps.size > 2:
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[corner], tps[corner], thresholds[corner]
    fps = np.r_[0, fps]
    tps = np.r_[0, tps]
    thresholds = np.r_[np.inf, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):
        return fps / fps[-1], tps / tps[-1], thresholds


def pr_curve(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve, as sklearn's ``precision_recall_curve``.

    Args:
        y_true: ``(N,)`` int or bool labels in {0, 1}.
        score: ``(N,)`` float scores.

    Returns:
        ``(precision, recall, thresholds)``: ``precision`` and ``recall`` ``(T + 1,)`` float64 and
        ``thresholds`` ``(T,)`` float64, the distinct scores in increasing order; entry ``i`` is the
        point for ``score >= thresholds[i]``, and the last entry is the point (recall 0,
        precision 1) that closes the curve. ``recall`` is NaN without positive cases.
        ``sum(diff(recall) * precision[:-1])`` is minus the average precision.
    """
    y, s = _binary_inputs(y_true, score)
    fps, tps, thresholds = _clf_curve(y, s)
    precision = tps / (tps + fps)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def calibration_curve(
    y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability diagram data with uniform probability bins.

    Bins are ``[k / n_bins, (k + 1) / n_bins)``, the last one closed at 1.

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
    y, p = _binary_inputs(y_true, prob)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"prob must lie in [0, 1], got [{p.min()}, {p.max()}]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    sum_prob = np.bincount(bins, weights=p, minlength=n_bins)
    sum_pos = np.bincount(bins, weights=y.astype(np.float64), minlength=n_bins)
    keep = counts > 0
    return sum_prob[keep] / counts[keep], sum_pos[keep] / counts[keep], counts[keep].astype(np.int64)


def youden_threshold(y_true: ArrayLike, score: ArrayLike) -> float:
    """The ROC threshold that maximises Youden's J = sensitivity + specificity - 1.

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


# --------------------------------------------------------------------------------------------
# Multiclass metrics


def _confusion(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
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


def multiclass_metrics(y_true: ArrayLike, prob: ArrayLike, *, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics of a K-class (ordinal) classifier; the prediction is the argmax of ``prob``.

    Args:
        y_true: ``(N,)`` int class indices in ``[0, K)``, in the order of ``labels``.
        prob: ``(N, K)`` float class probabilities (or any scores; only their order matters).
            Ties in the argmax go to the lower class index.
        labels: the K class names, e.g. ``["A", "B", "C", "D"]``; their order is the ordinal
            order the kappa weights use.

    Returns:
        ``accuracy``, ``kappa_linear``, ``kappa_quadratic`` (weighted Cohen's kappa, see
        :func:`cohen_kappa`), ``macro_roc_auc_ovr`` (mean one-vs-rest ROC AUC; NaN if a class is
        absent from ``y_true``, rather than a mean over fewer classes) as floats;
        ``confusion_matrix`` (``K x K`` nested list of ints, rows = truth, columns = prediction,
        both in ``labels`` order); ``per_class_recall`` and ``per_class_roc_auc_ovr`` (``{label:
        float}``, NaN for an absent class); ``support`` (``{label: int}``); ``n`` (int).

    Raises:
        ValueError: mismatched shapes, labels out of range, or non-finite probabilities.
    """
    labels = [str(label) for label in labels]
    k = len(labels)
    y, p = _multiclass_inputs(y_true, prob, k)
    confusion = _confusion(y, np.argmax(p, axis=1), k)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(confusion) / support
    aucs = [_roc_auc(y == c, p[:, c]) for c in range(k)]
    return {
        "accuracy": float(np.trace(confusion) / y.size),
        "kappa_linear": cohen_kappa(confusion, weights="linear"),
        "kappa_quadratic": cohen_kappa(confusion, weights="quadratic"),
        "macro_roc_auc_ovr": float(np.mean(aucs)),
        "confusion_matrix": confusion.tolist(),
        "per_class_recall": {label: float(r) for label, r in zip(labels, recall, strict=True)},
        "per_class_roc_auc_ovr": dict(zip(labels, aucs, strict=True)),
        "support": {label: int(count) for label, count in zip(labels, support, strict=True)},
        "n": int(y.size),
    }


# --------------------------------------------------------------------------------------------
# Bootstrap


def _scalars(value: float | Mapping[str, Any]) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {str(key): float(v) for key, v in value.items() if _is_scalar(v)}
    if _is_scalar(value):
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


def evaluate_binary(
    y_true: ArrayLike,
    score: ArrayLike,
    *,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`binary_metrics` with stratified-bootstrap 95% intervals, as a JSON-able dict.

    The caller chooses the operating point: ``threshold`` defaults to 0.5, which suits calibrated
    probabilities; for a model with shifted scores pass e.g. :func:`youden_threshold` of
    validation data (never of the data evaluated here, which would bias the interval).

    Args:
        y_true: ``(N,)`` int or bool labels in {0, 1}.
        score: ``(N,)`` float predicted probabilities.
        threshold: operating point, ``score >= threshold`` is positive; ``None`` means 0.5.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        The :func:`binary_metrics` entries, ``n_boot``, and ``ci95``: ``{metric: [lo, hi]}`` for
        each estimated metric (not ``threshold``, ``n``, ``n_positive``). Plain Python floats,
        ints, lists and dicts; undefined values are NaN (``json.dumps`` writes them as ``NaN``).
    """
    metric_fn = functools.partial(binary_metrics, threshold=0.5 if threshold is None else float(threshold))
    y, s = _binary_inputs(y_true, score)
    result: dict[str, Any] = metric_fn(y, s)
    intervals = bootstrap_ci(metric_fn, y, s, n_boot=n_boot, seed=seed, alpha=0.05, stratified=True)
    result["n_boot"] = int(n_boot)
    result["ci95"] = {key: list(interval) for key, interval in intervals.items() if key not in _BINARY_FIXED}
    return _plain(result)


def evaluate_multiclass(
    y_true: ArrayLike,
    prob: ArrayLike,
    *,
    labels: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`multiclass_metrics` with stratified-bootstrap 95% intervals, as a JSON-able dict.

    Args:
        y_true: ``(N,)`` int class indices in ``[0, K)``.
        prob: ``(N, K)`` float class probabilities.
        labels: the K class names in ordinal order.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        The :func:`multiclass_metrics` entries, ``labels``, ``n_boot``, and ``ci95``: ``{metric:
        [lo, hi]}`` for ``accuracy``, ``kappa_linear``, ``kappa_quadratic`` and
        ``macro_roc_auc_ovr``. Plain Python types; undefined values are NaN.
    """
    labels = [str(label) for label in labels]
    metric_fn = functools.partial(multiclass_metrics, labels=labels)
    y, p = _multiclass_inputs(y_true, prob, len(labels))
    result: dict[str, Any] = metric_fn(y, p)
    intervals = bootstrap_ci(metric_fn, y, p, n_boot=n_boot, seed=seed, alpha=0.05, stratified=True)
    result["labels"] = labels
    result["n_boot"] = int(n_boot)
    result["ci95"] = {key: list(interval) for key, interval in intervals.items() if key != "n"}
    return _plain(result)


# --------------------------------------------------------------------------------------------
# Plots


def plot_roc(y_true: ArrayLike, score: ArrayLike, *, threshold: float | None = None) -> Figure:
    """ROC curve with its AUC in the legend and, given ``threshold``, the operating point marked.

    Args:
        y_true: ``(N,)`` labels in {0, 1}.
        score: ``(N,)`` float scores.
        threshold: operating point to mark (``score >= threshold`` is positive), or ``None``.

    Returns:
        A matplotlib figure with one axes.
    """
    y, s = _binary_inputs(y_true, score)
    fpr, tpr, _ = roc_curve(y, s)
    fig, axes = new_figure(4.8, 4.4)
    ax = axes[0, 0]
    ax.plot(fpr, tpr, lw=2, color="C0", label=f"ROC (AUC = {_roc_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance (AUC = 0.5)")
    if threshold is not None:
        point = _threshold_metrics(y, s, float(threshold))
        ax.plot(
            [1.0 - point["specificity"]],
            [point["sensitivity"]],
            "o",
            color="C3",
            label=f"threshold {threshold:.3g}: sens {point['sensitivity']:.2f}, spec {point['specificity']:.2f}",
        )
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false-positive rate)",
        ylabel="Sensitivity (true-positive rate)",
        title=f"ROC curve (n = {y.size}, {int(np.count_nonzero(y))} positive)",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_pr(y_true: ArrayLike, score: ArrayLike) -> Figure:
    """Precision-recall curve (steps, as average precision integrates it) with the AP in the legend.

    Args:
        y_true: ``(N,)`` labels in {0, 1}.
        score: ``(N,)`` float scores.

    Returns:
        A matplotlib figure with one axes; the prevalence line is the curve of a random score.
    """
    y, s = _binary_inputs(y_true, score)
    precision, recall, _ = pr_curve(y, s)
    prevalence = float(np.mean(y))
    average_precision = _average_precision_from_curve(*_clf_curve(y, s)[:2])
    fig, axes = new_figure(4.8, 4.4)
    ax = axes[0, 0]
    ax.plot(
        recall,
        precision,
        lw=2,
        color="C0",
        drawstyle="steps-post",
        label=f"AP = {average_precision:.3f}",
    )
    ax.axhline(prevalence, ls="--", lw=1, color="grey", label=f"prevalence = {prevalence:.3f}")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="Recall (sensitivity)",
        ylabel="Precision (PPV)",
        title="Precision-recall curve",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_calibration(y_true: ArrayLike, prob: ArrayLike, *, n_bins: int = 10) -> Figure:
    """Reliability diagram (with the Brier score and ROC AUC in the legend) and probability histogram.

    Args:
        y_true: ``(N,)`` labels in {0, 1}.
        prob: ``(N,)`` float predicted probabilities in [0, 1].
        n_bins: uniform bins of :func:`calibration_curve`.

    Returns:
        A matplotlib figure with two axes: observed fraction of positives against mean predicted
        probability per bin, and the histogram of predicted probabilities by true class.
    """
    y, p = _binary_inputs(y_true, prob)
    mean_predicted, fraction_positive, _ = calibration_curve(y, p, n_bins=n_bins)
    brier = float(np.mean((p - y) ** 2))
    fig, axes = new_figure(9.6, 4.2, ncols=2)
    ax, hist = axes[0, 0], axes[0, 1]
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="perfectly calibrated")
    ax.plot(
        mean_predicted,
        fraction_positive,
        "o-",
        color="C0",
        label=f"model (Brier = {brier:.3f}, AUC = {_roc_auc(y, p):.3f})",
    )
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="Mean predicted probability",
        ylabel="Fraction of positives",
        title=f"Calibration ({n_bins} uniform bins)",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    hist.hist([p[~y], p[y]], bins=edges, color=["C0", "C3"], label=["negative", "positive"], stacked=True)
    hist.set(xlim=(0, 1), xlabel="Predicted probability", ylabel="Cases", title="Predicted probabilities")
    hist.legend(fontsize=8)
    return fig


def plot_confusion(matrix: ArrayLike, labels: Sequence[str]) -> Figure:
    """Confusion matrix shaded by row fraction (recall), each cell annotated with count and row %.

    Args:
        matrix: ``(K, K)`` int counts, rows = truth, columns = prediction.
        labels: the K class names.

    Returns:
        A matplotlib figure with one axes.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"matrix must be ({k}, {k}) for {k} labels, got {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(rows > 0, counts / np.maximum(rows, 1), 0.0)
    side = 1.2 + 0.9 * k
    fig, axes = new_figure(side + 0.4, side)
    ax = axes[0, 0]
    ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{100.0 * fraction[i, j]:.0f}%",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if fraction[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), [str(label) for label in labels])
    ax.set_yticks(range(k), [str(label) for label in labels])
    accuracy = _ratio(np.trace(counts), counts.sum())
    ax.set(xlabel="Predicted", ylabel="True", title=f"Confusion matrix (accuracy {accuracy:.3f})")
    return fig


def plot_roc_ovr(y_true: ArrayLike, prob: ArrayLike, labels: Sequence[str]) -> Figure:
    """One-vs-rest ROC curves of a K-class classifier, each class's AUC in the legend.

    Args:
        y_true: ``(N,)`` int class indices in ``[0, K)``.
        prob: ``(N, K)`` float class probabilities.
        labels: the K class names.

    Returns:
        A matplotlib figure with one axes; a class absent from ``y_true`` is listed as absent.
    """
    y, p = _multiclass_inputs(y_true, prob, len(labels))
    fig, axes = new_figure(4.8, 4.4)
    ax = axes[0, 0]
    aucs = []
    for c, label in enumerate(labels):
        positive = y == c
        auc = _roc_auc(positive, p[:, c])
        aucs.append(auc)
        if math.isnan(auc):
            ax.plot([], [], color=f"C{c}", label=f"{label} (absent)")
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, c])
        ax.plot(fpr, tpr, lw=1.8, color=f"C{c}", label=f"{label} vs rest (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false-positive rate)",
        ylabel="Sensitivity (true-positive rate)",
        title=f"One-vs-rest ROC (macro AUC = {float(np.mean(aucs)):.3f})",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# Report sections


def _ci_text(metrics: Mapping[str, Any], key: str) -> str:
    interval = metrics.get("ci95", {}).get(key)
    if interval is None:
        return ""
    lo, hi = interval
    return f"[{lo:.3f}, {hi:.3f}]"


def _metric_rows(metrics: Mapping[str, Any], names: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        {"metric": name, "value": float(metrics[key]), "95% CI": _ci_text(metrics, key)}
        for key, name in names.items()
        if key in metrics
    ]


def _bootstrap_note(metrics: Mapping[str, Any]) -> str:
    if "ci95" not in metrics:
        return ""
    n_boot = metrics.get("n_boot")
    resamples = f"{n_boot} resamples" if n_boot is not None else "resamples"
    return f" 95% CIs: percentile bootstrap, {resamples} stratified by class."


def add_binary_section(
    report: Report,
    y_true: ArrayLike,
    score: ArrayLike,
    metrics: Mapping[str, Any],
    *,
    heading: str | None = None,
) -> None:
    """Add a binary classifier's metrics table and ROC, precision-recall and calibration figures.

    Blocks added, in order: the heading (if given), a text line (cases, prevalence, operating
    threshold, bootstrap), the table (metric, value, 95% CI), then three figures.

    Args:
        report: the report to extend.
        y_true: ``(N,)`` labels in {0, 1}.
        score: ``(N,)`` predicted probabilities.
        metrics: output of :func:`evaluate_binary` (or :func:`binary_metrics`, without CIs).
        heading: optional section heading.
    """
    y, s = _binary_inputs(y_true, score)
    threshold = float(metrics.get("threshold", 0.5))
    if heading:
        report.heading(heading)
    report.text(
        f"{y.size} cases, {int(np.count_nonzero(y))} positive ({np.mean(y):.1%}). "
        f"Operating threshold {threshold:.3g} (score >= threshold is positive)." + _bootstrap_note(metrics)
    )
    report.table(_metric_rows(metrics, _BINARY_NAMES), ["metric", "value", "95% CI"], caption="Binary metrics")
    report.figure(plot_roc(y, s, threshold=threshold), "ROC curve; the dot is the operating threshold.")
    report.figure(plot_pr(y, s), "Precision-recall curve; the dashed line is the prevalence.")
    report.figure(plot_calibration(y, s), "Calibration: reliability diagram and predicted-probability histogram.")


def add_multiclass_section(
    report: Report,
    y_true: ArrayLike,
    prob: ArrayLike,
    metrics: Mapping[str, Any],
    labels: Sequence[str],
    *,
    heading: str | None = None,
) -> None:
    """Add a multiclass classifier's metrics and per-class tables, confusion matrix and ROC figures.

    Blocks added, in order: the heading (if given), a text line, the metrics table (metric, value,
    95% CI), the per-class table (class, cases, recall, one-vs-rest AUC), then the confusion-matrix
    and one-vs-rest ROC figures.

    Args:
        report: the report to extend.
        y_true: ``(N,)`` int class indices in ``[0, K)``.
        prob: ``(N, K)`` class probabilities.
        metrics: output of :func:`evaluate_multiclass` (or :func:`multiclass_metrics`).
        labels: the K class names.
        heading: optional section heading.
    """
    labels = [str(label) for label in labels]
    y, p = _multiclass_inputs(y_true, prob, len(labels))
    if heading:
        report.heading(heading)
    report.text(
        f"{y.size} cases in {len(labels)} classes ({', '.join(labels)}); prediction = most probable class."
        + _bootstrap_note(metrics)
    )
    report.table(_metric_rows(metrics, _MULTICLASS_NAMES), ["metric", "value", "95% CI"], caption="Metrics")
    per_class = [
        {
            "class": label,
            "cases": int(metrics["support"][label]),
            "recall": float(metrics["per_class_recall"][label]),
            "one-vs-rest ROC AUC": float(metrics["per_class_roc_auc_ovr"][label]),
        }
        for label in labels
    ]
    report.table(per_class, ["class", "cases", "recall", "one-vs-rest ROC AUC"], caption="Per class")
    report.figure(plot_confusion(metrics["confusion_matrix"], labels), "Confusion matrix (rows: truth).")
    report.figure(plot_roc_ovr(y, p, labels), "One-vs-rest ROC curves.")
