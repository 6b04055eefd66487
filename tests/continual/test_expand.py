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
from continual.expand import _ce_penalty_metric, expand
from medimg.models import build_network
from medimg.training import TrainConfig


def test_ce_penalty_metric_by_hand() -> None:
    y = np.array([0, 1, 1])
    prob = np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9]])
    ce = -(math.log(0.8) + math.log(0.6) + math.log(0.9)) / 3
    out = _ce_penalty_metric(roc_auc_metric, lambda: torch.tensor(0.25))(y, prob)
    assert out["neg_ce_penalty"] == pytest.approx(-(ce + 0.25))
    assert "roc_auc" in out
    assert _ce_penalty_metric(roc_auc_metric, None)(y, prob)["neg_ce_penalty"] == pytest.approx(-ce)


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
