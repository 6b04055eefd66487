"""The fully supervised localizer baseline: shapes, determinism, localization quality, files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from saliency_toy import lesion_data
from sklearn.metrics import average_precision_score

from medimg.models import CheckpointError
from saliency.localizer import (
    LOCALIZER_FORMAT,
    Localizer,
    LocalizerConfig,
    build_localizer,
    load_localizer,
    localizer_maps,
    save_localizer,
    train_localizer,
)

TINY = (4, 4, 8, 8, 16, 4)
# The toy problem is small (51 training images, 7 steps an epoch): a higher rate than the
# default 1e-3 converges in a few epochs.
FAST = LocalizerConfig(epochs=5, lr=1e-2)


@pytest.fixture(scope="module")
def trained() -> Iterator[tuple[Localizer, list[dict[str, float]]]]:
    """A localizer trained on the toy lesions (one torch thread, as the suite's autouse fixture sets)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, _, masks = lesion_data(64, seed=0, size=32)
        yield train_localizer(images, masks, FAST)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("spatial_dims", "in_channels", "shape"),
    [(2, 1, (32, 32)), (2, 3, (20, 37)), (3, 2, (16, 16, 32)), (3, 1, (17, 33, 16))],
)
def test_shapes(spatial_dims: int, in_channels: int, shape: tuple[int, ...]) -> None:
    model = build_localizer(spatial_dims, in_channels, TINY, seed=0)
    images = torch.randn(3, in_channels, *shape)
    assert model(images).shape == (3, 1, *shape)
    model.train()
    maps = localizer_maps(model, images, batch_size=2)
    assert model.training  # the mode is restored
    assert maps.shape == (3, *shape) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_trains_in_3d() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(0, 0.3, (4, 1, 16, 16, 32)).astype(np.float32)
    masks = np.zeros((4, 16, 16, 32), dtype=bool)
    masks[::2, 4:10, 5:11, 6:12] = True
    images[masks[:, None]] += 1.5
    model, history = train_localizer(
        images, masks, LocalizerConfig(features=TINY, epochs=2, batch_size=2), val_fraction=0.5
    )
    assert not model.training and model.spatial_dims == 3
    assert [row["epoch"] for row in history] == [1, 2]
    assert {"train_loss", "val_loss", "val_dice", "lr", "seconds"} <= set(history[-1])
    assert model.record is not None and model.record["train_items"] == 2 and model.record["val_items"] == 2
    assert localizer_maps(model, images).shape == (4, 16, 16, 32)


def test_deterministic_given_the_seed() -> None:
    images, _, masks = lesion_data(12, seed=1, size=32)
    config = LocalizerConfig(features=TINY, epochs=2, batch_size=4, lr=1e-2)
    rng_before = torch.get_rng_state()
    first, history_a = train_localizer(images, masks, config)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    again, history_b = train_localizer(images, masks, config)
    other, _ = train_localizer(images, masks, LocalizerConfig(features=TINY, epochs=2, batch_size=4, lr=1e-2, seed=1))
    state_a, state_b, state_c = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    assert [row["train_loss"] for row in history_a] == [row["train_loss"] for row in history_b]
    assert not all(torch.equal(state_a[key], state_c[key]) for key in state_a)


def test_localizes_held_out_lesions(trained: tuple[Localizer, list[dict[str, float]]]) -> None:
    model, history = trained
    assert len(history) == FAST.epochs and history[-1]["val_dice"] > 0.9
    images, labels, masks = lesion_data(16, seed=5, size=32)
    maps = localizer_maps(model, images)
    positives = np.flatnonzero(labels)
    ap = [average_precision_score(masks[i].ravel(), maps[i].ravel()) for i in positives]
    constant = [average_precision_score(masks[i].ravel(), np.full(masks[i].size, 0.5)) for i in positives]
    assert np.mean(ap) > 0.8
    assert np.mean(ap) > np.mean(constant) + 0.5
    assert maps[labels == 0].max(axis=(1, 2)).mean() < 0.5  # negatives stay mostly dark


def test_save_load_round_trip(trained: tuple[Localizer, list[dict[str, float]]], tmp_path: Path) -> None:
    model, _ = trained
    path = save_localizer(tmp_path / "sub" / "localizer.pt", model, {"trained_on": "toy seed 0"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["localizer.pt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == LOCALIZER_FORMAT and raw["version"] == 1
    loaded, meta = load_localizer(path)
    assert not loaded.training
    assert (meta["spatial_dims"], meta["in_channels"], meta["features"]) == (2, 1, list(FAST.features))
    assert meta["config"] == FAST.to_dict() and meta["user"] == {"trained_on": "toy seed 0"}
    assert meta["training"]["train_items"] == 52 and loaded.record == meta["training"]
    images, _, _ = lesion_data(4, seed=7, size=32)
    np.testing.assert_array_equal(localizer_maps(loaded, images), localizer_maps(model, images))


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    newer = tmp_path / "newer.pt"
    torch.save({"format": LOCALIZER_FORMAT, "version": 99, "state_dict": {}, "meta": {}}, newer)
    mismatched = tmp_path / "mismatched.pt"
    save_localizer(mismatched, build_localizer(2, 1, TINY, seed=0))
    payload = torch.load(mismatched, weights_only=True)
    payload["meta"]["in_channels"] = 3
    torch.save(payload, mismatched)
    for path, words in [
        (missing, "does not exist"),
        (corrupt, "could not be read"),
        (foreign, "not a medimg localizer"),
        (newer, "version 99"),
        (mismatched, "do not fit"),
    ]:
        with pytest.raises(CheckpointError, match=words) as info:
            load_localizer(path)
        assert str(path) in str(info.value)
    with pytest.raises(TypeError, match="Localizer"):
        save_localizer(tmp_path / "x.pt", torch.nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]


def test_rejects_bad_inputs() -> None:
    images, _, masks = lesion_data(4, seed=0, size=32)
    config = LocalizerConfig(features=TINY, epochs=1)
    with pytest.raises(ValueError, match="on the image grid"):
        train_localizer(images, masks[:, :8], config)
    with pytest.raises(ValueError, match="every mask is empty"):
        train_localizer(images, np.zeros_like(masks), config)
    with pytest.raises(ValueError, match="unknown loss"):
        train_localizer(images, masks, LocalizerConfig(features=TINY, loss="focal"))
    with pytest.raises(ValueError, match="too small"):
        train_localizer(images[:, :, :16, :16], masks[:, :16, :16], config)
    with pytest.raises(ValueError, match="at least 16"):
        localizer_maps(build_localizer(2, 1, TINY), torch.zeros(1, 1, 8, 16))


def test_bce_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    images, _, masks = lesion_data(6, seed=2, size=32)
    _, history = train_localizer(
        images, masks.astype(np.uint8), LocalizerConfig(features=TINY, epochs=1, loss="bce"), progress=True
    )
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    assert "epoch 1/1" in capsys.readouterr().err
