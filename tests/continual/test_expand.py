"""Epoch selection of the expansion arms: the paper code's lowest (validation CE + EWC penalty)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_classification import bright_square_dataset, roc_auc_metric, toy_meta

from continual.ewc import estimate_fisher
from continual.expansion import ce_penalty_metric, expand, two_site_metric
from medimg.models import build_network, read_checkpoint
from medimg.training import TrainConfig


def test_ce_penalty_metric_by_hand() -> None:
    y = np.array([0, 1, 1])
    prob = np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9]])
    ce = -(math.log(0.8) + math.log(0.6) + math.log(0.9)) / 3
    out = ce_penalty_metric(roc_auc_metric, lambda: torch.tensor(0.25))(y, prob)
    assert out["neg_ce_penalty"] == pytest.approx(-(ce + 0.25))
    assert "roc_auc" in out
    assert ce_penalty_metric(roc_auc_metric, None)(y, prob)["neg_ce_penalty"] == pytest.approx(-ce)


def test_expand_keeps_the_epoch_with_the_lowest_ce_plus_penalty(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_network("compact", spatial_dims=2, in_channels=1, out_channels=2)
    train, val = bright_square_dataset(16, seed=1), bright_square_dataset(8, seed=2)
    fisher = estimate_fisher(model, train)
    config = TrainConfig(epochs=3, batch_size=8, lr=1e-2, monitor="roc_auc")
    _, info = expand(
        model, train, val, arm="ewc-gbn", out_dir=tmp_path, config=config, metric_fn=roc_auc_metric,
        checkpoint_meta=toy_meta(), fisher=fisher, lam=10.0, select="ce_penalty",
    )  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    values = [float(r["neg_ce_penalty"]) for r in rows]
    assert info["best_epoch"] == 1 + int(np.argmax(values))
    with pytest.raises(ValueError, match="unknown selection"):
        expand(model, train, val, arm="finetune", out_dir=tmp_path / "x", config=config, metric_fn=roc_auc_metric,
               checkpoint_meta=toy_meta(), select="loss")  # fmt: skip


def test_two_site_metric_by_hand() -> None:
    """The joint arm's validation metric: each site's part scored alone, then the plain mean.

    Pooling the two parts into one score (or scoring only the new site) gives other numbers: the
    new site alone has accuracy 1.0, the pooled six items 4/6, the mean of the sites 0.75.
    """
    y = np.array([0, 1, 1, 0, 1, 0])
    prob = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2]])
    out = two_site_metric(roc_auc_metric, 2)(y, prob)
    assert out["new_accuracy"] == 1.0 and out["old_accuracy"] == 0.5 and out["accuracy"] == 0.75
    # old site: positives score 0.7, 0.4; negatives 0.6, 0.2 -> 3 of 4 pairs ordered
    assert out["new_roc_auc"] == 1.0 and out["old_roc_auc"] == 0.75 and out["roc_auc"] == 0.875
    with pytest.raises(ValueError, match="cannot hold"):
        two_site_metric(roc_auc_metric, 6)(y, prob)


def test_joint_trains_on_both_sites_and_keeps_the_best_mean_of_both_validations(tmp_path: Path) -> None:
    """The joint arm's rule: one epoch = one pass over both training splits (each site gets
    ``config.epochs`` epochs), the kept epoch = the best mean of the two sites' validation metric.

    The metric is scripted per site (the new site's validation has 6 items, the old site's 4): the
    new site alone peaks at epoch 1, the mean at epoch 2. Selecting on the new site only (the rule
    before) keeps epoch 1; training on B alone records 16 training items instead of 32.
    """
    script = {6: [0.9, 0.5, 0.6], 4: [0.1, 0.9, 0.8]}  # n items -> value per epoch
    calls = {6: 0, 4: 0}

    def scripted(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, float]:
        n = len(y_true)
        value = script[n][calls[n]]
        calls[n] += 1
        return {"roc_auc": value}

    torch.manual_seed(0)
    model = build_network("compact", spatial_dims=2, in_channels=1, out_channels=2)
    train_a, train_b = bright_square_dataset(16, seed=1), bright_square_dataset(16, seed=2)
    val_a, val_b = bright_square_dataset(4, seed=3), bright_square_dataset(6, seed=4)
    config = TrainConfig(epochs=3, batch_size=8, lr=1e-2, monitor="roc_auc")
    _, info = expand(
        model, train_b, val_b, arm="joint", out_dir=tmp_path, config=config, metric_fn=scripted,
        checkpoint_meta=toy_meta(), train_a=train_a, val_a=val_a,
    )  # fmt: skip
    assert info["best_epoch"] == 2
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [float(r["new_roc_auc"]) for r in rows] == script[6]
    assert [float(r["old_roc_auc"]) for r in rows] == script[4]
    assert [float(r["roc_auc"]) for r in rows] == pytest.approx([0.5, 0.7, 0.7])
    training = read_checkpoint(tmp_path / "best.pt")["meta"]["training"]
    assert training["train_items"] == len(train_a) + len(train_b) and training["epochs"] == 3
    assert training["continual"]["validation"] == "mean of new and old site"


def test_a_rerun_never_continues_a_run_with_another_selection_rule(tmp_path: Path) -> None:
    """Breaking it: resuming a ``last.pt`` kept by the new site's validation metric under the
    ce_penalty rule would mix two rules' epochs in one run."""
    torch.manual_seed(0)
    model = build_network("compact", spatial_dims=2, in_channels=1, out_channels=2)
    train, val = bright_square_dataset(16, seed=1), bright_square_dataset(8, seed=2)
    common = {"config": TrainConfig(epochs=1, batch_size=8, lr=1e-2, monitor="roc_auc"),
              "metric_fn": roc_auc_metric, "checkpoint_meta": toy_meta()}  # fmt: skip
    expand(model, train, val, arm="finetune", out_dir=tmp_path, **common)
    with pytest.raises(ValueError, match=r"select='metric' there, 'ce_penalty' now"):
        expand(model, train, val, arm="finetune", out_dir=tmp_path, select="ce_penalty", **common)
    expand(model, train, val, arm="finetune", out_dir=tmp_path, **common)  # the same settings resume


def test_only_the_joint_arm_sees_old_site_data(tmp_path: Path) -> None:
    model = build_network("compact", spatial_dims=2, in_channels=1, out_channels=2)
    data = bright_square_dataset(8, seed=1)
    config = TrainConfig(epochs=1, batch_size=8, monitor="roc_auc")
    common = {"config": config, "metric_fn": roc_auc_metric, "checkpoint_meta": toy_meta()}
    with pytest.raises(ValueError, match="joint arm only"):
        expand(model, data, data, arm="finetune", out_dir=tmp_path / "a", val_a=data, **common)
    with pytest.raises(ValueError, match="training and validation data"):
        expand(model, data, data, arm="joint", out_dir=tmp_path / "b", train_a=data, **common)


@pytest.mark.parametrize("arm", ["ewc", "lwf"])
def test_the_arms_loss_terms_reach_the_training_loop(tmp_path: Path, arm: str) -> None:
    """EWC's penalty and LwF's distillation go to the loop as ``extra_loss``: with the same seed,
    an arm that kept only the cross-entropy would end with finetune's weights bit for bit; a
    strong EWC penalty keeps the weights nearer model A."""
    torch.manual_seed(0)
    model_a = build_network("compact", spatial_dims=2, in_channels=1, out_channels=2)
    train, val = bright_square_dataset(16, seed=1), bright_square_dataset(8, seed=2)
    common = {"config": TrainConfig(epochs=1, batch_size=8, lr=1e-2, monitor="roc_auc"),
              "metric_fn": roc_auc_metric, "checkpoint_meta": toy_meta()}  # fmt: skip
    fisher = estimate_fisher(model_a, train) if arm == "ewc" else None
    tuned, _ = expand(model_a, train, val, arm="finetune", out_dir=tmp_path / "finetune", **common)
    kept, _ = expand(model_a, train, val, arm=arm, out_dir=tmp_path / arm, fisher=fisher, lam=1e4, **common)
    assert not hasattr(kept, "auxiliary_loss")

    def drift(model: torch.nn.Module) -> float:
        anchor = dict(model_a.named_parameters())
        return sum(float((p - anchor[n]).detach().norm()) for n, p in model.named_parameters())

    assert not all(torch.equal(p, q) for p, q in zip(kept.parameters(), tuned.parameters(), strict=True))
    if arm == "ewc":
        assert drift(kept) < drift(tuned)
