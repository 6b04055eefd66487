"""The two public trainers: :func:`train_classifier` and :func:`train_segmenter`.

Both run the same supervised loop (:func:`medimg.training.supervised.run_task`); the task only
decides how a batch becomes a loss and how validation becomes metrics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from medimg.training.config import ExtraLoss, MetricFn, Predictor, SegmentationMetricFn, TrainConfig, TrainResult
from medimg.training.supervised import run_task
from medimg.training.tasks import classification_task, segmentation_task

__all__ = ["train_classifier", "train_segmenter"]


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
    extra_loss: ExtraLoss | None = None,
) -> TrainResult:
    """Train a classifier with AdamW and a cosine schedule; checkpoint, log and resume in ``out_dir``.

    Args:
        model: network mapping float32 ``(B, C, *spatial)`` to ``(B, K)`` logits; trained in place
            (it holds the last epoch's weights afterwards) and moved to ``config.device``.
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
        extra_loss: ``extra_loss(batch) -> scalar`` added to the loss of every training batch,
            called after the network's forward pass with the collated batch (e.g. an attention
            gate's regularizer and box supervision, an EWC penalty, a FedProx term); None for
            the task's loss alone. Not part of the checkpoint: a resumed run needs it again.

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
    return run_task(
        classification_task(metric_fn),
        model,
        train_data,
        val_data,
        config=config,
        out_dir=out_dir,
        checkpoint_meta=checkpoint_meta,
        loss=loss,
        resume=resume,
        quiet=quiet,
        extra_loss=extra_loss,
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
    extra_loss: ExtraLoss | None = None,
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
        extra_loss: ``extra_loss(batch) -> scalar`` added to the loss of every training batch,
            called after the network's forward pass with the collated batch (e.g. an attention
            gate's regularizer and box supervision, an EWC penalty, a FedProx term); None for
            the task's loss alone. Not part of the checkpoint: a resumed run needs it again.

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
    return run_task(
        segmentation_task(predict, metric_fn),
        model,
        train_data,
        val_data,
        config=config,
        out_dir=out_dir,
        checkpoint_meta=checkpoint_meta,
        loss=loss,
        resume=resume,
        quiet=quiet,
        extra_loss=extra_loss,
    )
