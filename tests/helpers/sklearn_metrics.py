"""scikit-learn versions of ``binary_metrics`` and ``multiclass_metrics``: the reference for the kernels.

:mod:`medimg.evaluation.kernels` keeps hand-written metrics only because the bootstrap calls them
thousands of times; tests/medimg/test_evaluation_kernels.py checks that they equal these, and
tests/benchmarks/bench_evaluation.py times both. Undefined values are NaN, as in medimg: one class
only gives a NaN AUC and average precision (scikit-learn's own ``roc_auc_score`` warns or raises,
and ``average_precision_score`` gives 1.0 or 0.0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)


def both_classes(y: np.ndarray) -> bool:
    return bool(np.any(y) and not np.all(y))


def sklearn_binary_metrics(y_true: np.ndarray, score: np.ndarray, *, threshold: float = 0.5) -> dict[str, float]:
    """``roc_auc``, ``pr_auc``, ``sensitivity``, ``specificity``, ``ppv``, ``npv`` from scikit-learn."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    predicted = s >= threshold
    defined = both_classes(y)
    return {
        "roc_auc": float(roc_auc_score(y, s)) if defined else math.nan,
        "pr_auc": float(average_precision_score(y, s)) if defined else math.nan,
        "sensitivity": float(recall_score(y, predicted, zero_division=np.nan)),
        "specificity": float(recall_score(~y, ~predicted, zero_division=np.nan)),
        "ppv": float(precision_score(y, predicted, zero_division=np.nan)),
        "npv": float(precision_score(~y, ~predicted, zero_division=np.nan)),
    }


def sklearn_multiclass_metrics(y_true: np.ndarray, prob: np.ndarray, *, labels: Sequence[str]) -> dict[str, Any]:
    """The entries of ``multiclass_metrics`` from scikit-learn (prediction = argmax, ties to the lower index)."""
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(prob, dtype=np.float64)
    classes = list(range(len(labels)))
    predicted = np.argmax(p, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa (one label in common) is NaN
        kappas = {w: float(cohen_kappa_score(y, predicted, labels=classes, weights=w)) for w in ("linear", "quadratic")}
    aucs = [float(roc_auc_score(y == c, p[:, c])) if both_classes(y == c) else math.nan for c in classes]
    recall = recall_score(y, predicted, labels=classes, average=None, zero_division=np.nan)
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "kappa_linear": kappas["linear"],
        "kappa_quadratic": kappas["quadratic"],
        "macro_roc_auc_ovr": float(np.mean(aucs)),
        "confusion_matrix": confusion_matrix(y, predicted, labels=classes).tolist(),
        "per_class_recall": {str(label): float(r) for label, r in zip(labels, recall, strict=True)},
        "per_class_roc_auc_ovr": {str(label): auc for label, auc in zip(labels, aucs, strict=True)},
        "support": {str(label): int(np.sum(y == c)) for c, label in enumerate(labels)},
        "n": int(y.size),
    }
