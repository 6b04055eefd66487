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

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the default process group is initialized
(gloo on CPU, nccl on CUDA) unless the caller did so already, the model is wrapped in
``DistributedDataParallel``, the training data is sharded by ``DistributedSampler(seed=seed)``,
batch-norm statistics are taken from rank 0 at the end of every epoch, every rank validates on
the whole validation set (so all ranks hold the same metrics and weights) and only rank 0
writes files. ``out_dir`` must be visible to every rank for resuming.

Extra loss terms (an attention gate's regularizer, an EWC penalty, a FedProx term) are passed
explicitly as ``extra_loss``; the loop never looks for them on the model.

Modules (each holds one part; this package re-exports the public names):

* :mod:`.trainers`: :func:`train_classifier` and :func:`train_segmenter`, the public entry points;
* :mod:`.supervised`: the run both share (checks, set-up, resume, loaders, per-epoch work);
* :mod:`.loop`: the one epoch loop (optimizer steps, progress bar, history rows), also used by
  :func:`saliency.localizer.train_localizer`;
* :mod:`.tasks`: what differs between classification and segmentation;
* :mod:`.config`: :class:`TrainConfig`, :class:`TrainResult` and the callable types;
* :mod:`.batches`: collated batches as ``(inputs, targets)`` tensors;
* :mod:`.losses`: the classification and segmentation losses;
* :mod:`.schedule`: AdamW with the cosine schedule;
* :mod:`.checkpoint`: the run's files, ``last.pt``/``best.pt`` and resuming;
* :mod:`.history`: the rows and columns of ``metrics.csv``;
* :mod:`.plots`: the learning curve;
* :mod:`.rng`: per-epoch seeds and the RNG states a checkpoint carries;
* :mod:`.distributed`: torchrun's process group, ranks and DDP.
"""

from __future__ import annotations

from medimg.training.batches import classification_batch
from medimg.training.config import (
    Criterion,
    ExtraLoss,
    MetricFn,
    Predictor,
    SegmentationMetricFn,
    TrainConfig,
    TrainResult,
)
from medimg.training.distributed import init_distributed, is_distributed, rank, world_size
from medimg.training.loop import EpochSteps, progress_session, run_epochs, train_one_epoch
from medimg.training.losses import LOSSES, SEGMENTATION_LOSSES, segmentation_loss
from medimg.training.tasks import check_model_matches_meta
from medimg.training.trainers import train_classifier, train_segmenter

__all__ = [
    "LOSSES",
    "SEGMENTATION_LOSSES",
    "Criterion",
    "EpochSteps",
    "ExtraLoss",
    "MetricFn",
    "Predictor",
    "SegmentationMetricFn",
    "TrainConfig",
    "TrainResult",
    "check_model_matches_meta",
    "classification_batch",
    "init_distributed",
    "is_distributed",
    "progress_session",
    "rank",
    "run_epochs",
    "segmentation_loss",
    "train_classifier",
    "train_one_epoch",
    "train_segmenter",
    "world_size",
]
