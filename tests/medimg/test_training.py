"""The supervised loop: it learns, logs, checkpoints, resumes exactly, and runs under torchrun (DDP)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from toy_classification import bright_square_dataset, roc_auc_metric, state_sha256, toy_meta

from medimg.models import build_network, load_checkpoint
from medimg.training import TrainConfig, train_classifier

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data() -> tuple:
    return bright_square_dataset(64, seed=1), bright_square_dataset(32, seed=2)


def compact(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network("compact", out_channels=2)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compact_net_learns_the_bright_square(tmp_path: Path, data, capsys) -> None:
    train, val = data
    out = tmp_path / "run"
    config = TrainConfig(epochs=3, batch_size=16, lr=3e-3, seed=0)
    result = train_classifier(
        compact(), train, val, config=config, out_dir=out, metric_fn=roc_auc_metric, checkpoint_meta=toy_meta()
    )
    assert result.best_value is not None and result.best_value > 0.9
    assert result.epochs_run == result.last_epoch == 3 and result.resumed_from == 0
    assert "epoch 3/3" in capsys.readouterr().err  # the per-epoch lines (progress bar on stderr)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "learning_curve.png", "metrics.csv"]

    rows = read_rows(result.metrics_csv)
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "roc_auc", "accuracy", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert [float(r["roc_auc"]) for r in rows] == [row["roc_auc"] for row in result.history]
    assert result.learning_curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # best.pt: the weights of the best epoch, which reproduce that epoch's validation metric
    model, meta = load_checkpoint(result.best_checkpoint, pipeline="toy", architecture="compact")
    training = meta["training"]
    assert (training["epoch"], training["monitor"], training["value"]) == (
        result.best_epoch,
        "roc_auc",
        result.best_value,
    )
    assert training["data"] == "bright squares" and training["config"]["lr"] == 3e-3
    with torch.no_grad():
        logits = torch.cat([model(item["image"][None].as_tensor()) for item in val])
    labels = np.array([item["label"] for item in val])
    assert roc_auc_metric(labels, torch.softmax(logits.double(), 1).numpy())["roc_auc"] == result.best_value

    # last.pt holds everything needed to resume, loadable without pickled objects
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert last["epoch"] == 3 and last["best_epoch"] == result.best_epoch and len(last["history"]) == 3
    assert {"optimizer", "scheduler", "rng", "config"} <= set(last)
    assert set(last["rng"]) >= {"torch", "numpy", "python"}

    # a finished run does nothing on a rerun
    before = {p.name: digest(p) for p in out.iterdir()}
    again = train_classifier(
        compact(9), train, val, config=config, out_dir=out, metric_fn=roc_auc_metric, checkpoint_meta=toy_meta()
    )
    assert again.epochs_run == 0 and again.last_epoch == 3 and again.history == result.history
    assert again.best_value == result.best_value and again.best_epoch == result.best_epoch
    assert {p.name: digest(p) for p in out.iterdir()} == before


class SimulatedCrash(RuntimeError):
    pass


def crash_on_call(n: int):
    """A metric function that raises on its n-th call (i.e. during epoch n's validation)."""
    calls = {"count": 0}

    def metric(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, float]:
        calls["count"] += 1
        if calls["count"] == n:
            raise SimulatedCrash("power cut")
        return roc_auc_metric(y_true, y_prob)

    return metric


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, data) -> None:
    train, val = data
    config = TrainConfig(epochs=4, batch_size=16, lr=3e-3, seed=5)
    kwargs = {"config": config, "checkpoint_meta": toy_meta(), "quiet": True}

    straight = compact(0)
    full = train_classifier(straight, train, val, out_dir=tmp_path / "a", metric_fn=roc_auc_metric, **kwargs)

    with pytest.raises(SimulatedCrash):  # dies in epoch 3, after last.pt of epoch 2
        train_classifier(compact(0), train, val, out_dir=tmp_path / "b", metric_fn=crash_on_call(3), **kwargs)
    assert len(read_rows(tmp_path / "b" / "metrics.csv")) == 2

    resumed_model = compact(99)  # other initial weights: everything must come from last.pt
    resumed = train_classifier(resumed_model, train, val, out_dir=tmp_path / "b", metric_fn=roc_auc_metric, **kwargs)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 2 and resumed.last_epoch == 4

    expected, got = straight.state_dict(), resumed_model.state_dict()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in full.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history] == strip
    assert len(read_rows(tmp_path / "b" / "metrics.csv")) == 4
    assert (resumed.best_epoch, resumed.best_value) == (full.best_epoch, full.best_value)


def test_more_epochs_continue_a_finished_run_on_the_stretched_schedule(tmp_path: Path, data) -> None:
    train, val = data
    out = tmp_path / "run"
    common = {"out_dir": out, "metric_fn": roc_auc_metric, "checkpoint_meta": toy_meta(), "quiet": True}
    train_classifier(compact(), train, val, config=TrainConfig(epochs=2, batch_size=16, lr=2e-3), **common)
    longer = train_classifier(compact(), train, val, config=TrainConfig(epochs=4, batch_size=16, lr=2e-3), **common)
    assert (longer.resumed_from, longer.epochs_run, longer.last_epoch) == (2, 2, 4)
    # epochs 1-2 ran on a 2-epoch cosine, epochs 3-4 on the 4-epoch cosine: lr * (1 + cos(pi * i / E)) / 2
    expected = [2e-3, 1e-3, 2e-3 * 0.5, 2e-3 * (1 + math.cos(math.pi * 3 / 4)) / 2]
    assert [row["lr"] for row in longer.history] == pytest.approx(expected, rel=1e-12)
    assert [int(r["epoch"]) for r in read_rows(out / "metrics.csv")] == [1, 2, 3, 4]

    with pytest.raises(ValueError, match=r"last\.pt was written with seed=0, but this run asks for 1"):
        train_classifier(compact(), train, val, config=TrainConfig(epochs=5, batch_size=16, lr=2e-3, seed=1), **common)
    fresh = train_classifier(
        compact(), train, val, config=TrainConfig(epochs=1, batch_size=16, lr=2e-3, seed=1), resume=False, **common
    )
    assert fresh.resumed_from == 0 and fresh.last_epoch == 1 and len(read_rows(out / "metrics.csv")) == 1


def test_tuples_class_weights_and_focal_loss(tmp_path: Path, data) -> None:
    train, val = data
    as_tuples = [
        TensorDataset(torch.stack([d["image"].as_tensor() for d in ds]), torch.tensor([d["label"] for d in ds]))
        for ds in (train, val)
    ]
    config = TrainConfig(epochs=2, batch_size=10, lr=3e-3, class_weights=[1.0, 3.0], monitor="accuracy")
    result = train_classifier(
        compact(),
        *as_tuples,
        config=config,
        out_dir=tmp_path,
        metric_fn=roc_auc_metric,
        checkpoint_meta=toy_meta(),
        loss="focal",
        quiet=True,
    )
    assert len(result.history) == 2 and all(math.isfinite(row["train_loss"]) for row in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    _, meta = load_checkpoint(result.best_checkpoint)
    assert meta["training"]["loss"] == "focal" and meta["training"]["config"]["class_weights"] == [1.0, 3.0]
    assert meta["training"]["monitor"] == "accuracy"


def test_bad_settings_fail_before_training(tmp_path: Path, data) -> None:
    train, val = data
    out = tmp_path / "run"
    common = {"out_dir": out, "metric_fn": roc_auc_metric, "quiet": True}
    with pytest.raises(ValueError, match="'resnet18' network .* does not match"):
        train_classifier(compact(), train, val, config=TrainConfig(), checkpoint_meta=toy_meta("resnet18"), **common)
    with pytest.raises(ValueError, match="class_weights has 3 entries for a network with 2 classes"):
        train_classifier(
            compact(), train, val, config=TrainConfig(class_weights=[1, 2, 3]), checkpoint_meta=toy_meta(), **common
        )
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        train_classifier(compact(), train, val, config=TrainConfig(), checkpoint_meta=toy_meta(), loss="dice", **common)
    with pytest.raises(ValueError, match="lacks required key"):
        train_classifier(compact(), train, val, config=TrainConfig(), checkpoint_meta={"pipeline": "toy"}, **common)
    assert not out.exists()
    with pytest.raises(
        ValueError, match=r"monitor 'f1' is not among the metrics returned by metric_fn: \['accuracy', 'roc_auc'\]"
    ):
        train_classifier(
            compact(), train, val, config=TrainConfig(epochs=1, monitor="f1"), checkpoint_meta=toy_meta(), **common
        )


def test_extra_loss_is_added_to_every_training_batch(tmp_path: Path, data) -> None:
    """``extra_loss(batch)`` is called once per training batch, after the forward pass, with the
    collated batch, and its value and gradient join the loss; the loop never looks on the model.

    A constant of 5 raises the training loss by 5 and leaves the weights alone (no gradient); a
    penalty on the weights changes them. A loop that ignored the hook would fail both.
    """
    train, val = data
    config = TrainConfig(epochs=1, batch_size=16, lr=3e-3, seed=0)
    common = {"config": config, "metric_fn": roc_auc_metric, "checkpoint_meta": toy_meta(), "quiet": True}
    plain_model = compact()
    plain = train_classifier(plain_model, train, val, out_dir=tmp_path / "plain", **common)

    shifted_model = compact()
    shifted_model.auxiliary_loss = lambda batch: torch.tensor(1e6)  # an attribute the loop must not discover
    forwards: list[int] = []
    shifted_model.register_forward_hook(lambda *_: forwards.append(1))
    calls: list[tuple[int, tuple[int, ...]]] = []

    def constant(batch) -> torch.Tensor:
        calls.append((len(forwards), tuple(batch["image"].shape)))
        return torch.tensor(5.0)

    shifted = train_classifier(shifted_model, train, val, out_dir=tmp_path / "shifted", extra_loss=constant, **common)
    assert calls == [(step, (16, 1, 32, 32)) for step in (1, 2, 3, 4)]  # 64 items, after each forward
    assert shifted.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"] + 5.0, abs=1e-5)
    assert shifted.history[0]["val_loss"] == plain.history[0]["val_loss"]
    for name, value in plain_model.state_dict().items():
        assert torch.equal(shifted_model.state_dict()[name], value), name

    penalized_model = compact()
    weights = [p for p in penalized_model.parameters() if p.ndim > 1]
    penalty = lambda batch: 10.0 * sum((w**2).sum() for w in weights)  # noqa: E731
    train_classifier(penalized_model, train, val, out_dir=tmp_path / "penalized", extra_loss=penalty, **common)
    norm = {name: sum(float(p.detach().norm()) for p in m.parameters() if p.ndim > 1) for name, m in
            (("plain", plain_model), ("penalized", penalized_model))}  # fmt: skip
    assert norm["penalized"] < norm["plain"]


@pytest.mark.slow
def test_distributed_data_parallel_under_torchrun(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    }
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HELPERS), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(HELPERS / "toy_classification.py"),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["sha256"] == ranks[1]["sha256"]  # identical parameters and batch-norm buffers
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 2  # same metrics everywhere
    assert all(r["group_destroyed"] for r in ranks)

    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "learning_curve.png", "metrics.csv"]
    assert len(read_rows(run / "metrics.csv")) == 2
    assert any("metrics.csv" in w for w in ranks[0]["writes"])  # the audit hook sees rank 0's writes...
    assert ranks[1]["writes"] == []  # ...and none from rank 1
    model, meta = load_checkpoint(run / "last.pt")
    assert state_sha256(model) == ranks[0]["sha256"]
    assert meta["training"]["world_size"] == 2 and meta["training"]["train_items"] == 40
