"""The supervised run behind both trainers: set-up, resuming, loaders, and the epochs of :mod:`.loop`.

:func:`run_task` trains a model for a :class:`~medimg.training.tasks.Task` (classification or
segmentation) inside the torchrun process group; :class:`SupervisedEpochs` is what each of its
epochs does beside the optimization steps: seed every RNG from ``(seed, epoch, rank)`` and
shard the data, add the caller's ``extra_loss``, reduce the loss over ranks, validate, keep the
best epoch and write the run's files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.data import DataLoader
from torch.utils.data import Dataset, DistributedSampler

from medimg.models import validate_meta
from medimg.training.checkpoint import RunPaths, RunRecord, RunState, resume_run, save_epoch
from medimg.training.config import Criterion, ExtraLoss, TrainConfig, TrainResult, check_config
from medimg.training.distributed import (
    check_same_start,
    group_active,
    process_group,
    rank,
    reduce_epoch,
    world_size,
    wrap_model,
)
from medimg.training.history import RESERVED_COLUMNS, check_monitor, metric_row
from medimg.training.loop import Batches, EpochSteps, progress_session, run_epochs
from medimg.training.rng import epoch_seed, seed_all
from medimg.training.schedule import adamw_cosine
from medimg.training.tasks import Task

__all__ = ["SupervisedEpochs", "check_run", "run_task", "train_task"]


class SupervisedEpochs(EpochSteps):
    """The epochs of a supervised run (see the module docstring); rank 0 writes the files.

    Args:
        task: how batches become losses and validation becomes metrics.
        model: the network being trained (unwrapped); ``net`` is what the batches go through
            (``model`` itself, or its DistributedDataParallel wrapper).
        train_data, val_data: map-style datasets.
        run_record: what the checkpoints record (configuration, task, loss, counts).
        state: the run's rows and best epoch, updated after every epoch.
        paths: the run's files.
        optimizer, scheduler: saved in ``last.pt`` after every epoch.
        criterion: the task's loss.
        device: this rank's device.
        extra_loss: added to every training batch's loss, or None.
    """

    def __init__(
        self,
        task: Task,
        model: torch.nn.Module,
        net: torch.nn.Module,
        train_data: Dataset,
        val_data: Dataset,
        *,
        run_record: RunRecord,
        state: RunState,
        paths: RunPaths,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        criterion: Criterion,
        device: torch.device,
        extra_loss: ExtraLoss | None,
    ) -> None:
        self.task, self.model, self.net, self.train_data = task, model, net, train_data
        self.run_record, self.state, self.paths = run_record, state, paths
        self.optimizer, self.scheduler, self.criterion = optimizer, scheduler, criterion
        self.device, self.extra_loss, self.config = device, extra_loss, run_record.config
        self.rank, self.distributed = rank(), group_active()
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            train_data,
            num_replicas=run_record.world_size,
            rank=self.rank,
            shuffle=True,
            seed=self.config.seed,
            drop_last=False,
        )
        # BatchNorm cannot train on a final batch of one item: drop it when the shard leaves exactly one.
        self.drop_last = len(self.sampler) % self.config.batch_size == 1 and len(self.sampler) > 1
        self.val_loader = DataLoader(
            val_data,
            batch_size=task.val_batch_size or self.config.batch_size,
            shuffle=False,
            num_workers=self.config.num_workers,
            pin_memory=False,
        )

    def batches(self, epoch: int) -> Batches:
        """Seed every RNG from ``(seed, epoch, rank)``; this rank's shard of the training data in a new order."""
        seed = epoch_seed(self.config.seed, epoch, self.rank)
        seed_all(seed)
        self.sampler.set_epoch(epoch)
        return DataLoader(
            self.train_data,
            batch_size=self.config.batch_size,
            sampler=self.sampler,
            num_workers=self.config.num_workers,
            drop_last=self.drop_last,
            generator=torch.Generator().manual_seed(seed),
        )

    def loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        """The task's loss of the batch through ``net``, plus ``extra_loss(batch)`` when given."""
        inputs, targets = self.task.split_batch(batch, self.device)
        batch_loss = self.criterion(self.net(inputs), targets)
        if self.extra_loss is not None:  # e.g. an attention gate's regularizer, an EWC penalty
            batch_loss = batch_loss + self.extra_loss(batch)
        return batch_loss, inputs.shape[0]

    def train_loss(self, loss_sum: float, count: int) -> float:
        """The mean over all ranks (which also take rank 0's batch-norm statistics)."""
        totals = torch.tensor([loss_sum, float(count)], dtype=torch.float64, device=self.device)
        if self.distributed:
            reduce_epoch(totals, self.model)
        return float(totals[0] / totals[1])

    def validate(self, epoch: int) -> dict[str, float]:
        """``val_loss`` and the metrics on the whole validation set (every rank computes the same)."""
        self.model.eval()
        with torch.no_grad():
            val_loss, raw_metrics = self.task.validate(self.model, self.val_loader, self.criterion, self.device)
        metrics = metric_row(raw_metrics)
        check_monitor(metrics, self.config.monitor)
        return {"val_loss": val_loss, **metrics}

    def record(self, row: dict[str, float]) -> str:
        """Keep the row and the best epoch, write the files (rank 0), return the epoch's line."""
        improved = self.state.add(row, self.config.monitor)
        if self.rank == 0:
            save_epoch(
                self.paths, self.model, self.run_record, self.state,
                improved=improved, optimizer=self.optimizer, scheduler=self.scheduler,
            )  # fmt: skip
        shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in RESERVED_COLUMNS)
        mark = "  [green]best[/]" if improved else ""
        return (
            f"epoch {row['epoch']}/{self.config.epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  {shown}  lr {row['lr']:.3g}  {row['seconds']:.1f}s{mark}"
        )


def check_run(
    task: Task,
    model: torch.nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    *,
    config: TrainConfig,
    checkpoint_meta: Mapping[str, Any],
    loss: str,
) -> RunRecord:
    """Check everything that can be checked before training; return what the checkpoints will record.

    Raises:
        ValueError: bad settings or metadata (see the trainers), or an empty dataset.
    """
    meta = validate_meta(checkpoint_meta)
    check_config(config, loss, task.losses)
    task.check(model, config, meta)
    if len(train_data) == 0 or len(val_data) == 0:  # type: ignore[arg-type]
        raise ValueError(f"empty dataset: {len(train_data)} training and {len(val_data)} validation items")  # type: ignore[arg-type]
    return RunRecord(
        meta=meta,
        config=config,
        task=task.kind,
        loss=loss,
        world_size=world_size(),
        train_items=len(train_data),  # type: ignore[arg-type]
        val_items=len(val_data),  # type: ignore[arg-type]
    )


def run_task(
    task: Task,
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
    extra_loss: ExtraLoss | None = None,
) -> TrainResult:
    """:func:`train_task` inside the torchrun process group (set up when asked for, torn down if created here)."""
    with process_group(config.device) as device:
        return train_task(
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
            extra_loss=extra_loss,
        )


def train_task(
    task: Task,
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
    extra_loss: ExtraLoss | None = None,
) -> TrainResult:
    """Check, set up or resume, train the remaining epochs and report (see :mod:`medimg.training`)."""
    run_record = check_run(task, model, train_data, val_data, config=config, checkpoint_meta=checkpoint_meta, loss=loss)
    paths = RunPaths.in_dir(out_dir)
    model.to(device)
    optimizer, scheduler = adamw_cosine(model, lr=config.lr, weight_decay=config.weight_decay, epochs=config.epochs)
    criterion = task.make_criterion(loss, config.class_weights, device)
    state = RunState()
    if resume and paths.last.is_file():
        state = resume_run(paths.last, model, run_record, optimizer=optimizer, scheduler=scheduler)
    distributed = group_active()
    if distributed:
        check_same_start(state.start_epoch, device, out_dir)
    steps = SupervisedEpochs(
        task, model, wrap_model(model, device) if distributed else model, train_data, val_data,
        run_record=run_record, state=state, paths=paths, optimizer=optimizer, scheduler=scheduler,
        criterion=criterion, device=device, extra_loss=extra_loss,
    )  # fmt: skip
    start = state.start_epoch
    with progress_session(rank() == 0 and not quiet and start < config.epochs) as progress:
        if progress is not None and start:
            progress.console.print(f"resuming {out_dir} after epoch {start}")
        epochs_run = run_epochs(
            steps.net, optimizer, scheduler, steps,
            epochs=range(start + 1, config.epochs + 1), total=config.epochs, progress=progress,
            log_every=config.log_every,
        )  # fmt: skip
    if distributed:
        dist.barrier()  # rank 0's files exist when any rank returns
    return TrainResult(
        best_value=state.best_value,
        best_epoch=state.best_epoch,
        epochs_run=epochs_run,
        last_epoch=start + epochs_run,
        resumed_from=start,
        best_checkpoint=paths.best if state.best_epoch is not None else None,
        last_checkpoint=paths.last,
        metrics_csv=paths.csv,
        learning_curve=paths.png,
        history=state.history,
    )
