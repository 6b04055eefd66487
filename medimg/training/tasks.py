"""Tasks: what the shared supervised loop needs to know about classification or segmentation.

A :class:`Task` says how a batch becomes ``(inputs, targets)``, which losses exist, how the
validation set becomes ``(val_loss, metrics)`` and what to check before training;
:func:`classification_task` and :func:`segmentation_task` build the two medimg has.
:func:`check_model_matches_meta` fails before training when the checkpoint metadata would
rebuild a network the weights do not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import DataLoader
from monai.metrics import compute_dice

from medimg.models import ARCHITECTURES, TORCHSCRIPT, build_network, unwrap_model
from medimg.stats import nan_mean
from medimg.training.batches import classification_batch, segmentation_batch
from medimg.training.config import Criterion, MetricFn, Predictor, SegmentationMetricFn, TrainConfig
from medimg.training.history import metric_row
from medimg.training.losses import LOSSES, SEGMENTATION_LOSSES, classification_loss, segmentation_loss

__all__ = ["Task", "check_model_matches_meta", "classification_task", "segmentation_task"]


@dataclass(frozen=True)
class Task:
    """What the shared loop needs to know about a task.

    Everything else (seeding, sampling, DDP, optimization, checkpoints, resuming, logging) is the
    same for every task: :func:`medimg.training.train_classifier` and
    :func:`medimg.training.train_segmenter` differ only in the :class:`Task` they pass to
    :func:`medimg.training.supervised.run_task`.

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


def classification_task(metric_fn: MetricFn) -> Task:
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

    return Task(
        kind="classification",
        losses=LOSSES,
        make_criterion=classification_loss,
        split_batch=classification_batch,
        validate=validate,
        check=check,
    )


def segmentation_task(predict: Predictor, metric_fn: SegmentationMetricFn) -> Task:
    """Patch logits ``(B, R, *patch)`` against multi-channel masks; whole volumes through ``predict``."""

    def validate(
        model: torch.nn.Module, loader: DataLoader, criterion: Criterion, device: torch.device
    ) -> tuple[float, Mapping[str, Any]]:
        dice_sum, rows = 0.0, []
        for index, batch in enumerate(loader):
            image, label = segmentation_batch(batch, device)
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
            rows.append(metric_row(metric_fn(pred, label)))
            if set(rows[-1]) != set(rows[0]):
                raise ValueError(
                    f"metric_fn returned the keys {sorted(rows[-1])} for validation item {index} but {sorted(rows[0])} "
                    "for item 0; it must return the same keys for every volume"
                )
        metrics = {key: nan_mean([row[key] for row in rows]) for key in rows[0]}
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

    return Task(
        kind="segmentation",
        losses=SEGMENTATION_LOSSES,
        make_criterion=segmentation_loss,
        split_batch=segmentation_batch,
        validate=validate,
        check=check,
        val_batch_size=1,
    )


def check_model_matches_meta(model: torch.nn.Module, meta: Mapping[str, Any]) -> None:
    """Fail before training when ``meta`` would rebuild a network the weights do not fit (a
    ``"torchscript"`` network is not rebuilt from ``meta``: its checkpoint stores its own program)."""
    if meta["architecture"] == TORCHSCRIPT:
        return
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
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
