"""Ordinal multiclass classification (e.g. mammographic breast density A-D): :func:`multiclass_metrics`.

Accuracy, linearly and quadratically weighted Cohen's kappa, the confusion matrix, per-class
recall and one-vs-rest ROC AUC. The function is the bootstrap's metric function, so it is built
from the fast kernels of :mod:`medimg.evaluation.kernels` (each equal to scikit-learn's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from medimg.evaluation.inputs import multiclass_inputs
from medimg.evaluation.kernels import cohen_kappa, confusion_counts, roc_auc

__all__ = ["multiclass_metrics"]


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
        :func:`~medimg.evaluation.kernels.cohen_kappa`), ``macro_roc_auc_ovr`` (mean one-vs-rest
        ROC AUC; NaN if a class is absent from ``y_true``, rather than a mean over fewer classes)
        as floats; ``confusion_matrix`` (``K x K`` nested list of ints, rows = truth, columns =
        prediction, both in ``labels`` order); ``per_class_recall`` and ``per_class_roc_auc_ovr``
        (``{label: float}``, NaN for an absent class); ``support`` (``{label: int}``); ``n`` (int).

    Raises:
        ValueError: mismatched shapes, labels out of range, or non-finite probabilities.
    """
    labels = [str(label) for label in labels]
    k = len(labels)
    y, p = multiclass_inputs(y_true, prob, k)
    confusion = confusion_counts(y, np.argmax(p, axis=1), k)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(confusion) / support
    aucs = [roc_auc(y == c, p[:, c]) for c in range(k)]
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
