"""The hand-written kernels of ``medimg.evaluation.kernels`` equal scikit-learn.

They are kept only for speed inside the bootstrap (tests/benchmarks/bench_evaluation.py); here
each one, and ``binary_metrics`` / ``multiclass_metrics`` built from them, is compared with
scikit-learn on random inputs with many ties, and on the degenerate ones: one class only, one
case, constant scores, nothing (or everything) predicted positive, absent classes.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    confusion_matrix,
    roc_auc_score,
)
from sklearn_metrics import sklearn_binary_metrics, sklearn_multiclass_metrics

from medimg.evaluation import binary_metrics, multiclass_metrics
from medimg.evaluation.kernels import (
    average_precision_from_curve,
    clf_curve,
    cohen_kappa,
    confusion_counts,
    roc_auc,
    threshold_rates,
)

# Labels and scores on a coarse grid (0, 1/6, ..., 1): ties within and across classes are common.
BINARY_CASES = st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=1, max_size=60)


def assert_same(ours: float, reference: float) -> None:
    """Equal to float rounding, NaN matching NaN."""
    if math.isnan(reference):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(reference, abs=1e-12)


def split(pairs: list[tuple[bool, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([p[0] for p in pairs], dtype=bool), np.array([p[1] for p in pairs], dtype=np.float64) / 6.0


@settings(max_examples=300, deadline=None)
@given(BINARY_CASES, st.integers(0, 7))
def test_binary_kernels_match_sklearn(pairs: list[tuple[bool, int]], threshold_step: int) -> None:
    y, s = split(pairs)
    threshold = threshold_step / 6.0  # on the grid (ties with the threshold) and above every score (7/6)
    fps, tps, thresholds = clf_curve(y, s)
    np.testing.assert_array_equal(thresholds, np.unique(s)[::-1])
    np.testing.assert_array_equal(tps, [np.sum(y & (s >= t)) for t in thresholds])
    np.testing.assert_array_equal(fps, [np.sum(~y & (s >= t)) for t in thresholds])
    reference = sklearn_binary_metrics(y, s, threshold=threshold)
    assert_same(roc_auc(y, s), reference["roc_auc"])
    assert_same(average_precision_from_curve(fps, tps), reference["pr_auc"])
    for key, value in threshold_rates(y, s, threshold).items():
        assert_same(value, reference[key])
    metrics = binary_metrics(y, s, threshold=threshold)
    for key, value in reference.items():
        assert_same(metrics[key], value)


def test_one_class_differs_from_sklearn_on_purpose() -> None:
    """With one class the kernels give NaN: sklearn warns (ROC AUC) or returns 1.0 / 0.0 (AP)."""
    s = np.array([0.2, 0.5, 0.5, 0.9])
    for y in (np.ones(4, dtype=bool), np.zeros(4, dtype=bool)):
        fps, tps, _ = clf_curve(y, s)
        assert math.isnan(roc_auc(y, s)) and math.isnan(average_precision_from_curve(fps, tps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert average_precision_score(np.ones(4), s) == 1.0
        assert average_precision_score(np.zeros(4), s) == 0.0


def test_single_case_and_constant_scores() -> None:
    for y in ([True], [False]):
        metrics = binary_metrics(y, [0.7])
        assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"])
        reference = sklearn_binary_metrics(np.array(y), np.array([0.7]))
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            assert_same(metrics[key], reference[key])
    y = np.array([0, 1, 0, 1, 1], dtype=bool)
    s = np.full(5, 0.3)
    assert roc_auc(y, s) == roc_auc_score(y, s) == 0.5
    fps, tps, _ = clf_curve(y, s)
    assert average_precision_from_curve(fps, tps) == pytest.approx(average_precision_score(y, s))


def test_roc_auc_matches_sklearn_on_continuous_scores() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 10, 1000):
        y = rng.random(n) < 0.4
        y[:2] = [True, False]
        s = rng.normal(size=n) + y
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        fps, tps, _ = clf_curve(y, s)
        assert average_precision_from_curve(fps, tps) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 5), st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=50))
def test_confusion_and_kappa_match_sklearn(k: int, pairs: list[tuple[int, int]]) -> None:
    y = np.array([a % k for a, _ in pairs], dtype=np.int64)
    predicted = np.array([b % k for _, b in pairs], dtype=np.int64)
    confusion = confusion_counts(y, predicted, k)
    np.testing.assert_array_equal(confusion, confusion_matrix(y, predicted, labels=range(k)))
    assert np.trace(confusion) / y.size == pytest.approx(accuracy_score(y, predicted))
    for weights in (None, "linear", "quadratic"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one label in common: sklearn warns and gives NaN
            reference = cohen_kappa_score(y, predicted, labels=list(range(k)), weights=weights)
        assert_same(cohen_kappa(confusion, weights=weights), float(reference))


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 5), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_multiclass_metrics_match_sklearn(k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    if seed % 3 == 0:
        y[y == k - 1] = 0  # an absent class
    prob = np.round(rng.dirichlet(np.ones(k), size=n), 1)  # coarse: ties in the argmax and the AUCs
    labels = [f"class{c}" for c in range(k)]
    ours = multiclass_metrics(y, prob, labels=labels)
    reference = sklearn_multiclass_metrics(y, prob, labels=labels)
    assert ours["confusion_matrix"] == reference["confusion_matrix"]
    assert ours["support"] == reference["support"] and ours["n"] == reference["n"]
    for key in ("accuracy", "kappa_linear", "kappa_quadratic", "macro_roc_auc_ovr"):
        assert_same(ours[key], reference[key])
    for key in ("per_class_recall", "per_class_roc_auc_ovr"):
        for label in labels:
            assert_same(ours[key][label], reference[key][label])
