"""Tests for classification metrics, bootstrap intervals, plots and report sections (``medimg.evaluation``).

The kernels behind the bootstrap are checked against scikit-learn in test_evaluation_kernels.py;
their speed is measured by tests/benchmarks/bench_evaluation.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import matplotlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from medimg.evaluation import (
    add_binary_section,
    add_multiclass_section,
    binary_metrics,
    bootstrap_ci,
    calibration_curve,
    cohen_kappa,
    evaluate_binary,
    evaluate_multiclass,
    multiclass_metrics,
    plot_calibration,
    plot_confusion,
    plot_pr,
    plot_roc,
    plot_roc_ovr,
    pr_curve,
    roc_curve,
    youden_threshold,
)
from medimg.report import Report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DENSITY = ["A", "B", "C", "D"]

# scikit-learn's documentation example for roc_auc_score / roc_curve / precision_recall_curve.
SK_Y = np.array([0, 0, 1, 1])
SK_SCORE = np.array([0.1, 0.4, 0.35, 0.8])

# A small example with ties across classes (worked out by hand in the tests below).
TIE_Y = np.array([1, 0, 1, 0, 1, 0])
TIE_SCORE = np.array([0.9, 0.9, 0.5, 0.5, 0.5, 0.1])


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    """O(N^2): P(score_pos > score_neg) + 0.5 P(tie) over all positive-negative pairs."""
    pos, neg = s[y == 1], s[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def brute_average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Loop over distinct thresholds, highest first: sum of (R_n - R_{n-1}) P_n."""
    total, previous_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        predicted = s >= t
        tp = np.sum(predicted & (y == 1))
        precision = tp / predicted.sum()
        recall = tp / np.sum(y == 1)
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


def binary_data(n: int, seed: int, prevalence: float = 0.3, separation: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.int64)
    score = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + separation * y - 1.0)))
    return y, score


def multiclass_data(n: int, seed: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    prob = np.exp(logits)
    return y, prob / prob.sum(axis=1, keepdims=True)


def one_hot(predicted: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[predicted]


def from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) pairs that produce ``confusion`` (rows truth)."""
    k = confusion.shape[0]
    pairs = [(i, j) for i in range(k) for j in range(k) for _ in range(int(confusion[i, j]))]
    y_true, y_pred = (np.array(v) for v in zip(*pairs, strict=True))
    return y_true, y_pred


# --------------------------------------------------------------------------------------------
# Binary metrics


def test_sklearn_documentation_example() -> None:
    metrics = binary_metrics(SK_Y, SK_SCORE)
    assert metrics["roc_auc"] == pytest.approx(0.75)  # roc_auc_score docs
    assert metrics["pr_auc"] == pytest.approx(0.8333333333333333)  # average_precision_score docs
    fpr, tpr, thresholds = roc_curve(SK_Y, SK_SCORE)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    precision, recall, pr_thresholds = pr_curve(SK_Y, SK_SCORE)
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(recall, [1.0, 1.0, 0.5, 0.5, 0.0])
    np.testing.assert_array_equal(pr_thresholds, [0.1, 0.35, 0.4, 0.8])


def test_hand_computed_example_with_ties() -> None:
    # Positive scores 0.9, 0.5, 0.5; negative 0.9, 0.5, 0.1. Pairs won (tie = 1/2):
    # 0.9 -> 0.5 + 1 + 1 = 2.5; each 0.5 -> 0 + 0.5 + 1 = 1.5; AUC = 5.5 / 9 = 11/18.
    # AP: threshold 0.9 -> P = 1/2, R = 1/3; 0.5 -> P = 3/5, R = 1; 0.1 adds no recall.
    # AP = 1/3 * 1/2 + 2/3 * 3/5 = 17/30.
    metrics = binary_metrics(TIE_Y, TIE_SCORE, threshold=0.5)
    assert metrics["roc_auc"] == pytest.approx(11 / 18, abs=1e-15)
    assert metrics["pr_auc"] == pytest.approx(17 / 30, abs=1e-15)
    # score >= 0.5 is positive: TP 3, FP 2, TN 1, FN 0.
    assert metrics["sensitivity"] == 1.0
    assert metrics["specificity"] == pytest.approx(1 / 3)
    assert metrics["ppv"] == pytest.approx(3 / 5)
    assert metrics["npv"] == 1.0
    assert (metrics["threshold"], metrics["n"], metrics["n_positive"]) == (0.5, 6, 3)
    # threshold 0.7: TP 1, FP 1, TN 2, FN 2.
    metrics = binary_metrics(TIE_Y, TIE_SCORE, threshold=0.7)
    assert metrics["sensitivity"] == pytest.approx(1 / 3)
    assert metrics["specificity"] == pytest.approx(2 / 3)
    assert metrics["ppv"] == pytest.approx(1 / 2)
    assert metrics["npv"] == pytest.approx(2 / 4)


def test_perfect_inverted_and_constant_scores() -> None:
    y = np.array([0, 0, 0, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    perfect = binary_metrics(y, score)
    assert perfect["roc_auc"] == 1.0
    assert perfect["pr_auc"] == 1.0
    assert (perfect["sensitivity"], perfect["specificity"], perfect["ppv"], perfect["npv"]) == (1.0, 1.0, 1.0, 1.0)
    inverted = binary_metrics(y, 1.0 - score)
    assert inverted["roc_auc"] == 0.0
    # Positives ranked 4th and 5th: recall 1/2 at precision 1/4, then 1 at 2/5 -> AP = 1/8 + 1/5.
    assert inverted["pr_auc"] == pytest.approx(13 / 40)
    constant = binary_metrics(y, np.full(5, 0.4))
    assert constant["roc_auc"] == 0.5
    assert constant["pr_auc"] == pytest.approx(2 / 5)  # one threshold, precision = prevalence


def test_degenerate_inputs_give_nan() -> None:
    metrics = binary_metrics([0, 0, 0], [0.2, 0.6, 0.9])
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"])
    # No positives; at 0.5: TP 0, FP 2, TN 1, FN 0.
    assert math.isnan(metrics["sensitivity"])
    assert (metrics["specificity"], metrics["ppv"], metrics["npv"]) == (pytest.approx(1 / 3), 0.0, 1.0)
    metrics = binary_metrics([1, 1], [0.2, 0.1])
    assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"])
    assert math.isnan(metrics["ppv"])  # nothing predicted positive at 0.5
    fpr, tpr, _ = roc_curve([1, 1], [0.2, 0.1])
    assert np.isnan(fpr).all() and not np.isnan(tpr).any()


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="0 and 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="no cases"):
        binary_metrics([], [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=40))
def test_aucs_match_brute_force_and_scipy(pairs: list[tuple[int, int]]) -> None:
    y = np.array([p[0] for p in pairs])
    score = np.array([p[1] for p in pairs], dtype=float) / 6.0  # few distinct values: many ties
    metrics = binary_metrics(y, score)
    if y.min() == y.max():
        assert math.isnan(metrics["roc_auc"]) and math.isnan(metrics["pr_auc"])
        return
    assert metrics["roc_auc"] == pytest.approx(brute_auc(y, score), abs=1e-12)
    u = mannwhitneyu(score[y == 1], score[y == 0]).statistic
    assert metrics["roc_auc"] == pytest.approx(u / (np.sum(y == 1) * np.sum(y == 0)), abs=1e-12)
    assert metrics["pr_auc"] == pytest.approx(brute_average_precision(y, score), abs=1e-12)


def test_aucs_match_references_on_random_data() -> None:
    import torch
    from monai.metrics import compute_roc_auc

    for seed in range(10):
        y, score = binary_data(300, seed)
        score = np.round(score, 2)  # ties
        metrics = binary_metrics(y, score)
        assert metrics["roc_auc"] == pytest.approx(brute_auc(y, score), abs=1e-12)
        reference = compute_roc_auc(torch.as_tensor(score), torch.as_tensor(y))
        assert metrics["roc_auc"] == pytest.approx(reference, abs=1e-12)
        assert metrics["pr_auc"] == pytest.approx(brute_average_precision(y, score), abs=1e-12)
        # AP as sklearn computes it from the precision-recall curve.
        precision, recall, _ = pr_curve(y, score)
        assert metrics["pr_auc"] == pytest.approx(-np.sum(np.diff(recall) * precision[:-1]), abs=1e-12)


def test_roc_curve_points_match_direct_counts() -> None:
    y, score = binary_data(200, 3)
    score = np.round(score, 1)
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    distinct = np.unique(score)[::-1]
    np.testing.assert_array_equal(thresholds[1:], distinct)
    expected_tpr = [(score[y == 1] >= t).mean() for t in distinct]
    expected_fpr = [(score[y == 0] >= t).mean() for t in distinct]
    np.testing.assert_allclose(tpr, [0.0, *expected_tpr])
    np.testing.assert_allclose(fpr, [0.0, *expected_fpr])
    # Without ties, runs of same-class cases give collinear points; dropping them keeps the curve.
    y, score = binary_data(200, 3)
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    assert thresholds.size == 201
    fpr_d, tpr_d, thresholds_d = roc_curve(y, score)
    assert set(thresholds_d) < set(thresholds) and thresholds_d.size < 150
    # Every dropped point lies on a kept segment: interpolate both rates in the number of cases called positive.
    n_pos, n_neg = np.sum(y == 1), np.sum(y == 0)
    called, called_d = fpr * n_neg + tpr * n_pos, fpr_d * n_neg + tpr_d * n_pos
    np.testing.assert_allclose(np.interp(called, called_d, fpr_d), fpr, atol=1e-12)
    np.testing.assert_allclose(np.interp(called, called_d, tpr_d), tpr, atol=1e-12)
    area = np.sum(np.diff(fpr_d) * (tpr_d[1:] + tpr_d[:-1]) / 2)
    assert area == pytest.approx(binary_metrics(y, score)["roc_auc"], abs=1e-12)


def test_pr_curve_points_match_direct_counts() -> None:
    y, score = binary_data(150, 4)
    score = np.round(score, 1)
    precision, recall, thresholds = pr_curve(y, score)
    np.testing.assert_array_equal(thresholds, np.unique(score))
    expected_precision = [(y[score >= t] == 1).mean() for t in thresholds]
    expected_recall = [(score[y == 1] >= t).mean() for t in thresholds]
    np.testing.assert_allclose(precision, [*expected_precision, 1.0])
    np.testing.assert_allclose(recall, [*expected_recall, 0.0])


def test_calibration_curve_by_hand() -> None:
    prob = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.5])
    y = np.array([0, 0, 1, 1, 1, 0])
    mean_predicted, fraction_positive, counts = calibration_curve(y, prob, n_bins=10)
    # bins [0, .1): 0.05; [.1, .2): 0.15, 0.12; [.5, .6): 0.5; [.9, 1]: 0.95, 1.0
    np.testing.assert_allclose(mean_predicted, [0.05, 0.135, 0.5, 0.975])
    np.testing.assert_allclose(fraction_positive, [0.0, 0.5, 0.0, 1.0])
    np.testing.assert_array_equal(counts, [1, 2, 1, 2])
    assert counts.dtype == np.int64
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_curve(y, prob + 0.1)


def test_calibration_curve_counts_follow_sklearn_bins() -> None:
    from sklearn.calibration import calibration_curve as sklearn_calibration_curve

    # Values on every edge of 10 bins (0.3, 0.6, 0.7 are float edges' neighbours), plus random ones.
    rng = np.random.default_rng(0)
    prob = np.r_[np.linspace(0.0, 1.0, 11), np.round(rng.random(200), 2)]
    y = (rng.random(prob.size) < prob).astype(int)
    for n_bins in (1, 3, 10):
        mean_predicted, fraction_positive, counts = calibration_curve(y, prob, n_bins=n_bins)
        expected_fraction, expected_mean = sklearn_calibration_curve(y, prob, n_bins=n_bins)
        np.testing.assert_array_equal(mean_predicted, expected_mean)
        np.testing.assert_array_equal(fraction_positive, expected_fraction)
        assert counts.sum() == prob.size and counts.size == mean_predicted.size
        # Each bin's count reproduces its mean from the sorted probabilities.
        bounds = np.r_[0, np.cumsum(counts)]
        means = [np.sort(prob)[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        np.testing.assert_allclose(means, mean_predicted, rtol=1e-12)
    # Right-closed bins: a probability on an inner edge belongs to the bin below it.
    _, _, counts = calibration_curve([0, 1, 0, 1], [0.3, 0.3, 0.5, 0.7], n_bins=10)
    np.testing.assert_array_equal(counts, [2, 1, 1])


def test_curves_of_one_class_are_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fpr, tpr, _ = roc_curve([0, 0, 0], [0.1, 0.5, 0.9])
        assert np.isnan(tpr).all() and not np.isnan(fpr).any()
        precision, recall, _ = pr_curve([0, 0, 0], [0.1, 0.5, 0.9])
        assert np.isnan(recall[:-1]).all() and recall[-1] == 0.0 and not np.isnan(precision).any()
        precision, recall, _ = pr_curve([1, 1], [0.1, 0.5])
        np.testing.assert_array_equal(precision, [1.0, 1.0, 1.0])
        np.testing.assert_array_equal(recall, [1.0, 0.5, 0.0])
        for fig in (plot_roc([1, 1], [0.2, 0.7], threshold=0.5), plot_pr([0, 0], [0.2, 0.7])):
            assert "nan" in legend_texts(fig.axes[0])[0]
            plt.close(fig)
        fig = plot_calibration([1, 1, 1], [0.2, 0.7, 0.9])
        assert "AUC = nan" in legend_texts(fig.axes[0])[1]
        plt.close(fig)


def test_import_does_not_load_sklearn() -> None:
    # scikit-learn takes about a second to import: only the functions that use it import it.
    code = "import sys, medimg.evaluation; print(any(m.startswith('sklearn') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_youden_threshold() -> None:
    # ROC points: 0.8 -> (0, .5) J .5; 0.4 -> (.5, .5) J 0; 0.35 -> (.5, 1) J .5; 0.1 -> (1, 1) J 0.
    assert youden_threshold(SK_Y, SK_SCORE) == 0.8  # tie: the highest threshold
    for seed in range(5):
        y, score = binary_data(120, seed)
        best = youden_threshold(y, score)
        j = [np.mean(score[y == 1] >= t) + np.mean(score[y == 0] < t) - 1 for t in np.unique(score)]
        chosen = binary_metrics(y, score, threshold=best)
        assert chosen["sensitivity"] + chosen["specificity"] - 1 == pytest.approx(max(j), abs=1e-12)
    with pytest.raises(ValueError, match="both"):
        youden_threshold([1, 1, 1], [0.1, 0.2, 0.3])


# --------------------------------------------------------------------------------------------
# Multiclass metrics


def test_kappa_hand_computed_3x3() -> None:
    # O = [[2,1,0],[1,3,1],[0,1,1]], N = 10, both marginals (3, 5, 2):
    # E = outer/10 = [[.9,1.5,.6],[1.5,2.5,1.0],[.6,1.0,.4]].
    # linear |i-j|:    sum W*O = 4, sum W*E = 1.5+1.5+1+1 + 2*(.6+.6) = 7.4 -> 1 - 4/7.4 = 17/37
    # quadratic (i-j)^2: sum W*O = 4, sum W*E = 5 + 4*(1.2) = 9.8   -> 1 - 4/9.8 = 29/49
    # unweighted: p_o = .6, p_e = (9+25+4)/100 = .38 -> (.6-.38)/(1-.38) = 11/31
    confusion = np.array([[2, 1, 0], [1, 3, 1], [0, 1, 1]])
    assert cohen_kappa(confusion, weights="linear") == pytest.approx(17 / 37, abs=1e-15)
    assert cohen_kappa(confusion, weights="quadratic") == pytest.approx(29 / 49, abs=1e-15)
    assert cohen_kappa(confusion) == pytest.approx(11 / 31, abs=1e-15)
    y_true, y_pred = from_confusion(confusion)
    metrics = multiclass_metrics(y_true, one_hot(y_pred, 3), labels=["A", "B", "C"])
    assert metrics["confusion_matrix"] == confusion.tolist()
    assert metrics["kappa_linear"] == pytest.approx(17 / 37, abs=1e-15)
    assert metrics["kappa_quadratic"] == pytest.approx(29 / 49, abs=1e-15)
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["per_class_recall"] == pytest.approx({"A": 2 / 3, "B": 3 / 5, "C": 1 / 2})
    assert metrics["support"] == {"A": 3, "B": 5, "C": 2}
    assert metrics["n"] == 10


def test_kappa_properties() -> None:
    y = np.array([0, 1, 2, 3, 3, 2, 1, 0, 2])
    perfect = multiclass_metrics(y, one_hot(y, 4), labels=DENSITY)
    assert perfect["kappa_linear"] == 1.0 and perfect["kappa_quadratic"] == 1.0 and perfect["accuracy"] == 1.0
    constant = multiclass_metrics(y, one_hot(np.full(y.size, 2), 4), labels=DENSITY)
    assert constant["kappa_linear"] == pytest.approx(0.0, abs=1e-15)
    assert constant["kappa_quadratic"] == pytest.approx(0.0, abs=1e-15)
    # Linear weights penalize a two-class miss twice, quadratic four times, a one-class miss.
    off_by_one = cohen_kappa([[4, 1, 0], [0, 5, 0], [0, 0, 5]], weights="quadratic")
    off_by_two = cohen_kappa([[4, 0, 1], [0, 5, 0], [0, 0, 5]], weights="quadratic")
    assert off_by_two < off_by_one
    # Symmetric in the two raters.
    confusion = np.array([[5, 2, 1], [1, 6, 2], [0, 3, 4]])
    assert cohen_kappa(confusion, weights="linear") == pytest.approx(cohen_kappa(confusion.T, weights="linear"))
    assert math.isnan(cohen_kappa([[3, 0], [0, 0]], weights="linear"))  # chance agreement already perfect


def test_confusion_matrix_rows_are_truth() -> None:
    y = np.array([0, 0, 0, 1, 2])
    predicted = np.array([1, 1, 2, 1, 2])
    metrics = multiclass_metrics(y, one_hot(predicted, 3), labels=["A", "B", "C"])
    assert metrics["confusion_matrix"] == [[0, 2, 1], [0, 1, 0], [0, 0, 1]]
    assert metrics["per_class_recall"] == {"A": 0.0, "B": 1.0, "C": 1.0}


def test_multiclass_auc_matches_binary_and_monai() -> None:
    import torch
    from monai.metrics import compute_roc_auc

    y, prob = multiclass_data(300, 0)
    metrics = multiclass_metrics(y, prob, labels=DENSITY)
    per_class = [binary_metrics(y == c, prob[:, c])["roc_auc"] for c in range(4)]
    assert list(metrics["per_class_roc_auc_ovr"].values()) == pytest.approx(per_class, abs=1e-15)
    assert metrics["macro_roc_auc_ovr"] == pytest.approx(np.mean(per_class), abs=1e-15)
    reference = compute_roc_auc(torch.as_tensor(prob), torch.as_tensor(one_hot(y, 4)), average="macro")
    assert metrics["macro_roc_auc_ovr"] == pytest.approx(float(reference), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(np.mean(prob.argmax(axis=1) == y))


def test_absent_class_gives_nan_auc() -> None:
    y, prob = multiclass_data(80, 1)
    y[y == 3] = 2
    metrics = multiclass_metrics(y, prob, labels=DENSITY)
    assert math.isnan(metrics["per_class_roc_auc_ovr"]["D"]) and math.isnan(metrics["per_class_recall"]["D"])
    assert all(not math.isnan(metrics["per_class_roc_auc_ovr"][c]) for c in "ABC")
    assert math.isnan(metrics["macro_roc_auc_ovr"])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        multiclass_metrics(np.array([0, 4]), np.ones((2, 4)), labels=DENSITY)
    with pytest.raises(ValueError, match="columns"):
        multiclass_metrics(np.array([0, 1]), np.ones((2, 3)), labels=DENSITY)


# --------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_reproducible_with_seed() -> None:
    y, score = binary_data(200, 0)
    first = bootstrap_ci(binary_metrics, y, score, n_boot=200, seed=7)
    assert first == bootstrap_ci(binary_metrics, y, score, n_boot=200, seed=7)
    assert first != bootstrap_ci(binary_metrics, y, score, n_boot=200, seed=8)
    assert evaluate_binary(y, score, n_boot=100, seed=3) == evaluate_binary(y, score, n_boot=100, seed=3)
    assert set(first) == {"roc_auc", "pr_auc", "sensitivity", "specificity", "ppv", "npv", "threshold", "n"} | {
        "n_positive"
    }


def test_bootstrap_intervals_contain_point_estimate() -> None:
    y, score = binary_data(300, 1)
    result = evaluate_binary(y, score, n_boot=500)
    assert set(result["ci95"]) == {"roc_auc", "pr_auc", "sensitivity", "specificity", "ppv", "npv"}
    for key, (lo, hi) in result["ci95"].items():
        assert lo < result[key] < hi, key
        assert hi - lo < 0.25, key
    y, prob = multiclass_data(300, 2)
    result = evaluate_multiclass(y, prob, labels=DENSITY, n_boot=300)
    assert set(result["ci95"]) == {"accuracy", "kappa_linear", "kappa_quadratic", "macro_roc_auc_ovr"}
    for key, (lo, hi) in result["ci95"].items():
        assert lo < result[key] < hi, key


def test_bootstrap_narrower_with_more_data() -> None:
    small = evaluate_binary(*binary_data(100, 5), n_boot=400)["ci95"]["roc_auc"]
    large = evaluate_binary(*binary_data(1600, 5), n_boot=400)["ci95"]["roc_auc"]
    # Width shrinks like 1 / sqrt(n): a factor of about 4 for 16 times the cases.
    assert (large[1] - large[0]) < 0.5 * (small[1] - small[0])


def test_bootstrap_percentiles_match_normal_theory_for_a_mean() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 2.0, size=400)
    y = np.zeros(values.size, dtype=int)
    lo, hi = bootstrap_ci(lambda _y, s: float(np.mean(s)), y, values, n_boot=2000)["value"]
    half_width = 1.96 * values.std() / np.sqrt(values.size)
    assert (lo + hi) / 2 == pytest.approx(values.mean(), abs=0.02)
    assert (hi - lo) / 2 == pytest.approx(half_width, rel=0.1)


def test_stratified_resamples_keep_class_counts_and_pairs() -> None:
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    ids = np.arange(y.size, dtype=float)  # the score is the case id, to check (label, score) pairs

    def counts(y_res: np.ndarray, ids_res: np.ndarray) -> dict[str, float]:
        return {
            "n0": float(np.sum(y_res == 0)),
            "n1": float(np.sum(y_res == 1)),
            "n2": float(np.sum(y_res == 2)),
            "pairs_intact": float(np.array_equal(y[ids_res.astype(int)], y_res)),
            "distinct": float(np.unique(ids_res).size),
        }

    ci = bootstrap_ci(counts, y, ids, n_boot=300, seed=1)
    assert ci["n0"] == (50.0, 50.0) and ci["n1"] == (30.0, 30.0) and ci["n2"] == (20.0, 20.0)
    assert ci["pairs_intact"] == (1.0, 1.0)
    assert ci["distinct"][1] < 100  # with replacement: about 63% distinct cases
    free = bootstrap_ci(counts, y, ids, n_boot=300, seed=1, stratified=False)
    assert free["n1"][0] < 30 < free["n1"][1]
    assert free["pairs_intact"] == (1.0, 1.0)


def test_bootstrap_ignores_nan_resamples() -> None:
    y = np.array([0, 1, 1, 1, 1, 1])
    score = np.array([0.1, 0.3, 0.5, 0.6, 0.8, 0.9])
    # Unstratified, a third of the resamples have no negative case: their AUC is NaN.
    lo, hi = bootstrap_ci(binary_metrics, y, score, n_boot=300, stratified=False)["roc_auc"]
    assert lo == 1.0 and hi == 1.0
    all_nan = bootstrap_ci(lambda _y, _s: math.nan, y, score, n_boot=20)
    assert list(all_nan) == ["value"] and all(math.isnan(v) for v in all_nan["value"])


def test_evaluate_binary_is_json_able_and_uses_threshold() -> None:
    y, score = binary_data(120, 6)
    result = evaluate_binary(y, score, threshold=0.3, n_boot=50)
    assert result["threshold"] == 0.3
    assert result["sensitivity"] == pytest.approx(np.mean(score[y == 1] >= 0.3))
    assert json.loads(json.dumps(result)) == result
    assert type(result["roc_auc"]) is float and type(result["n"]) is int
    assert all(type(v) is list and len(v) == 2 and type(v[0]) is float for v in result["ci95"].values())
    assert evaluate_binary(y, score, n_boot=10)["threshold"] == 0.5
    y, prob = multiclass_data(100, 6)
    result = evaluate_multiclass(y, prob, labels=DENSITY, n_boot=50)
    assert json.loads(json.dumps(result)) == result
    assert result["labels"] == DENSITY and result["n_boot"] == 50


# --------------------------------------------------------------------------------------------
# Plots and report sections


def legend_texts(ax: object) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]  # type: ignore[attr-defined]


def test_plots_return_labelled_figures() -> None:
    fig = plot_roc(SK_Y, SK_SCORE, threshold=0.4)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert "AUC = 0.750" in legend_texts(ax)[0]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    plt.close(fig)
    fig = plot_pr(SK_Y, SK_SCORE)
    assert len(fig.axes) == 1 and "AP = 0.833" in legend_texts(fig.axes[0])[0]
    plt.close(fig)
    y, score = binary_data(200, 0)
    fig = plot_calibration(y, score)
    assert len(fig.axes) == 2 and all(ax.get_title() and ax.get_xlabel() for ax in fig.axes)
    assert any("AUC" in text for text in legend_texts(fig.axes[0]))
    plt.close(fig)
    fig = plot_confusion([[5, 1, 0], [2, 6, 1], [0, 1, 4]], ["A", "B", "C"])
    assert len(fig.axes) == 1 and len(fig.axes[0].texts) == 9
    assert fig.axes[0].texts[0].get_text() == "5\n83%"
    assert fig.axes[0].get_ylabel() == "True" and fig.axes[0].get_xlabel() == "Predicted"
    plt.close(fig)
    y, prob = multiclass_data(100, 0)
    fig = plot_roc_ovr(y, prob, DENSITY)
    assert len(fig.axes) == 1 and len(legend_texts(fig.axes[0])) == 4
    plt.close(fig)


def test_binary_report_section() -> None:
    y, score = binary_data(150, 2)
    metrics = evaluate_binary(y, score, n_boot=50)
    report = Report("Pneumonia")
    add_binary_section(report, y, score, metrics, heading="Chest X-ray pneumonia")
    assert [b.kind for b in report.blocks] == ["heading", "text", "table", "figure", "figure", "figure"]
    table = report.blocks[2]
    assert list(table.columns) == ["metric", "value", "95% CI"]
    assert len(table.rows) == 6 and table.rows[0][0] == "ROC AUC"
    lo, hi = metrics["ci95"]["roc_auc"]
    assert table.rows[0][2] == f"[{lo:.3f}, {hi:.3f}]"
    assert all(b.uri.startswith("data:image/png;base64,") for b in report.blocks[3:])
    assert "50 resamples" in report.blocks[1].text
    assert "ROC AUC" in report.to_html()


def test_multiclass_report_section() -> None:
    y, prob = multiclass_data(150, 3)
    metrics = evaluate_multiclass(y, prob, labels=DENSITY, n_boot=50)
    report = Report("Density")
    add_multiclass_section(report, y, prob, metrics, DENSITY)
    assert [b.kind for b in report.blocks] == ["text", "table", "table", "figure", "figure"]
    assert len(report.blocks[1].rows) == 4
    assert [row[0] for row in report.blocks[2].rows] == DENSITY
    assert report.blocks[2].rows[0][1] == str(metrics["support"]["A"])
