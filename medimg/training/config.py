"""What a supervised run is told and what it answers: settings, result, the callables it takes.

:class:`TrainConfig` (the settings), :class:`TrainResult` (what a run did), the shapes of the
callables the trainers take (:data:`MetricFn`, :data:`SegmentationMetricFn`, :data:`Predictor`,
:data:`Criterion`, :data:`ExtraLoss`), and the task-independent checks of the settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Criterion",
    "ExtraLoss",
    "MetricFn",
    "Predictor",
    "SegmentationMetricFn",
    "TrainConfig",
    "TrainResult",
    "check_config",
    "config_dict",
]

MetricFn = Callable[[np.ndarray, np.ndarray], Mapping[str, float]]
"""Classification metrics: ``(y_true (N,) int64, y_prob (N, K) float64) -> {name: value}``."""
SegmentationMetricFn = Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]]
"""One volume's metrics: ``(pred (1, R, *spatial) float32 0/1, label (1, R, *spatial) 0/1) -> {name: value}``."""
Predictor = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
"""Whole-volume inference: ``(model, image (1, C, *spatial)) -> probabilities (1, R, *spatial) in [0, 1]``."""
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A task's loss: ``(network outputs, targets) -> scalar``."""
ExtraLoss = Callable[[Mapping[str, Any]], torch.Tensor]
"""A term added to the loss of every training batch: ``(collated batch) -> scalar``.

Called after the network's forward pass on that batch (so it may read what the forward pass
left behind, e.g. an attention map), e.g. an attention gate's regularizer and box supervision,
an EWC penalty or a FedProx proximal term.
"""


@dataclass
class TrainConfig:
    """Settings of :func:`train_classifier` and :func:`train_segmenter`.

    Attributes:
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: items per step and per rank (a crop transform returning ``n`` patches per
            item makes each step ``batch_size * n`` patches).
        lr: peak learning rate of AdamW (cosine-annealed to 0 over ``epochs``).
        weight_decay: AdamW's decoupled weight decay.
        seed: non-negative seed for data order, augmentation and initialization-free RNG use.
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


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The configuration as plain JSON types (so a tuple of class weights equals the same list)."""
    return json.loads(json.dumps(asdict(config)))


def check_config(config: TrainConfig, loss: str, losses: tuple[str, ...]) -> None:
    """Task-independent settings; the task checks its own (class weights, labels) afterwards.

    Raises:
        ValueError: ``loss`` is not in ``losses``, or a count or the seed is out of range.
    """
    if loss not in losses:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(losses)}")
    if config.epochs < 0 or config.batch_size < 1 or config.num_workers < 0 or config.log_every < 1:
        raise ValueError(f"epochs >= 0, batch_size >= 1, num_workers >= 0 and log_every >= 1 are required: {config}")
    if config.seed < 0:
        raise ValueError(f"seed must be non-negative, not {config.seed}")
