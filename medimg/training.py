"""One supervised training loop, for classifiers and segmenters: seeded, resumable, DistributedDataParallel-ready.

:func:`train_classifier` trains any classification network (``(B, C, *spatial)`` ->
``(B, K)`` logits) on datasets of ``{"image": tensor, "label": int}`` dicts (what MONAI dict
datasets with dict transforms give) or ``(image, label)`` tuples. :func:`train_segmenter` trains
any segmentation network (``(B, C, *patch)`` -> ``(B, R, *patch)`` logits, one sigmoid channel
per region, e.g. BraTS TC/WT/ET) on random patches and validates on whole volumes through the
caller's ``predict`` (typically sliding-window inference). Both run the same loop (the task only
decides how a batch becomes a loss and how validation becomes metrics) and write to ``out_dir``:

* ``metrics.csv``: one row per epoch (``epoch, train_loss, val_loss, <metrics>, lr, seconds``),
  rewritten atomically after every epoch;
* ``last.pt``: a medimg checkpoint (:func:`medimg.models.save_checkpoint`) plus optimizer,
  scheduler, epoch, best value, history, configuration and RNG states, so a rerun resumes with
  the next epoch; everything loads with ``torch.load(weights_only=True)``;
* ``best.pt``: the checkpoint of the epoch with the highest monitored metric;
* ``learning_curve.png``: train/val loss and the monitored metric per epoch.

Determinism: the order of the training data and the seeds of every RNG (Python, NumPy, torch,
MONAI random transforms such as random crops through the DataLoader generator, worker seeds) are
derived from ``(seed, epoch, rank)`` at the start of each epoch, so epoch ``e`` computes the same
thing whether the run started at epoch 1 or resumed at ``e``. Learning rate: AdamW with a cosine
schedule over ``config.epochs`` (epoch ``e`` of ``E``, 1-based, uses
``lr * (1 + cos(pi * (e - 1) / E)) / 2``); a resumed run with a different ``epochs`` continues on
the schedule stretched to the new total.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the default process group is initialised
(gloo on CPU, nccl on CUDA) unless the caller did so already, the model is wrapped in
``DistributedDataParallel``, the training data is sharded by ``DistributedSampler(seed=seed)``,
batch-norm statistics are taken from rank 0 at the end of every epoch, every rank validates on
the whole validation set (so all ranks hold the same metrics and weights) and only rank 0
writes files. ``out_dir`` must be visible to every rank for resuming.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import DataLoader, MetaTensor
from monai.losses import DiceLoss, FocalLoss
from monai.metrics import compute_dice
from torch.utils.data import Dataset, DistributedSampler

from medimg.models import (
    ARCHITECTURES,
    CheckpointError,
    build_network,
    read_checkpoint,
    save_checkpoint,
    unwrap_model,
    validate_meta,
)
from medimg.progress import progress_bar
from medimg.writers import atomic_path, write_csv

__all__ = [
    "LOSSES",
    "SEGMENTATION_LOSSES",
    "check_model_matches_meta",
    "init_distributed",
    "is_distributed",
    "MetricFn",
    "Predictor",
    "rank",
    "segmentation_loss",
    "SegmentationMetricFn",
    "train_classifier",
    "train_segmenter",
    "TrainConfig",
    "TrainResult",
    "world_size",
]

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]
"""Classification metrics: ``(y_true (N,) int64, y_prob (N, K) float64) -> {name: value}``."""
SegmentationMetricFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
"""One volume's metrics: ``(pred (1, R, *spatial) float32 0/1, label (1, R, *spatial) 0/1) -> {name: value}``."""
Predictor = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
"""Whole-volume inference: ``(model, image (1, C, *spatial)) -> probabilities (1, R, *spatial) in [0, 1]``."""
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: tuple[str, ...] = ("ce", "focal")
SEGMENTATION_LOSSES: tuple[str, ...] = ("dice", "dicece")
_RESERVED_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds")
# A resumed run must agree with last.pt on these, or it would silently train something else.
_RESUME_KEYS = ("seed", "batch_size", "lr", "weight_decay", "class_weights", "monitor")


@dataclass
class TrainConfig:
    """Settings of :func:`train_classifier` and :func:`train_segmenter`.

    Attributes:
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: items per step and per rank (a crop transform returning ``n`` patches per
            item makes each step ``batch_size * n`` patches).
        lr: peak learning rate of AdamW (cosine-annealed to 0 over ``epochs``).
        weight_decay: AdamW's decoupled weight decay.
        seed: non-negative seed for data order, augmentation and initialisation-free RNG use.
        num_workers: DataLoader worker processes.
        class_weights: one weight per class for the classification loss, or None (it must be
            None for segmentation).
        monitor: key of ``metric_fn``'s dict that picks ``best.pt``; higher is better.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under torchrun, CUDA uses ``LOCAL_RANK``).
        log_every: refresh the running loss on the progress bar every this many steps.
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_workers: int = 0
    class_weights: list[float] | None = None
    monitor: str = "roc_auc"
    device: str = "cpu"
    log_every: int = 10


@dataclass
class TrainResult:
    """What :func:`train_classifier` or :func:`train_segmenter` did.

    Attributes:
        best_value: highest value of the monitored metric so far (None if never finite).
        best_epoch: the (1-based) epoch that reached it (None if never finite).
        epochs_run: epochs trained by this call (0 when the run was already complete).
        last_epoch: epochs completed in ``out_dir`` in total.
        resumed_from: epoch ``last.pt`` held when this call started (0 for a fresh run).
        best_checkpoint: ``out_dir/best.pt`` (None when no epoch had a finite metric).
        last_checkpoint: ``out_dir/last.pt``.
        metrics_csv: ``out_dir/metrics.csv``.
        learning_curve: ``out_dir/learning_curve.png``.
        history: one dict per completed epoch, the rows of ``metrics.csv``.
    """

    best_value: float | None
    best_epoch: int | None
    epochs_run: int
    last_epoch: int
    resumed_from: int
    best_checkpoint: Path | None
    last_checkpoint: Path
    metrics_csv: Path
    learning_curve: Path
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- distributed set-up


def is_distributed() -> bool:
    """True when launched by torchrun with more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str = "cpu") -> torch.device:
    """Initialise the default process group from torchrun's environment; return this rank's device.

    Backend gloo for CPU, nccl for CUDA (where the device becomes ``cuda:LOCAL_RANK``). Does
    nothing to the process group when not distributed or when it is already initialised.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The ``torch.device`` this process should train on.
    """
    target = torch.device(device)
    if not is_distributed():
        return target
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return target


# --------------------------------------------------------------------------- seeding and RNG state


def _epoch_seed(seed: int, epoch: int, process_rank: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, process_rank]).generate_state(1, dtype=np.uint32)[0])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as weights_only-loadable values (tensors, lists, ints)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np.asarray(np_state["keys"], dtype=np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- pieces of the loop


def _cosine_factor(epochs: int) -> Callable[[int], float]:
    """LambdaLR factor for 0-based scheduler step ``i``: ``(1 + cos(pi * i / epochs)) / 2``.

    A plain function (not a callable object), so LambdaLR does not store it in its state dict
    and a resumed run follows its own ``epochs``.
    """

    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, epochs) / max(epochs, 1)))

    return factor


def _unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float, labels)`` as plain tensors (on the loader's device) from a collated batch."""
    if isinstance(batch, Mapping):
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"dataset items must hold 'image' and 'label'; this batch has keys {sorted(batch)}")
        images, labels = batch["image"], batch["label"]
    elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
    else:
        raise ValueError(
            f"dataset items must be {{'image', 'label'}} dicts or (image, label) tuples, not {type(batch)}"
        )
    if isinstance(images, MetaTensor):
        images = images.as_tensor()
    if isinstance(labels, MetaTensor):
        labels = labels.as_tensor()
    images = torch.as_tensor(images)
    if not torch.is_floating_point(images):
        images = images.float()
    return images, torch.as_tensor(labels)


def classification_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (B, C, *spatial) float, labels (B,) int64)`` on ``device`` from a collated batch."""
    images, labels = _unpack_batch(batch)
    if labels.numel() != images.shape[0]:
        raise ValueError(
            f"labels must be one class index per item: got labels of shape {tuple(labels.shape)} "
            f"for {images.shape[0]} images"
        )
    return images.to(device, non_blocking=True), labels.reshape(-1).long().to(device, non_blocking=True)


def _segmentation_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (B, C, *spatial) float, labels (B, R, *spatial) float 0/1)`` on ``device``."""
    images, labels = _unpack_batch(batch)
    if labels.ndim != images.ndim or labels.shape[0] != images.shape[0] or labels.shape[2:] != images.shape[2:]:
        raise ValueError(
            f"segmentation labels must be (B, R, *spatial) multi-channel masks on the image grid (B, C, *spatial): "
            f"got labels of shape {tuple(labels.shape)} for images of shape {tuple(images.shape)}"
        )
    return images.to(device, non_blocking=True), labels.float().to(device, non_blocking=True)


def _classification_loss(loss: str, class_weights: list[float] | None, device: torch.device) -> Criterion:
    """``criterion(logits (B, K) float, labels (B,) int64) -> scalar``: cross-entropy or focal."""
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32, device=device)
    if loss == "ce":
        return torch.nn.CrossEntropyLoss(weight=weight)
    focal = FocalLoss(to_onehot_y=True, use_softmax=True, weight=weight)
    return lambda logits, labels: focal(logits, labels[:, None])


def segmentation_loss(loss: str, class_weights: list[float] | None, device: torch.device) -> Criterion:
    """``criterion(logits (B, R, *spatial), masks (B, R, *spatial) 0/1) -> scalar``: sigmoid Dice, or Dice + BCE.

    ``"dice"`` is the MONAI BraTS tutorial's loss (MONAI ``DiceLoss`` on sigmoids, squared
    denominators, no numerator smoothing). ``"dicece"`` is that Dice loss plus binary
    cross-entropy per channel (``BCEWithLogitsLoss``), weights 1 and 1. MONAI's ``DiceCELoss`` is
    not used: for R > 1 it applies a softmax cross-entropy across the channels, wrong for
    overlapping regions such as TC inside WT. No numerator smoothing matters for patch training:
    with MONAI's default ``smooth_nr=1e-5`` a patch whose region is empty has the loss
    ``1 - 1e-5 / (sum(p) + 1e-5)``: about 0 when nothing is predicted and 1 otherwise, so the many
    patches without a small region (the enhancing rim) reward never predicting it, and it
    collapses (measured: ET validation Dice 0.00 on the demo data); with ``smooth_nr=0`` an empty
    region costs 1 whatever is predicted. ``class_weights`` and ``device`` are unused.
    """
    dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)
    terms: tuple[Criterion, ...] = (dice,) if loss == "dice" else (dice, torch.nn.BCEWithLogitsLoss())

    def criterion(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if logits.shape != masks.shape:
            raise ValueError(
                f"the network's logits have shape {tuple(logits.shape)} but the labels {tuple(masks.shape)}: "
                "labels need one binary channel per output channel (R = out_channels)"
            )
        return torch.stack([term(logits, masks) for term in terms]).sum()

    return criterion


def _nanmean(values: list[float]) -> float:
    """Mean of the values that are not NaN (NaN when all are)."""
    kept = [value for value in values if not math.isnan(value)]
    return sum(kept) / len(kept) if kept else float("nan")


@dataclass(frozen=True)
class _Task:
    """What the shared loop needs to know about a task.

    Everything else (seeding, sampling, DDP, optimisation, checkpoints, resuming, logging) is the
    same for every task: :func:`train_classifier` and :func:`train_segmenter` differ only in the
    :class:`_Task` they pass to :func:`_train`.

    Attributes:
        kind: ``"classification"`` or ``"segmentation"``; recorded in the checkpoints, and a resumed
            run must be of the same kind.
        losses: the accepted loss names.
        make_criterion: ``(loss, class_weights, device) -> criterion(outputs, targets) -> scalar``.
        split_batch: ``(collated batch, device) -> (inputs, targets)`` on ``device``.
        validate: ``(model in eval mode, validation loader, criterion, device) -> (val_loss,
            metrics)``, called under ``torch.no_grad()``; the metrics are checked by the loop.
        check: ``(model, config, validated meta)``: task-specific checks before training; raises
            ValueError.
        val_batch_size: items per validation batch; None for ``config.batch_size``.
    """

    kind: str
    losses: tuple[str, ...]
    make_criterion: Callable[[str, list[float] | None, torch.device], Criterion]
    split_batch: Callable[[Any, torch.device], tuple[torch.Tensor, torch.Tensor]]
    validate: Callable[[torch.nn.Module, DataLoader, Criterion, torch.device], tuple[float, Mapping[str, Any]]]
    check: Callable[[torch.nn.Module, TrainConfig, Mapping[str, Any]], None]
    val_batch_size: int | None = None


def _classification_task(metric_fn: MetricFn) -> _Task:
    """Logits ``(B, K)``, integer labels, softmax probabilities of the whole validation set to ``metric_fn``."""

    def validate(
        model: torch.nn.Module, loader: DataLoader, criterion: Criterion, device: torch.device
    ) -> tuple[float, Mapping[str, Any]]:
        all_logits, all_labels = [], []
        for batch in loader:
            images, labels = classification_batch(batch, device)
            all_logits.append(model(images).float().cpu())
            all_labels.append(labels.cpu())
        logits, y_true = torch.cat(all_logits), torch.cat(all_labels)
        val_loss = float(criterion(logits.to(device), y_true.to(device)))
        y_prob = torch.softmax(logits.double(), dim=1).numpy()
        return val_loss, metric_fn(y_true.numpy(), y_prob)

    def check(model: torch.nn.Module, config: TrainConfig, meta: Mapping[str, Any]) -> None:
        n_classes = int(meta["network"]["out_channels"])
        if config.class_weights is not None and len(config.class_weights) != n_classes:
            raise ValueError(
                f"class_weights has {len(config.class_weights)} entries for a network with {n_classes} classes"
            )
        check_model_matches_meta(model, meta)

    return _Task(
        kind="classification",
        losses=LOSSES,
        make_criterion=_classification_loss,
        split_batch=classification_batch,
        validate=validate,
        check=check,
    )


def _segmentation_task(predict: Predictor, metric_fn: SegmentationMetricFn) -> _Task:
    """Patch logits ``(B, R, *patch)`` against multi-channel masks; whole volumes through ``predict``."""

    def validate(
        model: torch.nn.Module, loader: DataLoader, criterion: Criterion, device: torch.device
    ) -> tuple[float, Mapping[str, Any]]:
        dice_sum, rows = 0.0, []
        for index, batch in enumerate(loader):
            image, label = _segmentation_batch(batch, device)
            if image.shape[0] != 1:
                raise ValueError(
                    f"validation items must be whole volumes, one per item: validation item {index} gave a batch "
                    f"of {image.shape[0]} (a crop with num_samples > 1 in the validation transforms?)"
                )
            prob = predict(model, image)
            if not isinstance(prob, torch.Tensor) or tuple(prob.shape) != tuple(label.shape):
                shape = tuple(prob.shape) if isinstance(prob, torch.Tensor) else type(prob).__name__
                raise ValueError(
                    f"predict must return probabilities shaped like the label {tuple(label.shape)} (1, R, *spatial); "
                    f"it returned {shape} for validation item {index}, image {tuple(image.shape)}"
                )
            low, high = (float(v) for v in torch.aminmax(prob.float()))
            if not (low >= 0.0 and high <= 1.0):
                raise ValueError(
                    f"predict must return probabilities in [0, 1] (apply a sigmoid to the logits); it returned "
                    f"values in [{low}, {high}] for validation item {index}"
                )
            pred = (prob >= 0.5).float()
            label = label.to(pred.device)
            dice_sum += float(compute_dice(pred, label, include_background=True, ignore_empty=False).mean())
            rows.append(_metric_row(metric_fn(pred, label)))
            if set(rows[-1]) != set(rows[0]):
                raise ValueError(
                    f"metric_fn returned the keys {sorted(rows[-1])} for validation item {index} but {sorted(rows[0])} "
                    "for item 0; it must return the same keys for every volume"
                )
        metrics = {key: _nanmean([row[key] for row in rows]) for key in rows[0]}
        return 1.0 - dice_sum / len(rows), metrics

    def check(model: torch.nn.Module, config: TrainConfig, meta: Mapping[str, Any]) -> None:
        if config.class_weights is not None:
            raise ValueError(
                f"class_weights apply to classification only; train_segmenter got class_weights={config.class_weights}"
            )
        n_regions = int(meta["network"]["out_channels"])
        if len(meta["labels"]) != n_regions:
            raise ValueError(
                f"checkpoint_meta['labels'] names {len(meta['labels'])} regions {meta['labels']} for a network with "
                f"{n_regions} output channels; name one region per channel"
            )
        if meta["architecture"] in ARCHITECTURES:  # others cannot be rebuilt by medimg.models, so not checked
            check_model_matches_meta(model, meta)

    return _Task(
        kind="segmentation",
        losses=SEGMENTATION_LOSSES,
        make_criterion=segmentation_loss,
        split_batch=_segmentation_batch,
        validate=validate,
        check=check,
        val_batch_size=1,
    )


def check_model_matches_meta(model: torch.nn.Module, meta: Mapping[str, Any]) -> None:
    """Fail before training when ``meta`` would rebuild a network the weights do not fit."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        try:
            reference = build_network(meta["architecture"], **meta["network"]).state_dict()
        except TypeError as exc:  # keyword arguments the architecture's constructor does not take
            raise ValueError(
                f"checkpoint_meta describes a {meta['architecture']!r} network {dict(meta['network'])} that "
                f"medimg.models.build_network cannot build: {exc}"
            ) from exc
    mine = unwrap_model(model).state_dict()
    missing = sorted(set(reference) - set(mine))
    unexpected = sorted(set(mine) - set(reference))
    wrong = [k for k in reference.keys() & mine.keys() if tuple(reference[k].shape) != tuple(mine[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint_meta describes a {meta['architecture']!r} network {dict(meta['network'])} that the model "
            f"being trained does not match (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"shape differs {sorted(wrong)[:3]})"
        )


def _plot_learning_curve(path: Path, history: list[dict[str, float]], monitor: str) -> None:
    """Loss (train/val) and the monitored metric per epoch, as a PNG, atomically."""
    from matplotlib.figure import Figure  # object API: no pyplot state, no global backend switch

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9.0, 3.4))
    loss_ax, metric_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    loss_ax.plot(epochs, [row["val_loss"] for row in history], "s-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_ax.legend()
    values = [row.get(monitor, float("nan")) for row in history]
    metric_ax.plot(epochs, values, "o-", color="tab:green")
    finite = [(e, v) for e, v in zip(epochs, values, strict=True) if math.isfinite(v)]
    if finite:
        best_epoch, best_value = max(finite, key=lambda ev: ev[1])
        metric_ax.plot([best_epoch], [best_value], "*", color="tab:red", markersize=12, label=f"best {best_value:.4g}")
        metric_ax.legend()
    metric_ax.set(xlabel="epoch", ylabel=monitor, title=f"validation {monitor}")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=96)


def _metric_row(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``metric_fn``'s dict as ``{name: float}``; ValueError for anything else or a reserved name."""
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metric_fn must return a dict of floats, not {type(metrics).__name__}")
    row = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or key in _RESERVED_COLUMNS:
            raise ValueError(f"metric_fn returned the key {key!r}; it must be a string other than {_RESERVED_COLUMNS}")
        try:
            row[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metric_fn returned {key}={value!r}, which is not a number") from exc
    return row


def _check_monitor(row: Mapping[str, float], monitor: str) -> None:
    if monitor not in row:
        raise ValueError(f"monitor {monitor!r} is not among the metrics returned by metric_fn: {sorted(row)}")


def _columns(history: list[dict[str, float]]) -> list[str]:
    metric_keys: list[str] = []
    for row in history:
        metric_keys += [k for k in row if k not in _RESERVED_COLUMNS and k not in metric_keys]
    return ["epoch", "train_loss", "val_loss", *metric_keys, "lr", "seconds"]


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    """The configuration as plain JSON types (so a tuple of class weights equals the same list)."""
    return json.loads(json.dumps(asdict(config)))


def _check_config(config: TrainConfig, loss: str, losses: tuple[str, ...]) -> None:
    """Task-independent settings; the task checks its own (class weights, labels) afterwards."""
    if loss not in losses:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(losses)}")
    if config.epochs < 0 or config.batch_size < 1 or config.num_workers < 0 or config.log_every < 1:
        raise ValueError(f"epochs >= 0, batch_size >= 1, num_workers >= 0 and log_every >= 1 are required: {config}")
    if config.seed < 0:
        raise ValueError(f"seed must be non-negative, not {config.seed}")


# --------------------------------------------------------------------------- the loop


def train_classifier(
    model: torch.nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    metric_fn: MetricFn,
    checkpoint_meta: Mapping[str, Any],
    loss: str = "ce",
    resume: bool = True,
    quiet: bool = False,
) -> TrainResult:
    """Train a classifier with AdamW and a cosine schedule; checkpoint, log and resume in ``out_dir``.

    Args:
        model: network mapping float32 ``(B, C, *spatial)`` to ``(B, K)`` logits; trained in place
            (it holds the last epoch's weights afterwards) and moved to ``config.device``. A model
            with a method ``auxiliary_loss(batch) -> scalar`` (e.g. an attention gate's regulariser
            and box supervision) has it added to the loss of every training batch (called after
            the forward pass, with the collated batch).
        train_data: items ``{"image": (C, H, W[, D]) tensor, "label": int}`` or ``(image, label)``.
        val_data: the same kind of items; evaluated in full after every epoch.
        config: see :class:`TrainConfig`.
        out_dir: folder for ``metrics.csv``, ``last.pt``, ``best.pt``, ``learning_curve.png``.
        metric_fn: ``metric_fn(y_true (N,) int64, y_prob (N, K) float64 softmax) -> {name: float}``;
            it must return ``config.monitor``.
        checkpoint_meta: checkpoint metadata (:func:`medimg.models.validate_meta`); it must
            describe ``model`` (architecture and network kwargs). Each checkpoint's
            ``meta["training"]`` extends it with the configuration, ``task``, ``epoch``,
            ``monitor``, ``value`` and the epoch's metrics.
        loss: ``"ce"`` (cross-entropy) or ``"focal"`` (MONAI FocalLoss on softmax), both weighted by
            ``config.class_weights``.
        resume: continue from ``out_dir/last.pt`` when it exists (a completed run returns at once).
        quiet: no progress bar and no per-epoch lines (on stderr).

    The global Python, NumPy and torch RNGs are re-seeded from ``(config.seed, epoch, rank)`` at
    the start of every epoch. Datasets must be map-style (``len`` and indexing).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: bad configuration, metadata that does not describe ``model``, bad data items,
            a metric_fn without ``config.monitor``, or a ``last.pt`` made with other settings.
        CheckpointError: ``last.pt`` is unreadable or does not fit ``model``.
        FloatingPointError: the training loss became NaN or infinite.
    """
    return _run(
        _classification_task(metric_fn),
        model,
        train_data,
        val_data,
        config=config,
        out_dir=out_dir,
        checkpoint_meta=checkpoint_meta,
        loss=loss,
        resume=resume,
        quiet=quiet,
    )


def train_segmenter(
    model: torch.nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    predict: Predictor,
    metric_fn: SegmentationMetricFn,
    checkpoint_meta: Mapping[str, Any],
    loss: str = "dice",
    resume: bool = True,
    quiet: bool = False,
) -> TrainResult:
    """Train a segmenter on random patches, validate on whole volumes; checkpoint, log and resume in ``out_dir``.

    The same loop as :func:`train_classifier` (seeding, sharding, DistributedDataParallel,
    AdamW with a cosine schedule, checkpoints, resuming, ``metrics.csv``, learning curve); only
    the loss and the validation differ.

    Args:
        model: network mapping float32 ``(B, C, *patch)`` to ``(B, R, *patch)`` logits, one sigmoid
            channel per region (e.g. MONAI ``SegResNet``); trained in place and moved to
            ``config.device``.
        train_data: items ``{"image": (C, *patch) float, "label": (R, *patch) 0/1}`` (or
            ``(image, label)`` tuples), e.g. BraTS volumes through
            ``ConvertToMultiChannelBasedOnBratsClassesd`` (TC, WT, ET) and a random crop
            (``RandSpatialCropd``, ``RandCropByPosNegLabeld``, ...). A crop returning a list of
            patches per item (``num_samples`` > 1) is flattened into the batch by MONAI's
            ``list_data_collate``; all patches of a batch must have one size.
        val_data: whole volumes ``{"image": (C, *spatial), "label": (R, *spatial)}``, validated one
            at a time after every epoch.
        config: see :class:`TrainConfig`; ``class_weights`` must be None and ``monitor`` a key
            of ``metric_fn``'s dict (e.g. ``"dice_mean"``).
        out_dir: folder for ``metrics.csv``, ``last.pt``, ``best.pt``, ``learning_curve.png``.
        predict: ``predict(model, image (1, C, *spatial)) -> (1, R, *spatial)`` probabilities in
            [0, 1], called in eval mode under ``torch.no_grad()`` with the image on the training
            device, e.g. ``sliding_window_inference`` followed by a sigmoid.
        metric_fn: ``metric_fn(pred (1, R, *spatial) float32 0/1, label (1, R, *spatial) float32 0/1)
            -> {name: float}`` for one volume, the prediction being ``probabilities >= 0.5`` (both on
            ``predict``'s device), e.g. ``dice_tc, dice_wt, dice_et, dice_mean``. Each metric is
            averaged over the validation volumes (NaNs, e.g. the Dice of an empty region, left out);
            it must return ``config.monitor``.
        checkpoint_meta: checkpoint metadata (:func:`medimg.models.validate_meta`); ``labels``
            names the R regions and ``network["out_channels"]`` is R. When ``architecture`` is
            one :func:`medimg.models.build_network` knows, ``model`` must match it; other
            architectures are recorded as given (read such checkpoints with
            :func:`medimg.models.read_checkpoint`). ``meta["training"]`` is extended as for
            :func:`train_classifier`.
        loss: ``"dice"`` (MONAI ``DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0,
            smooth_dr=1e-5)``, the MONAI BraTS tutorial's) or ``"dicece"`` (that Dice loss + per-channel BCE).
        resume: continue from ``out_dir/last.pt`` when it exists (a completed run returns at once).
        quiet: no progress bar and no per-epoch lines (on stderr).

    ``val_loss`` in ``metrics.csv`` is ``1 - mean Dice`` of the thresholded predictions (over the
    regions of a volume, then over volumes; a region empty in both label and prediction counts as
    Dice 1), whatever the training loss.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: bad configuration (class weights, an unknown loss), metadata that does not
            describe ``model``, labels that are not ``(R, *spatial)`` masks on the image grid or do
            not match the network's channels, ``predict`` returning another shape or values outside
            [0, 1], a metric_fn without ``config.monitor``, or a ``last.pt`` made with other settings.
        CheckpointError: ``last.pt`` is unreadable or does not fit ``model``.
        FloatingPointError: the training loss became NaN or infinite.
    """
    return _run(
        _segmentation_task(predict, metric_fn),
        model,
        train_data,
        val_data,
        config=config,
        out_dir=out_dir,
        checkpoint_meta=checkpoint_meta,
        loss=loss,
        resume=resume,
        quiet=quiet,
    )


def _run(
    task: _Task,
    model: torch.nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    checkpoint_meta: Mapping[str, Any],
    loss: str,
    resume: bool,
    quiet: bool,
) -> TrainResult:
    """Set up the process group when torchrun asks for one (and tear down the one it created) around :func:`_train`."""
    owns_group = is_distributed() and not (dist.is_available() and dist.is_initialized())
    device = init_distributed(config.device)
    try:
        return _train(
            task,
            model,
            train_data,
            val_data,
            config=config,
            device=device,
            out_dir=Path(out_dir),
            checkpoint_meta=checkpoint_meta,
            loss=loss,
            resume=resume,
            quiet=quiet,
        )
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    task: _Task,
    model: torch.nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    config: TrainConfig,
    device: torch.device,
    out_dir: Path,
    checkpoint_meta: Mapping[str, Any],
    loss: str,
    resume: bool,
    quiet: bool,
) -> TrainResult:
    """The loop shared by every task (see the module docstring); ``task`` supplies loss and validation."""
    meta = validate_meta(checkpoint_meta)
    _check_config(config, loss, task.losses)
    task.check(model, config, meta)
    if len(train_data) == 0 or len(val_data) == 0:  # type: ignore[arg-type]
        raise ValueError(f"empty dataset: {len(train_data)} training and {len(val_data)} validation items")  # type: ignore[arg-type]

    process_rank, n_ranks = rank(), world_size()
    distributed = n_ranks > 1 and dist.is_available() and dist.is_initialized()
    is_main = process_rank == 0
    paths = {
        "last": out_dir / "last.pt",
        "best": out_dir / "best.pt",
        "csv": out_dir / "metrics.csv",
        "png": out_dir / "learning_curve.png",
    }

    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    factor = _cosine_factor(config.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    criterion = task.make_criterion(loss, config.class_weights, device)

    start_epoch, history = 0, []
    best_value: float | None = None
    best_epoch: int | None = None
    if resume and paths["last"].is_file():
        state = read_checkpoint(paths["last"], map_location="cpu")
        saved, wanted = state.get("config", {}), _config_dict(config)
        if state.get("task", "classification") != task.kind:  # last.pt files from before segmentation lack it
            raise ValueError(
                f"{paths['last']} was written by a {state.get('task', 'classification')} run, not {task.kind}; "
                "use another out_dir"
            )
        for key in _RESUME_KEYS:
            if saved.get(key) != wanted[key]:
                raise ValueError(
                    f"{paths['last']} was written with {key}={saved.get(key)!r}, but this run asks for "
                    f"{wanted[key]!r}; pass resume=False or use another out_dir"
                )
        if state.get("loss") != loss:
            raise ValueError(f"{paths['last']} was trained with loss {state.get('loss')!r}, not {loss!r}")
        try:
            unwrap_model(model).load_state_dict(state["state_dict"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {paths['last']} does not fit the model being trained: {exc}") from exc
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # The schedule follows this run's epochs (LambdaLR keeps base_lrs and the step count).
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
        start_epoch = int(state["epoch"])
        history = [dict(row) for row in state["history"]]
        best_value, best_epoch = state["best_value"], state["best_epoch"]
        _set_rng_state(state["rng"])
    if distributed:
        # Every rank must resume from the same epoch (out_dir must be shared), or they would deadlock.
        points = torch.tensor([start_epoch, -start_epoch], dtype=torch.int64, device=device)
        dist.all_reduce(points, op=dist.ReduceOp.MAX)
        if int(points[0]) != -int(points[1]):
            raise RuntimeError(
                f"rank {process_rank} resumes from epoch {start_epoch} but another rank does not: out_dir "
                f"{out_dir} must be one folder shared by all ranks"
            )

    net: torch.nn.Module = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    sampler = DistributedSampler(
        train_data, num_replicas=n_ranks, rank=process_rank, shuffle=True, seed=config.seed, drop_last=False
    )
    # BatchNorm cannot train on a final batch of one item: drop it when the shard leaves exactly one.
    drop_last = len(sampler) % config.batch_size == 1 and len(sampler) > 1
    val_loader = DataLoader(
        val_data,
        batch_size=task.val_batch_size or config.batch_size,
        shuffle=False,
        num_workers=config.num_workers,
        pin_memory=False,
    )

    def training_meta(epoch: int, row: Mapping[str, float]) -> dict[str, Any]:
        training = {
            **meta["training"],
            "config": _config_dict(config),
            "task": task.kind,
            "loss": loss,
            "world_size": n_ranks,
            "train_items": len(train_data),  # type: ignore[arg-type]
            "val_items": len(val_data),  # type: ignore[arg-type]
            "epoch": epoch,
            "epochs": config.epochs,
            "monitor": config.monitor,
            "value": row[config.monitor],
            "metrics": dict(row),
        }
        return {**meta, "training": training}

    epochs_run = 0
    progress = progress_bar(is_main and not quiet and start_epoch < config.epochs, status=True)
    if progress is not None:
        progress.start()
        if start_epoch:
            progress.console.print(f"resuming {out_dir} after epoch {start_epoch}")
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            started = time.perf_counter()
            seed = _epoch_seed(config.seed, epoch, process_rank)
            _seed_all(seed)
            sampler.set_epoch(epoch)
            loader = DataLoader(
                train_data,
                batch_size=config.batch_size,
                sampler=sampler,
                num_workers=config.num_workers,
                drop_last=drop_last,
                generator=torch.Generator().manual_seed(seed),
            )
            lr = float(optimizer.param_groups[0]["lr"])
            bar = None
            if progress is not None:
                bar = progress.add_task(f"epoch {epoch}/{config.epochs}", total=len(loader), status="")
            net.train()
            auxiliary = getattr(unwrap_model(net), "auxiliary_loss", None)
            loss_sum, count = 0.0, 0
            for step, batch in enumerate(loader, 1):
                inputs, targets = task.split_batch(batch, device)
                optimizer.zero_grad(set_to_none=True)
                batch_loss = criterion(net(inputs), targets)
                if auxiliary is not None:  # e.g. an attention gate's regulariser and box supervision
                    batch_loss = batch_loss + auxiliary(batch)
                if not torch.isfinite(batch_loss):
                    raise FloatingPointError(
                        f"training loss became {batch_loss.item()} at epoch {epoch}, step {step} (lr {lr:.3g})"
                    )
                batch_loss.backward()
                optimizer.step()
                loss_sum += float(batch_loss.item()) * inputs.shape[0]
                count += inputs.shape[0]
                if progress is not None and bar is not None:
                    status = f"loss {loss_sum / count:.4f}" if step % config.log_every == 0 or step == 1 else None
                    progress.update(bar, advance=1, **({"status": status} if status else {}))
            totals = torch.tensor([loss_sum, float(count)], dtype=torch.float64, device=device)
            if distributed:
                dist.all_reduce(totals)
                for buffer in model.buffers():  # batch-norm statistics of rank 0 on every rank
                    dist.broadcast(buffer, src=0)
            train_loss = float(totals[0] / totals[1])

            if progress is not None and bar is not None:
                progress.update(bar, description=f"epoch {epoch}/{config.epochs} validation", status="")
            model.eval()
            with torch.no_grad():
                val_loss, raw_metrics = task.validate(model, val_loader, criterion, device)
            metrics = _metric_row(raw_metrics)
            _check_monitor(metrics, config.monitor)
            scheduler.step()
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **metrics, "lr": lr}
            row["seconds"] = round(time.perf_counter() - started, 3)
            history.append(row)
            value = metrics[config.monitor]
            improved = math.isfinite(value) and (best_value is None or value > best_value)
            if improved:
                best_value, best_epoch = value, epoch
            epochs_run += 1

            if is_main:
                write_csv(paths["csv"], history, _columns(history))
                if improved:
                    save_checkpoint(paths["best"], model, training_meta(epoch, row))
                save_checkpoint(
                    paths["last"],
                    model,
                    training_meta(epoch, row),
                    extra={
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "best_value": best_value,
                        "best_epoch": best_epoch,
                        "history": history,
                        "config": _config_dict(config),
                        "task": task.kind,
                        "loss": loss,
                        "rng": _rng_state(),
                    },
                )
                _plot_learning_curve(paths["png"], history, config.monitor)
            if progress is not None and bar is not None:
                progress.remove_task(bar)
                shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                mark = "  [green]best[/]" if improved else ""
                progress.console.print(
                    f"epoch {epoch}/{config.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                    f"{shown}  lr {lr:.3g}  {row['seconds']:.1f}s{mark}",
                    soft_wrap=True,
                )
    finally:
        if progress is not None:
            progress.stop()
    if distributed:
        dist.barrier()  # rank 0's files exist when any rank returns

    return TrainResult(
        best_value=best_value,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        last_epoch=start_epoch + epochs_run,
        resumed_from=start_epoch,
        best_checkpoint=paths["best"] if best_epoch is not None else None,
        last_checkpoint=paths["last"],
        metrics_csv=paths["csv"],
        learning_curve=paths["png"],
        history=history,
    )
