"""A dense, fully supervised lesion localizer: the reference a saliency map has to beat.

What it is for. Arun et al. (2020; docs/methods/saliency-protocol.md) compares the
saliency maps of a classifier with the output of a network trained *directly* on the boxes or
masks: RetinaNet on RSNA pneumonia and a U-Net on SIIM pneumothorax. It serves two criteria:

* **Localization utility** (criterion 1): the localizer's per-image AUPRC / average precision is
  the "strong pass" bar; no saliency method in Arun et al. reaches it.
* **Repeatability** (criterion 3): the SSIM between the maps of *two localizers trained with
  different seeds* is the bar for the SSIM between two classifier replicates.

Ours is a MONAI :class:`~monai.networks.nets.BasicUNet` with one output channel (a logit per
pixel or voxel), 2-D or 3-D, trained on the same masks the audit scores against, but on the
**training** images only, never on the images being audited (otherwise the bar is a memorized
answer, not a localizer). Its maps are ``sigmoid(logit)`` in [0, 1].

Settings (:class:`LocalizerConfig`, recorded in every saved localizer):

* features ``(16, 16, 32, 64, 128, 16)``: a compact BasicUNet (MONAI's default is
  ``(32, 32, 64, 128, 256, 32)``) that trains in seconds on a CPU on 32-pixel images; four
  poolings, so every spatial size must be at least 16 and, for its instance norm, the
  bottleneck (every size halved four times) must hold at least two elements: 32 x 32, 16 x 32
  or 16 x 16 x 32 are the smallest images;
* 30 epochs of AdamW (lr 1e-3, weight decay 1e-4, cosine-annealed to 0), batch size 8;
* loss ``"dicece"``: MONAI ``DiceCELoss(sigmoid=True, batch=True)`` (soft Dice over the whole
  batch plus binary cross-entropy); the batch-wise Dice keeps images without any lesion
  (negatives, empty masks) meaningful, where a per-image Dice of an empty mask is degenerate.
  ``"bce"`` is plain ``BCEWithLogitsLoss``;
* augmentation: a random flip along every spatial axis with probability 0.5, the same for the
  image and its mask;
* ``val_fraction`` of the images (0.2; positives and negatives split separately) held out, and
  the mean per-image Dice of the 0.5-thresholded map reported per epoch (an image whose mask and
  prediction are both empty counts as Dice 1). The model of the *last* epoch is returned.

Determinism: everything random (the initial weights, the validation split, the order of the
batches, the flips) comes from ``config.seed`` through private generators, and the global torch
RNG is left as it was; the same seed on the same machine gives identical weights on the CPU (on
CUDA only with ``torch.use_deterministic_algorithms(True)``, which is the caller's choice).

Maps are probabilities, not min-max normalized as Arun et al. did with its RetinaNet output: AP and
AUPRC depend only on the ranking, and SSIM between two localizers is computed with data range 1.

Measured (one CPU thread, 64 toy images of 32 x 32, 51 trained on): the defaults take about 10 s
and reach per-image AP 1.0 on held-out positives; with so few steps per epoch, ``lr=1e-2`` and 5
epochs get there in under 2 s.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.networks.nets import BasicUNet
from torch import nn

from medimg import __version__ as medimg_version
from medimg.models import CheckpointError, load_error_detail, load_medimg_file
from medimg.training import EpochSteps, progress_session, run_epochs
from medimg.writers import atomic_path

__all__ = [
    "DEFAULT_FEATURES",
    "LOCALIZER_FORMAT",
    "LOCALIZER_VERSION",
    "LOSSES",
    "Localizer",
    "LocalizerConfig",
    "build_localizer",
    "load_localizer",
    "localizer_maps",
    "save_localizer",
    "train_localizer",
]

LOCALIZER_FORMAT = "medimg-localizer"
LOCALIZER_VERSION = 1
LOSSES: tuple[str, ...] = ("dicece", "bce")
DEFAULT_FEATURES: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)
MIN_SIZE = 16  # BasicUNet pools four times (and the bottleneck needs two elements)
_META_KEYS = ("spatial_dims", "in_channels", "features")


@dataclass(frozen=True)
class LocalizerConfig:
    """Settings of :func:`train_localizer`.

    Attributes:
        features: the six BasicUNet feature counts (four encoder levels, bottleneck, last decoder).
        epochs: passes over the training images.
        batch_size: images per optimization step.
        lr: peak learning rate of AdamW (cosine-annealed to 0 over ``epochs``).
        weight_decay: AdamW's decoupled weight decay.
        seed: seed of the initial weights, the validation split, the batch order and the flips.
        loss: ``"dicece"`` (MONAI ``DiceCELoss(sigmoid=True, batch=True)``) or ``"bce"``.
        flips: random flips along every spatial axis (probability 0.5 each) during training.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    features: tuple[int, ...] = DEFAULT_FEATURES
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    loss: str = "dicece"
    flips: bool = True
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (features as a list), for metadata."""
        values = asdict(self)
        values["features"] = [int(f) for f in self.features]
        return values


class Localizer(BasicUNet):
    """A MONAI ``BasicUNet`` with one output channel that remembers how it was built and trained.

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        features: the six feature counts.
        record: what :func:`train_localizer` did (config, item counts, final metrics, seconds);
            None for an untrained localizer. Saved in the metadata by :func:`save_localizer`.
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int] = DEFAULT_FEATURES) -> None:
        features = tuple(int(f) for f in features)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, not {in_channels!r}")
        if len(features) != 6 or min(features) < 1:
            raise ValueError(f"features must be six positive channel counts, not {features!r}")
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, features=features)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.features = features
        self.record: dict[str, Any] | None = None


def build_localizer(
    spatial_dims: int, in_channels: int, features: Sequence[int] = DEFAULT_FEATURES, *, seed: int | None = None
) -> Localizer:
    """A fresh localizer: BasicUNet, ``(B, in_channels, *s)`` -> logits ``(B, 1, *s)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        features: the six BasicUNet feature counts.
        seed: when given, the initial weights are drawn from this seed without touching the global
            torch RNG; None draws them from the global RNG.

    Returns:
        The :class:`Localizer` (a ``BasicUNet``) in training mode, on the CPU.

    Raises:
        ValueError: spatial_dims not 2 or 3, in_channels < 1, or not six positive features.
    """
    if seed is None:
        return Localizer(spatial_dims, in_channels, features)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Localizer(spatial_dims, in_channels, features)


# --------------------------------------------------------------------------- training


def _as_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(N, C, *s)`` float32 tensor (a plain tensor, not a MetaTensor), checked."""
    tensor = torch.as_tensor(images)
    if hasattr(tensor, "as_tensor"):  # MONAI MetaTensor
        tensor = tensor.as_tensor()
    if tensor.ndim not in (4, 5):
        raise ValueError(f"images must be (N, C, H, W) or (N, C, D, H, W), not of shape {tuple(tensor.shape)}")
    if min(tensor.shape[2:]) < MIN_SIZE or math.prod(_bottleneck(tensor.shape[2:])) < 2:
        raise ValueError(
            f"images of shape {tuple(tensor.shape)} are too small for the localizer: every spatial size must be at "
            f"least {MIN_SIZE} (the BasicUNet pools four times) and its instance norm needs more than one element "
            "at the bottleneck (each size halved four times), e.g. 32 x 32, 16 x 32 or 16 x 16 x 32"
        )
    return tensor.float()


def _bottleneck(shape: Sequence[int]) -> tuple[int, ...]:
    """Spatial shape after the BasicUNet's four 2x max-poolings."""
    return tuple(int(size) // 16 for size in shape)


def _split(masks: torch.Tensor, val_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation indices; positives and negatives are split separately (stratified).

    Each group keeps at least one image for training, so a positive is always trained on.
    """
    positive = masks.flatten(1).any(dim=1)
    train_parts, val_parts = [], []
    for group in (torch.nonzero(positive).flatten(), torch.nonzero(~positive).flatten()):
        order = group[torch.randperm(len(group), generator=generator)]
        n_val = min(int(round(len(group) * val_fraction)), max(len(group) - 1, 0))  # keep one for training
        val_parts.append(order[:n_val])
        train_parts.append(order[n_val:])
    train_index, val_index = torch.cat(train_parts), torch.cat(val_parts)
    return torch.sort(train_index).values, torch.sort(val_index).values


def _random_flips(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each item along each spatial axis with probability 0.5, image and mask alike.

    Written by hand rather than with MONAI ``RandFlipd``: it works on a whole batch at once and
    draws from one explicit generator, which keeps the run a function of the seed alone.
    """
    for axis in range(2, images.ndim):
        flip = torch.rand(images.shape[0], generator=generator) < 0.5
        if flip.any():
            shape = (-1,) + (1,) * (images.ndim - 1)
            where = flip.to(images.device).view(shape)
            images = torch.where(where, images.flip(axis), images)
            masks = torch.where(where, masks.flip(axis), masks)
    return images, masks


def _criterion(loss: str) -> nn.Module:
    if loss == "dicece":
        return DiceCELoss(sigmoid=True, batch=True)
    return nn.BCEWithLogitsLoss()


def _check_data(
    images: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray, config: LocalizerConfig, val_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, C, *s) float32, masks (N, *s) bool)`` on the CPU, after checking them and the settings."""
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    if config.epochs < 1 or config.batch_size < 1 or not config.lr > 0:
        raise ValueError(f"epochs, batch_size and lr must be positive: {config}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction!r}")
    x = _as_images(images).cpu()  # batches are gathered on the CPU and moved to config.device
    y = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).cpu()
    if y.ndim == x.ndim and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"masks must be (N, *spatial) on the image grid: got masks {tuple(y.shape)} for images {tuple(x.shape)}"
        )
    if y.dtype != torch.bool:
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("masks must be boolean or 0/1")
        y = y != 0
    if not bool(y.any()):
        raise ValueError("no image has a lesion (every mask is empty): nothing to localize")
    return x, y


class _ShuffledBatches:
    """One epoch of ``(images, masks)`` batches: the training images in a new order, randomly flipped.

    The order and the flips are drawn from ``generator`` as the batches are taken, so a run's
    draws depend on the seed alone.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        index: torch.Tensor,
        config: LocalizerConfig,
        generator: torch.Generator,
    ) -> None:
        self.images, self.targets, self.index, self.generator = images, targets, index, generator
        self.batch_size, self.flips = config.batch_size, config.flips

    def __len__(self) -> int:
        return math.ceil(len(self.index) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.index[torch.randperm(len(self.index), generator=self.generator)]
        for step in range(len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            batch_x, batch_y = self.images[index], self.targets[index]
            if self.flips:
                batch_x, batch_y = _random_flips(batch_x, batch_y, self.generator)
            yield batch_x, batch_y


class _LocalizerEpochs(EpochSteps):
    """What each epoch of :func:`train_localizer` does beside the optimization steps of the shared loop."""

    def __init__(
        self,
        model: Localizer,
        batches: _ShuffledBatches,
        val: tuple[torch.Tensor, torch.Tensor],
        config: LocalizerConfig,
    ) -> None:
        self.model, self.shuffled, self.val, self.config = model, batches, val, config
        self.criterion, self.device = _criterion(config.loss), torch.device(config.device)
        self.history: list[dict[str, float]] = []

    def batches(self, epoch: int) -> _ShuffledBatches:
        return self.shuffled

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        batch_x, batch_y = batch
        return self.criterion(self.model(batch_x.to(self.device)), batch_y.to(self.device)), len(batch_x)

    def validate(self, epoch: int) -> dict[str, float]:
        if not len(self.val[0]):
            return {}
        return _validate(self.model, *self.val, self.criterion, self.config.batch_size)

    def record(self, row: dict[str, float]) -> str:
        self.history.append(row)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds"))
        return f"epoch {row['epoch']}/{self.config.epochs}  {shown}  {row['seconds']:.1f}s"


def train_localizer(
    images: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    config: LocalizerConfig | None = None,
    *,
    val_fraction: float = 0.2,
    progress: bool = False,
) -> tuple[Localizer, list[dict[str, float]]]:
    """Train a localizer on images and their lesion masks (boxes rasterised as masks).

    Runs the shared epoch loop :func:`medimg.training.run_epochs` (one AdamW step per batch, the
    progress bar, one history row per epoch) with this module's batches, loss and validation.

    Args:
        images: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` float; every spatial size at least 16 and
            at least two elements at the bottleneck (e.g. 32 x 32).
        masks: ``(N, H, W)`` / ``(N, D, H, W)`` bool or 0/1 (a leading channel of 1 is accepted);
            all-empty masks (negatives) are allowed.
        config: settings; None for :class:`LocalizerConfig` defaults.
        val_fraction: fraction of the positives and of the negatives held out for validation
            (0 for none).
        progress: show a rich progress bar (on stderr) and one line per epoch.

    Returns:
        ``(model, history)``: the :class:`Localizer` of the last epoch, in eval mode on
        ``config.device``, with ``model.record`` filled; one dict per epoch with ``epoch``,
        ``train_loss``, ``lr`` (the epoch's), ``seconds`` and, when there is a validation set,
        ``val_loss`` and ``val_dice`` (mean per-image Dice at threshold 0.5).

    Raises:
        ValueError: shapes that do not fit, masks with values other than 0/1, no positive mask at
            all, a bad val_fraction, an unknown loss or non-positive epochs / batch size / lr.
        FloatingPointError: the training loss became NaN or infinite.
    """
    config = config or LocalizerConfig()
    x, y = _check_data(images, masks, config, val_fraction)
    generator = torch.Generator().manual_seed(config.seed)
    train_index, val_index = _split(y, val_fraction, generator)
    model = build_localizer(x.ndim - 2, x.shape[1], config.features, seed=config.seed).to(config.device)
    # CosineAnnealingLR, not medimg.training.schedule's LambdaLR: the two differ in the last bits.
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    targets = y[:, None].float()
    batches = _ShuffledBatches(x, targets, train_index, config, generator)
    steps = _LocalizerEpochs(model, batches, (x[val_index], targets[val_index]), config)
    started = time.perf_counter()
    with progress_session(progress) as bar:
        run_epochs(
            model, optimizer, scheduler, steps, epochs=range(1, config.epochs + 1), total=config.epochs, progress=bar
        )
    model.eval()
    model.record = {
        "config": config.to_dict(),
        "val_fraction": float(val_fraction),
        "train_items": len(train_index),
        "train_positives": int(y[train_index].flatten(1).any(dim=1).sum()),
        "val_items": len(val_index),
        "val_positives": int(y[val_index].flatten(1).any(dim=1).sum()) if len(val_index) else 0,
        "epochs": config.epochs,
        "final": dict(steps.history[-1]),
        "seconds": round(time.perf_counter() - started, 3),
        "versions": {"medimg": medimg_version, "torch": str(torch.__version__), "monai": _monai_version()},
    }
    return model, steps.history


def _validate(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module, batch_size: int
) -> dict[str, float]:
    """``val_loss`` (the training loss over the whole set) and ``val_dice`` (mean per-image Dice at 0.5)."""
    device = next(model.parameters()).device
    model.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits.append(model(images[start : start + batch_size].to(device)).float().cpu())
        all_logits = torch.cat(logits)
        val_loss = float(criterion(all_logits, targets))
        prediction = (all_logits > 0).float()
        # ignore_empty=False: an empty mask scores 1 when nothing is predicted, 0 otherwise.
        dice = compute_dice(prediction, targets, include_background=True, ignore_empty=False)
    return {"val_loss": val_loss, "val_dice": float(dice.nanmean())}


def _monai_version() -> str:
    import monai

    return str(monai.__version__)


# --------------------------------------------------------------------------- inference


def localizer_maps(model: nn.Module, images: torch.Tensor | np.ndarray, *, batch_size: int = 8) -> np.ndarray:
    """The localizer's lesion probability per pixel or voxel.

    Args:
        model: a localizer (``(B, C, *s)`` -> logits ``(B, 1, *s)``), on any device; its
            training/eval mode is restored afterwards.
        images: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` float; every spatial size at least 16 and
            at least two elements at the bottleneck (e.g. 32 x 32).
        batch_size: images per forward pass.

    Returns:
        ``(N, *s)`` float32 maps, ``sigmoid(logit)`` in [0, 1].

    Raises:
        ValueError: images of the wrong rank or too small, batch_size < 1, or a model that does
            not return one channel on the image grid.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size!r}")
    x = _as_images(images)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    maps = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                logits = model(x[start : start + batch_size].to(device))
                if logits.shape[1] != 1 or logits.shape[2:] != x.shape[2:]:
                    raise ValueError(
                        f"the localizer returned shape {tuple(logits.shape)} for a batch of shape "
                        f"{tuple(x[start : start + batch_size].shape)}; it must be (B, 1, *spatial)"
                    )
                maps.append(torch.sigmoid(logits[:, 0].float()).cpu().numpy())
    finally:
        model.train(was_training)
    if not maps:
        return np.zeros((0, *x.shape[2:]), dtype=np.float32)
    return np.concatenate(maps).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- files


def save_localizer(path: str | os.PathLike[str], model: Localizer, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a localizer to ``path`` atomically (a temporary file renamed when complete).

    The file is a ``torch.save`` of ``{"format": "medimg-localizer", "version": 1, "state_dict",
    "meta"}``, readable with ``torch.load(weights_only=True)``. ``meta`` holds ``spatial_dims``,
    ``in_channels``, ``features``, ``config`` and ``training`` (from ``model.record``; None when
    untrained) and the versions that wrote it, then the caller's ``meta`` (plain values only:
    str, int, float, bool, None, lists, dicts) under ``"user"``.

    Args:
        path: destination file (its folder is created).
        model: a :class:`Localizer` (from :func:`build_localizer`, :func:`train_localizer` or
            :func:`load_localizer`).
        meta: extra metadata, e.g. which images it was trained on.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        TypeError: ``model`` is not a :class:`Localizer`.
    """
    if not isinstance(model, Localizer):
        raise TypeError(
            f"save_localizer needs a Localizer (from build_localizer or train_localizer), not {type(model)}"
        )
    record = model.record or {}
    payload = {
        "format": LOCALIZER_FORMAT,
        "version": LOCALIZER_VERSION,
        "state_dict": {key: value.detach().cpu().clone() for key, value in model.state_dict().items()},
        "meta": {
            "spatial_dims": model.spatial_dims,
            "in_channels": model.in_channels,
            "features": list(model.features),
            "config": record.get("config"),
            "training": model.record,
            "versions": {"medimg": medimg_version, "torch": str(torch.__version__), "monai": _monai_version()},
            "user": dict(meta or {}),
        },
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_localizer(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[Localizer, dict[str, Any]]:
    """Read a localizer written by :func:`save_localizer`.

    Args:
        path: the file.
        map_location: device for the weights (and the model).

    Returns:
        ``(model, meta)``: the :class:`Localizer` in eval mode with ``record`` restored, and the
        file's metadata.

    Raises:
        CheckpointError: (a ``ValueError``) the file is missing, unreadable or corrupt, not a
            medimg localizer, of a newer format version, or its weights do not fit its metadata;
            the message names the file.
    """
    path = Path(path)
    payload = load_medimg_file(
        path, kind="localizer", file_format=LOCALIZER_FORMAT, max_version=LOCALIZER_VERSION, map_location=map_location
    )
    meta, state = payload.get("meta"), payload.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict) or any(key not in meta for key in _META_KEYS):
        raise CheckpointError(f"localizer {path} lacks its state_dict or the meta keys {', '.join(_META_KEYS)}")
    try:
        model = Localizer(int(meta["spatial_dims"]), int(meta["in_channels"]), meta["features"])
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"localizer {path} weights do not fit its metadata: {load_error_detail(exc)}") from exc
    model.record = meta.get("training")
    return model.to(map_location).eval(), meta
