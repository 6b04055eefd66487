"""One-call evaluations: point metrics with stratified-bootstrap 95% intervals, as JSON-able dicts.

:func:`evaluate_binary` and :func:`evaluate_multiclass` give what the pipelines record and what the
report sections of :mod:`medimg.evaluation.sections` display.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from numpy.typing import ArrayLike

from medimg.evaluation.binary import binary_metrics
from medimg.evaluation.bootstrap import bootstrap_ci
from medimg.evaluation.inputs import binary_inputs, multiclass_inputs, to_plain
from medimg.evaluation.multiclass import multiclass_metrics

__all__ = ["BINARY_FIXED", "evaluate_binary", "evaluate_multiclass"]

#: Keys of binary_metrics that describe the evaluation rather than estimate something: no CI.
BINARY_FIXED = ("threshold", "n", "n_positive")


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
    y, s = binary_inputs(y_true, score)
    result: dict[str, Any] = metric_fn(y, s)
    intervals = bootstrap_ci(metric_fn, y, s, n_boot=n_boot, seed=seed, alpha=0.05, stratified=True)
    result["n_boot"] = int(n_boot)
    result["ci95"] = {key: list(interval) for key, interval in intervals.items() if key not in BINARY_FIXED}
    return to_plain(result)


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
    y, p = multiclass_inputs(y_true, prob, len(labels))
    result: dict[str, Any] = metric_fn(y, p)
    intervals = bootstrap_ci(metric_fn, y, p, n_boot=n_boot, seed=seed, alpha=0.05, stratified=True)
    result["labels"] = labels
    result["n_boot"] = int(n_boot)
    result["ci95"] = {key: list(interval) for key, interval in intervals.items() if key != "n"}
    return to_plain(result)
