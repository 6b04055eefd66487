"""Tests for the per-site and forgetting metrics (``continual.metrics``), on hand-made R matrices."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from continual.metrics import (
    AccuracyMatrix,
    arm_row,
    forgetting_reduction,
    site_metrics,
    summarize_arms,
    tradeoff_curve,
)

# The brief's two-domain example: rows = stages (after A, after B), columns = domains (A, B).
R2 = [[0.8, 0.3], [0.6, 0.7]]
# Three stages on three domains. Domain A peaks at stage 1 (0.85 > R[0][A] = 0.8): the max-vs-last
# and first-vs-last average forgetting differ there.
R3 = [
    [0.80, 0.30, 0.20],
    [0.85, 0.70, 0.40],
    [0.60, 0.50, 0.90],
]


# --------------------------------------------------------------------------------------------
# site_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kappa_and_accuracy_equal_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, size=200))
    result = site_metrics(y, pred)
    assert set(result) == {"accuracy", "kappa_linear"}
    assert result["kappa_linear"] == pytest.approx(cohen_kappa_score(y, pred, weights="linear"), abs=1e-12)
    assert result["accuracy"] == pytest.approx(accuracy_score(y, pred))


def test_probabilities_use_the_argmax_and_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=100)
    prob = rng.dirichlet(np.ones(4), size=100)
    prob[np.arange(100), y] += rng.random(100) * 0.5  # better than chance
    result = site_metrics(y, prob)
    pred = prob.argmax(axis=1)
    assert "roc_auc" not in result  # only for binary heads
    assert result["kappa_linear"] == pytest.approx(cohen_kappa_score(y, pred, weights="linear"), abs=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(pred == y))


def test_labels_fix_the_ordinal_spacing_like_sklearn() -> None:
    # Class 1 is absent: sklearn's default (and ours) puts 0 and 2 next to each other.
    y = np.array([0, 0, 2, 2, 3, 3, 0, 3])
    pred = np.array([0, 2, 2, 3, 3, 0, 0, 2])
    default = site_metrics(y, pred)["kappa_linear"]
    fixed = site_metrics(y, pred, labels=range(4))["kappa_linear"]
    assert default == pytest.approx(cohen_kappa_score(y, pred, weights="linear"), abs=1e-12)
    assert fixed == pytest.approx(cohen_kappa_score(y, pred, labels=[0, 1, 2, 3], weights="linear"), abs=1e-12)
    assert default != pytest.approx(fixed)
    with pytest.raises(ValueError, match="not among labels"):
        site_metrics(y, pred, labels=[0, 2])


def test_binary_probabilities_add_roc_auc() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, size=80)
    p1 = np.clip(0.3 * y + rng.random(80) * 0.7, 0, 1)
    one_column = site_metrics(y, p1)
    two_columns = site_metrics(y, np.stack([1 - p1, p1], axis=1))
    assert one_column["roc_auc"] == pytest.approx(roc_auc_score(y, p1))
    assert two_columns["roc_auc"] == pytest.approx(roc_auc_score(y, p1))
    assert one_column["accuracy"] == pytest.approx(np.mean((p1 >= 0.5) == y))
    assert one_column["kappa_linear"] == pytest.approx(cohen_kappa_score(y, (p1 >= 0.5).astype(int), weights="linear"))


def test_degenerate_and_bad_inputs() -> None:
    # One class everywhere: kappa undefined (sklearn also gives NaN), accuracy 1.
    result = site_metrics([2, 2, 2], [2, 2, 2])
    assert result["accuracy"] == 1.0 and math.isnan(result["kappa_linear"])
    assert math.isnan(site_metrics([1, 1], [0.2, 0.9])["roc_auc"])
    with pytest.raises(ValueError, match="integer array"):
        site_metrics([0, 1, 2], np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="no cases"):
        site_metrics([], [])
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, K\)"):
        site_metrics([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="binary probabilities"):
        site_metrics([0, 2], [0.1, 0.9])


# --------------------------------------------------------------------------------------------
# AccuracyMatrix: two domains


def test_two_domain_formulas() -> None:
    r = AccuracyMatrix(R2)
    assert r.domains == ("A", "B")
    assert r.retention() == pytest.approx(0.6)  # R[1][A]
    assert r.forgetting() == pytest.approx(0.2)  # R[0][A] - R[1][A]
    assert r.relative_forgetting() == pytest.approx(0.25)  # 0.2 / 0.8
    assert r.backward_transfer() == pytest.approx(-0.2)  # = -F_A
    assert r.plasticity() == pytest.approx(0.7)  # R[1][B]
    assert r.forward_transfer() == pytest.approx(0.3)  # R[0][B]
    assert r.average_accuracy() == pytest.approx(0.65)  # (0.6 + 0.7) / 2
    assert r.average_accuracy(stage=0) == pytest.approx(0.55)
    # With two stages both average-forgetting variants reduce to F_A.
    assert r.average_forgetting_max() == pytest.approx(0.2)
    assert r.average_forgetting_first() == pytest.approx(0.2)
    # Domains by name work as by index.
    assert r.forgetting("A") == r.forgetting(0)
    assert r.plasticity("B") == r.plasticity(1)


def test_gaps_to_naive_finetuning_and_joint_training() -> None:
    method = AccuracyMatrix(R2)
    naive = AccuracyMatrix([[0.8, 0.3], [0.4, 0.75]])  # F_naive = 0.4
    assert method.plasticity_gap(naive) == pytest.approx(0.05)  # 0.75 - 0.7
    assert method.forgetting_reduction(naive) == pytest.approx(0.5)  # (0.4 - 0.2) / 0.4
    joint = AccuracyMatrix([[0.82, 0.78]])
    assert method.joint_gap(joint) == pytest.approx(0.8 - 0.65)
    assert method.joint_gap([0.82, 0.78]) == pytest.approx(0.15)
    assert method.joint_gap(0.8) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="3 values for 2 domains"):
        method.joint_gap([0.8, 0.8, 0.8])


def test_forgetting_reduction() -> None:
    assert forgetting_reduction(0.4, 0.1) == pytest.approx(0.75)
    assert forgetting_reduction(0.4, 0.0) == pytest.approx(1.0)
    assert forgetting_reduction(0.4, 0.4) == pytest.approx(0.0)
    assert forgetting_reduction(0.2, 0.3) == pytest.approx(-0.5)  # more forgetting than naive
    assert math.isnan(forgetting_reduction(0.0, 0.1))  # naive did not forget: undefined
    assert math.isnan(forgetting_reduction(0.0, 0.0))
    assert math.isnan(forgetting_reduction(math.nan, 0.1))
    # The same through the matrices.
    same = AccuracyMatrix([[0.8, 0.3], [0.8, 0.7]])
    assert math.isnan(AccuracyMatrix(R2).forgetting_reduction(same))


def test_relative_forgetting_of_a_zero_initial_value_is_nan() -> None:
    assert math.isnan(AccuracyMatrix([[0.0, 0.1], [-0.1, 0.5]]).relative_forgetting())


# --------------------------------------------------------------------------------------------
# AccuracyMatrix: three domains


def test_three_domain_backward_transfer() -> None:
    r = AccuracyMatrix(R3)
    # (1/(T-1)) sum_{d<T} (R[T-1][d] - R[d][d]) = ((0.60 - 0.80) + (0.50 - 0.70) + 0) / 2
    assert r.backward_transfer() == pytest.approx(-0.2)
    assert r.forgetting(0) == pytest.approx(0.2)  # R[0][A] - R[2][A]
    assert r.forgetting(1) == pytest.approx(0.2)  # R[1][B] - R[2][B]
    assert r.retention(0) == pytest.approx(0.6)
    assert r.plasticity(2) == pytest.approx(0.9)
    assert r.forward_transfer(2) == pytest.approx(0.4)  # R[1][C]
    assert r.average_accuracy() == pytest.approx((0.6 + 0.5 + 0.9) / 3)


def test_average_forgetting_variants_differ_when_an_intermediate_stage_is_the_max() -> None:
    r = AccuracyMatrix(R3)
    # Chaudhry: mean_d [max_{t<L} R[t][d] - R[L][d]] = ((0.85 - 0.60) + (0.70 - 0.50)) / 2
    assert r.average_forgetting_max() == pytest.approx(0.225)
    # Avalanche StreamForgetting: mean_d [R[d][d] - R[L][d]] = ((0.80 - 0.60) + (0.70 - 0.50)) / 2
    assert r.average_forgetting_first() == pytest.approx(0.2)
    assert r.average_forgetting_first() == pytest.approx(-r.backward_transfer())
    # Without the intermediate peak they agree.
    flat = AccuracyMatrix([[0.80, 0.30, 0.20], [0.75, 0.70, 0.40], [0.60, 0.50, 0.90]])
    assert flat.average_forgetting_max() == pytest.approx(flat.average_forgetting_first())


def test_max_variant_counts_zero_shot_stages() -> None:
    # Domain B's zero-shot value at stage 0 (0.75) beats R[1][B] (0.70): Chaudhry's max over all t < L.
    r = AccuracyMatrix([[0.80, 0.75, 0.20], [0.80, 0.70, 0.40], [0.60, 0.50, 0.90]])
    assert r.average_forgetting_max() == pytest.approx(((0.80 - 0.60) + (0.75 - 0.50)) / 2)
    assert r.average_forgetting_first() == pytest.approx(0.2)


def test_invalid_matrices_and_requests() -> None:
    with pytest.raises(ValueError, match="stages but"):
        AccuracyMatrix([[0.1], [0.2]])
    with pytest.raises(ValueError, match="distinct domain names"):
        AccuracyMatrix(R2, domains=("A", "A"))
    one_stage = AccuracyMatrix([[0.8, 0.3]])
    with pytest.raises(ValueError, match="at least 2 stages"):
        one_stage.backward_transfer()
    with pytest.raises(ValueError, match="nothing to forget"):
        AccuracyMatrix(R2).forgetting("B")
    with pytest.raises(ValueError, match="never trained"):
        one_stage.plasticity("B")
    with pytest.raises(ValueError, match="unknown domain"):
        AccuracyMatrix(R2).retention("C")
    with pytest.raises(ValueError, match="needs stage"):
        AccuracyMatrix(R2).forward_transfer("A")


def test_matrix_is_read_only_and_serializable() -> None:
    r = AccuracyMatrix(R2, domains=("mgh", "dmist"), metric="accuracy")
    with pytest.raises(ValueError):
        r.values[0, 0] = 1.0
    assert json.loads(json.dumps(r.to_dict())) == {"metric": "accuracy", "domains": ["mgh", "dmist"], "values": R2}
    assert r.n_stages == 2 and r.last == 1


def test_from_metrics_picks_any_metric() -> None:
    stages = [
        {"A": {"accuracy": 0.8, "kappa_linear": 0.5}, "B": {"accuracy": 0.3, "kappa_linear": 0.1}},
        {"A": {"accuracy": 0.6, "kappa_linear": 0.4}, "B": {"accuracy": 0.7, "kappa_linear": 0.6}},
    ]
    accuracy = AccuracyMatrix.from_metrics(stages, metric="accuracy")
    kappa = AccuracyMatrix.from_metrics(stages)
    np.testing.assert_allclose(accuracy.values, R2)
    assert kappa.metric == "kappa_linear" and kappa.forgetting() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="has no 'roc_auc'"):
        AccuracyMatrix.from_metrics(stages, metric="roc_auc")
    with pytest.raises(ValueError, match="covers domains"):
        AccuracyMatrix.from_metrics([stages[0], {"A": stages[1]["A"]}])


# --------------------------------------------------------------------------------------------
# Arm rows, summaries, trade-off curve


def _m(accuracy: float, kappa: float) -> dict[str, float]:
    return {"accuracy": accuracy, "kappa_linear": kappa}


def test_arm_row_columns_and_values() -> None:
    row = arm_row(
        "ewc-gbn",
        0.5,
        3,
        old_before=_m(0.9, 0.8),
        old_after=_m(0.85, 0.6),
        new_before=_m(0.4, 0.3),
        new_after=_m(0.75, 0.7),
        naive_old_after=_m(0.7, 0.4),
        naive_new_after=0.75,
        extra={"fisher_mode": "empirical_logprob"},
    )
    assert row["arm"] == "ewc-gbn" and row["lambda"] == 0.5 and row["seed"] == 3 and row["metric"] == "kappa_linear"
    assert row["old_kappa_before"] == 0.8 and row["old_kappa_after"] == 0.6
    assert row["new_kappa_before"] == 0.3 and row["new_kappa_after"] == 0.7
    assert row["old_accuracy_before"] == 0.9 and row["old_accuracy_after"] == 0.85
    assert row["new_accuracy_before"] == 0.4 and row["new_accuracy_after"] == 0.75
    assert row["forgetting"] == pytest.approx(0.2)
    assert row["relative_forgetting"] == pytest.approx(0.25)
    assert row["bwt"] == pytest.approx(-0.2)
    assert row["average_after"] == pytest.approx(0.65)
    assert row["plasticity_gap"] == pytest.approx(0.05)
    assert row["forgetting_reduction"] == pytest.approx(0.5)  # F_naive = 0.8 - 0.4
    assert row["fisher_mode"] == "empirical_logprob"
    json.dumps(row)


def test_arm_row_without_naive_or_lambda() -> None:
    row = arm_row(
        "finetune",
        None,
        0,
        old_before=_m(0.9, 0.8),
        old_after=_m(0.7, 0.4),
        new_before=_m(0.4, 0.3),
        new_after=_m(0.8, 0.75),
        metric="accuracy",
    )
    assert row["lambda"] is None and row["metric"] == "accuracy"
    assert row["forgetting"] == pytest.approx(0.2)  # accuracy now
    assert math.isnan(row["plasticity_gap"]) and math.isnan(row["forgetting_reduction"])
    flat = {"old_before": _m(1, 1), "old_after": _m(1, 1), "new_before": _m(1, 1), "new_after": _m(1, 1)}
    assert arm_row("x", math.nan, 0, **flat)["lambda"] is None
    with pytest.raises(ValueError, match="roc_auc"):
        arm_row("x", None, 0, **flat, metric="roc_auc")
    with pytest.raises(ValueError, match="clashes"):
        arm_row("x", None, 0, **flat, extra={"bwt": 0})


def _rows() -> list[dict]:
    """EWC at three lambdas (given out of order) x two seeds, plus naive fine-tuning x two seeds."""
    rows = []
    spec = {  # lambda -> [(old_after kappa, new_after kappa) per seed]
        10.0: [(0.6, 0.7), (0.4, 0.5)],
        0.5: [(0.3, 0.8), (0.5, 0.8)],
        1000.0: [(0.75, 0.4), (0.75, 0.2)],
    }
    for lam, seeds in spec.items():
        for seed, (old_after, new_after) in enumerate(seeds):
            rows.append(
                arm_row(
                    "ewc",
                    lam,
                    seed,
                    old_before=_m(0.9, 0.8),
                    old_after=_m(0.9, old_after),
                    new_before=_m(0.4, 0.3),
                    new_after=_m(0.8, new_after),
                )
            )
    for seed in range(2):
        rows.append(
            arm_row(
                "finetune",
                None,
                seed,
                old_before=_m(0.9, 0.8),
                old_after=_m(0.7, 0.2 + 0.1 * seed),
                new_before=_m(0.4, 0.3),
                new_after=_m(0.8, 0.8),
            )
        )
    return rows


def test_summarize_arms_mean_and_sd() -> None:
    summary = summarize_arms(_rows())
    assert [(s["arm"], s["lambda"]) for s in summary] == [
        ("ewc", 10.0),
        ("ewc", 0.5),
        ("ewc", 1000.0),
        ("finetune", None),
    ]
    first = summary[0]
    assert first["n_seeds"] == 2 and first["seeds"] == [0, 1] and first["metric"] == "kappa_linear"
    assert first["old_kappa_after_mean"] == pytest.approx(0.5)
    assert first["old_kappa_after_sd"] == pytest.approx(np.std([0.6, 0.4], ddof=1))  # sample SD
    assert first["forgetting_mean"] == pytest.approx(0.3)  # 0.8 - 0.5
    assert first["old_kappa_before_sd"] == pytest.approx(0.0)
    assert "seed_mean" not in first
    assert math.isnan(first["plasticity_gap_mean"])  # no naive values given
    naive = summary[3]
    assert naive["lambda"] is None and naive["old_kappa_after_mean"] == pytest.approx(0.25)
    # One seed: SD undefined.
    single = summarize_arms(_rows()[:1])[0]
    assert single["n_seeds"] == 1 and math.isnan(single["old_kappa_after_sd"])


def test_summarize_arms_rejects_a_repeated_seed() -> None:
    rows = _rows()
    with pytest.raises(ValueError, match="seed 0 twice"):
        summarize_arms([rows[0], rows[0]])
    with pytest.raises(ValueError, match="lacks"):
        summarize_arms([{"arm": "x", "seed": 0}])


def test_tradeoff_curve_is_sorted_by_lambda_with_means_over_seeds() -> None:
    curve = tradeoff_curve(_rows(), "ewc")
    assert [p["lambda"] for p in curve] == [0.5, 10.0, 1000.0]
    assert [p["new_after"] for p in curve] == pytest.approx([0.8, 0.6, 0.3])  # x = R[1][B]
    assert [p["old_after"] for p in curve] == pytest.approx([0.4, 0.5, 0.75])  # y = R[1][A]
    assert curve[0]["old_after_sd"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert all(p["n_seeds"] == 2 for p in curve)
    accuracy = tradeoff_curve(_rows(), "ewc", metric="accuracy")
    assert accuracy[0]["new_after"] == pytest.approx(0.8)
    naive = tradeoff_curve(_rows(), "finetune")
    assert len(naive) == 1 and naive[0]["lambda"] is None
    with pytest.raises(ValueError, match="no rows"):
        tradeoff_curve(_rows(), "lwf")
    with pytest.raises(ValueError, match="lack the numeric columns"):
        tradeoff_curve(_rows(), "ewc", metric="roc_auc")
