"""The supervised loop trains 3-D segmenters too: it learns, logs, checkpoints and resumes exactly.

The toy problem is BraTS in miniature: noisy 1x24x24x24 volumes with three nested cubes labelled
2 (edema), 1 (necrosis) and 4 (enhancing), turned into TC/WT/ET channels by MONAI's
``ConvertToMultiChannelBasedOnBratsClassesd``; training sees 16^3 patches from
``RandCropByPosNegLabeld`` (two per volume, a list the collate flattens), validation whole
volumes through Gaussian sliding-window inference. The network is a small MONAI SegResNet under an
architecture name that :func:`medimg.models.build_network` does not know, so checkpoints are
checked with :func:`medimg.models.read_checkpoint` and a freshly built SegResNet.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceLoss
from monai.metrics import compute_dice
from monai.networks.nets import SegResNet
from monai.transforms import Compose, ConvertToMultiChannelBasedOnBratsClassesd, EnsureTyped, RandCropByPosNegLabeld
from toy_classification import bright_square_dataset, roc_auc_metric, toy_meta

from medimg.models import build_network, read_checkpoint
from medimg.training import TrainConfig, segmentation_loss, train_classifier, train_segmenter

SIZE, PATCH = 24, 16
REGIONS = ["TC", "WT", "ET"]
NETWORK: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "init_filters": 8,
    "blocks_down": [1, 1],
    "blocks_up": [1],
    "norm": ["GROUP", {"num_groups": 2}],
}
COLUMNS = ["epoch", "train_loss", "val_loss", "dice_tc", "dice_wt", "dice_et", "dice_mean", "lr", "seconds"]


def nested_cubes(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` noisy (1, 24, 24, 24) volumes with BraTS labels: nested cubes of 2 (10^3), 1 (6^3) and 4 (4^3)."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        image = rng.normal(0.0, 0.2, (1, SIZE, SIZE, SIZE)).astype(np.float32)
        label = np.zeros((1, SIZE, SIZE, SIZE), dtype=np.uint8)
        x, y, z = rng.integers(1, SIZE - 11, 3)
        for offset, side, value in ((0, 10, 2), (2, 6, 1), (3, 4, 4)):
            label[0, x + offset : x + offset + side, y + offset : y + offset + side, z + offset : z + offset + side] = (
                value
            )
        image[0] += np.select([label[0] == 2, label[0] == 1, label[0] == 4], [1.0, 2.0, 3.0], 0.0).astype(np.float32)
        items.append({"image": image, "label": label})
    return items


def to_regions() -> list:
    return [EnsureTyped(keys=["image", "label"]), ConvertToMultiChannelBasedOnBratsClassesd(keys="label")]


def random_patches(num_samples: int = 2) -> RandCropByPosNegLabeld:
    return RandCropByPosNegLabeld(
        keys=["image", "label"], label_key="label", spatial_size=PATCH, pos=1, neg=1, num_samples=num_samples
    )


def train_set(n: int, seed: int = 1) -> Dataset:
    return Dataset(nested_cubes(n, seed), transform=Compose([*to_regions(), random_patches()]))


def val_set(n: int, seed: int = 2) -> Dataset:
    return Dataset(nested_cubes(n, seed), transform=Compose(to_regions()))


def segresnet(seed: int = 0) -> SegResNet:
    torch.manual_seed(seed)
    return SegResNet(**NETWORK)


def seg_meta(
    architecture: str = "toy-segresnet", labels: list[str] = REGIONS, network: dict[str, Any] = NETWORK
) -> dict[str, Any]:
    return {
        "pipeline": "toy-brats",
        "architecture": architecture,
        "network": network,
        "labels": labels,
        "preprocessing": {"patch": [PATCH] * 3, "intensity": "none"},
        "training": {"data": "nested cubes"},
    }


def predict(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    logits = sliding_window_inference(
        image, roi_size=PATCH, sw_batch_size=4, predictor=model, overlap=0.25, mode="gaussian"
    )
    return torch.sigmoid(logits)


def region_dice(pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    dice = compute_dice(pred, label, include_background=True, ignore_empty=False)[0]
    return {
        **{f"dice_{name.lower()}": float(d) for name, d in zip(REGIONS, dice, strict=True)},
        "dice_mean": float(dice.mean()),
    }


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_segresnet_learns_the_nested_cubes(tmp_path: Path, capsys) -> None:
    train, val = train_set(24), val_set(4)
    out = tmp_path / "run"
    config = TrainConfig(epochs=5, batch_size=1, lr=1e-2, seed=0, monitor="dice_mean")
    result = train_segmenter(
        segresnet(),
        train,
        val,
        config=config,
        out_dir=out,
        predict=predict,
        metric_fn=region_dice,
        checkpoint_meta=seg_meta(),
    )
    assert result.best_value is not None and result.best_value > 0.8
    assert result.epochs_run == result.last_epoch == 5 and result.resumed_from == 0
    assert "epoch 5/5" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "learning_curve.png", "metrics.csv"]

    rows = read_rows(result.metrics_csv)
    assert list(rows[0]) == COLUMNS and [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for row in result.history:  # val_loss is 1 - mean Dice (no region is empty here, so it equals 1 - dice_mean)
        assert row["val_loss"] == pytest.approx(1.0 - row["dice_mean"], abs=1e-9)
    assert result.learning_curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # best.pt: the best epoch's weights, which reproduce its validation Dice
    best = read_checkpoint(result.best_checkpoint)
    training = best["meta"]["training"]
    assert (training["epoch"], training["monitor"], training["value"]) == (
        result.best_epoch,
        "dice_mean",
        result.best_value,
    )
    assert training["task"] == "segmentation" and training["loss"] == "dice" and training["data"] == "nested cubes"
    assert best["meta"]["labels"] == REGIONS and best["meta"]["network"] == NETWORK
    model = segresnet(seed=99)
    model.load_state_dict(best["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        dice = [region_dice((predict(model, v["image"][None]) >= 0.5).float(), v["label"][None].float()) for v in val]
    assert np.mean([d["dice_mean"] for d in dice]) == pytest.approx(result.best_value, abs=1e-6)

    last = torch.load(result.last_checkpoint, weights_only=True)  # the same resumable last.pt as classification
    assert last["epoch"] == 5 and last["task"] == "segmentation" and {"optimizer", "scheduler", "rng"} <= set(last)


class SimulatedCrash(RuntimeError):
    pass


def crash_on_call(n: int):
    """A metric function that raises on its n-th call (one call per validation volume)."""
    calls = {"count": 0}

    def metric(pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
        calls["count"] += 1
        if calls["count"] == n:
            raise SimulatedCrash("power cut")
        return region_dice(pred, label)

    return metric


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    train, val = train_set(8), val_set(2)
    config = TrainConfig(epochs=3, batch_size=2, lr=1e-2, seed=3, monitor="dice_mean")
    kwargs = {"config": config, "predict": predict, "checkpoint_meta": seg_meta(), "quiet": True}

    straight = segresnet(0)
    full = train_segmenter(straight, train, val, out_dir=tmp_path / "a", metric_fn=region_dice, **kwargs)

    with pytest.raises(SimulatedCrash):  # dies in epoch 3's validation, after last.pt of epoch 2
        train_segmenter(segresnet(0), train, val, out_dir=tmp_path / "b", metric_fn=crash_on_call(2 * 2 + 1), **kwargs)
    assert len(read_rows(tmp_path / "b" / "metrics.csv")) == 2

    resumed_model = segresnet(99)  # other initial weights: everything must come from last.pt
    resumed = train_segmenter(resumed_model, train, val, out_dir=tmp_path / "b", metric_fn=region_dice, **kwargs)
    assert (resumed.resumed_from, resumed.epochs_run, resumed.last_epoch) == (2, 1, 3)

    expected, got = straight.state_dict(), resumed_model.state_dict()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in full.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history] == strip
    assert (resumed.best_epoch, resumed.best_value) == (full.best_epoch, full.best_value)

    # a classification run cannot resume a segmentation out_dir
    with pytest.raises(ValueError, match="was written by a segmentation run, not classification"):
        train_classifier(
            build_network("compact", out_channels=2),
            bright_square_dataset(4, seed=1),
            bright_square_dataset(4, seed=2),
            config=config,
            out_dir=tmp_path / "b",
            metric_fn=roc_auc_metric,
            checkpoint_meta=toy_meta(),
            quiet=True,
        )


def test_dicece_is_dice_plus_per_channel_binary_cross_entropy() -> None:
    torch.manual_seed(0)
    criterion = segmentation_loss("dicece", None, torch.device("cpu"))
    logits, masks = torch.randn(2, 3, 8, 8, 8), (torch.rand(2, 3, 8, 8, 8) > 0.7).float()
    # the "dice" loss (MONAI's BraTS tutorial settings) plus per-channel BCE, not DiceCELoss's
    # softmax cross-entropy over overlapping channels
    dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)(logits, masks)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks)
    assert float(criterion(logits, masks)) == pytest.approx(float(dice + bce))
    assert float(criterion(logits, masks)) != pytest.approx(float(DiceCELoss(sigmoid=True)(logits, masks)))


def test_an_empty_region_in_a_patch_costs_the_same_whatever_is_predicted() -> None:
    """MONAI's default smoothing scores an empty region 1 - 1e-5 / (sum(p) + 1e-5): ~0 when nothing
    is predicted, ~1 otherwise, so patches without the (small) region reward never predicting it.
    Our Dice term (no numerator smoothing) costs such a patch 1 whatever the prediction."""
    criterion = segmentation_loss("dice", None, torch.device("cpu"))
    empty = torch.zeros(1, 1, 4, 4, 4)
    nothing, something = torch.full((1, 1, 4, 4, 4), -30.0), torch.full((1, 1, 4, 4, 4), 2.0)
    assert float(criterion(nothing, empty)) == pytest.approx(1.0)
    assert float(criterion(something, empty)) == pytest.approx(1.0)
    default = DiceLoss(sigmoid=True)
    assert float(default(nothing, empty)) < 0.01 and float(default(something, empty)) > 0.99


def test_dicece_training_and_bad_settings(tmp_path: Path) -> None:
    train, val = train_set(2), val_set(1)
    config = TrainConfig(epochs=1, batch_size=2, lr=1e-2, monitor="dice_mean")
    common = {"predict": predict, "metric_fn": region_dice, "quiet": True}

    result = train_segmenter(
        segresnet(),
        train,
        val,
        config=config,
        out_dir=tmp_path / "ok",
        checkpoint_meta=seg_meta(),
        loss="dicece",
        **common,
    )
    assert (
        np.isfinite(result.history[0]["train_loss"])
        and read_checkpoint(result.last_checkpoint)["meta"]["training"]["loss"] == "dicece"
    )

    out = tmp_path / "bad"
    with pytest.raises(ValueError, match=r"class_weights apply to classification only"):
        train_segmenter(
            segresnet(),
            train,
            val,
            config=TrainConfig(class_weights=[1, 2, 3]),
            out_dir=out,
            checkpoint_meta=seg_meta(),
            **common,
        )
    with pytest.raises(ValueError, match="unknown loss 'ce'; known: dice, dicece"):
        train_segmenter(
            segresnet(), train, val, config=config, out_dir=out, checkpoint_meta=seg_meta(), loss="ce", **common
        )
    with pytest.raises(ValueError, match=r"names 2 regions \['TC', 'WT'\] for a network with 3 output channels"):
        train_segmenter(
            segresnet(), train, val, config=config, out_dir=out, checkpoint_meta=seg_meta(labels=["TC", "WT"]), **common
        )
    # an architecture medimg.models knows is checked against the model, as for classification
    known = seg_meta("compact", network={"spatial_dims": 3, "in_channels": 1, "out_channels": 3})
    with pytest.raises(ValueError, match="'compact' network .* does not match"):
        train_segmenter(segresnet(), train, val, config=config, out_dir=out, checkpoint_meta=known, **common)
    with pytest.raises(ValueError, match="'compact' network .* cannot build: .*'init_filters'"):
        train_segmenter(
            segresnet(), train, val, config=config, out_dir=out, checkpoint_meta=seg_meta("compact"), **common
        )
    assert not out.exists()

    raw_labels = Dataset(
        nested_cubes(2, 1), transform=Compose([EnsureTyped(keys=["image", "label"]), random_patches()])
    )
    with pytest.raises(ValueError, match=r"labels need one binary channel per output channel"):
        train_segmenter(
            segresnet(), raw_labels, val, config=config, out_dir=out / "1", checkpoint_meta=seg_meta(), **common
        )

    def logits_only(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(image, roi_size=PATCH, sw_batch_size=4, predictor=model)

    cases = [
        ({"predict": logits_only}, r"probabilities in \[0, 1\] \(apply a sigmoid"),
        ({"predict": lambda model, image: predict(model, image)[:, :2]}, r"shaped like the label \(1, 3, 24, 24, 24\)"),
        ({"metric_fn": lambda pred, label: {"dice": 1.0}}, r"monitor 'dice_mean' is not among .*: \['dice'\]"),
    ]
    for index, (override, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            train_segmenter(
                segresnet(),
                train,
                val,
                config=config,
                out_dir=out / f"c{index}",
                checkpoint_meta=seg_meta(),
                **{**common, **override},
            )
    cropped_val = Dataset(nested_cubes(1, 2), transform=Compose([*to_regions(), random_patches()]))
    with pytest.raises(ValueError, match="validation items must be whole volumes"):
        train_segmenter(
            segresnet(), train, cropped_val, config=config, out_dir=out / "v", checkpoint_meta=seg_meta(), **common
        )


def test_extra_loss_reaches_the_segmenter_loop(tmp_path: Path) -> None:
    """train_segmenter passes ``extra_loss`` to the shared loop: once per training batch, added to the loss.

    The Dice loss lies in [0, 1], so a training loss of at least 3 needs the constant 3 added.
    """
    calls: list[tuple[int, ...]] = []

    def constant(batch) -> torch.Tensor:
        calls.append(tuple(batch["image"].shape))
        return torch.tensor(3.0)

    config = TrainConfig(epochs=1, batch_size=2, lr=1e-2, seed=0, monitor="dice_mean")
    result = train_segmenter(
        segresnet(), train_set(2), val_set(1), config=config, out_dir=tmp_path, predict=predict,
        metric_fn=region_dice, checkpoint_meta=seg_meta(), quiet=True, extra_loss=constant,
    )  # fmt: skip
    assert calls == [(4, 1, PATCH, PATCH, PATCH)]  # 2 items x 2 patches, one batch
    assert 3.0 <= result.history[0]["train_loss"] <= 4.0
