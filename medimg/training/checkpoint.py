"""A run's files and state: where they go, what each epoch writes, and resuming from ``last.pt``.

``out_dir`` holds (:class:`RunPaths`):

* ``metrics.csv``: one row per epoch, rewritten atomically after every epoch;
* ``last.pt``: a medimg checkpoint (:func:`medimg.models.save_checkpoint`) plus optimizer,
  scheduler, epoch, best value, history, configuration, task, loss and RNG states, so a rerun
  resumes with the next epoch; everything loads with ``torch.load(weights_only=True)``;
* ``best.pt``: the checkpoint of the epoch with the highest monitored metric;
* ``learning_curve.png``: train/val loss and the monitored metric per epoch.

:class:`RunState` is what changes from epoch to epoch (the rows, the best epoch), :class:`RunRecord`
what every checkpoint of a run records beside the weights; :func:`save_epoch` writes an epoch's
files (rank 0 only) and :func:`resume_run` reads ``last.pt`` back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medimg.models import CheckpointError, read_checkpoint, save_checkpoint, unwrap_model
from medimg.training.config import TrainConfig, config_dict
from medimg.training.history import csv_columns
from medimg.training.plots import plot_learning_curve
from medimg.training.rng import rng_state, set_rng_state
from medimg.training.schedule import follow_schedule
from medimg.writers import write_csv

__all__ = ["RESUME_KEYS", "RunPaths", "RunRecord", "RunState", "resume_run", "save_epoch"]

# A resumed run must agree with last.pt on these, or it would silently train something else.
RESUME_KEYS = ("seed", "batch_size", "lr", "weight_decay", "class_weights", "monitor")


@dataclass(frozen=True)
class RunPaths:
    """The files of a run in ``out_dir``."""

    last: Path
    best: Path
    csv: Path
    png: Path

    @classmethod
    def in_dir(cls, out_dir: Path) -> RunPaths:
        """``last.pt``, ``best.pt``, ``metrics.csv`` and ``learning_curve.png`` in ``out_dir``."""
        return cls(out_dir / "last.pt", out_dir / "best.pt", out_dir / "metrics.csv", out_dir / "learning_curve.png")


@dataclass
class RunState:
    """Where a run stands: the epoch it started after, the completed epochs' rows and the best epoch.

    Attributes:
        start_epoch: epochs ``last.pt`` held when this call started (0 for a fresh run).
        history: one row per completed epoch (``metrics.csv``).
        best_value: highest finite value of the monitored metric so far, or None.
        best_epoch: the epoch that reached it, or None.
    """

    start_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None

    def add(self, row: dict[str, float], monitor: str) -> bool:
        """Append an epoch's row; True when its ``monitor`` value is finite and the best so far."""
        self.history.append(row)
        value = row[monitor]
        improved = math.isfinite(value) and (self.best_value is None or value > self.best_value)
        if improved:
            self.best_value, self.best_epoch = value, int(row["epoch"])
        return improved


@dataclass(frozen=True)
class RunRecord:
    """What every checkpoint of a run records beside the weights.

    Attributes:
        meta: the validated checkpoint metadata the caller gave.
        config: the run's settings.
        task: ``"classification"`` or ``"segmentation"``.
        loss: the loss name.
        world_size: number of ranks.
        train_items: training items (all ranks together).
        val_items: validation items.
    """

    meta: Mapping[str, Any]
    config: TrainConfig
    task: str
    loss: str
    world_size: int
    train_items: int
    val_items: int

    def checkpoint_meta(self, epoch: int, row: Mapping[str, float]) -> dict[str, Any]:
        """``meta`` with ``meta["training"]`` extended by the configuration and this epoch's metrics."""
        training = {
            **self.meta["training"],
            "config": config_dict(self.config),
            "task": self.task,
            "loss": self.loss,
            "world_size": self.world_size,
            "train_items": self.train_items,
            "val_items": self.val_items,
            "epoch": epoch,
            "epochs": self.config.epochs,
            "monitor": self.config.monitor,
            "value": row[self.config.monitor],
            "metrics": dict(row),
        }
        return {**self.meta, "training": training}


def save_epoch(
    paths: RunPaths,
    model: torch.nn.Module,
    record: RunRecord,
    state: RunState,
    *,
    improved: bool,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Write the last epoch of ``state``: ``metrics.csv``, ``best.pt`` when ``improved``, ``last.pt``, the curve."""
    row = state.history[-1]
    epoch = int(row["epoch"])
    write_csv(paths.csv, state.history, csv_columns(state.history))
    if improved:
        save_checkpoint(paths.best, model, record.checkpoint_meta(epoch, row))
    save_checkpoint(
        paths.last,
        model,
        record.checkpoint_meta(epoch, row),
        extra={
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "best_value": state.best_value,
            "best_epoch": state.best_epoch,
            "history": state.history,
            "config": config_dict(record.config),
            "task": record.task,
            "loss": record.loss,
            "rng": rng_state(),
        },
    )
    plot_learning_curve(paths.png, state.history, record.config.monitor)


def check_resumable(path: Path, state: Mapping[str, Any], record: RunRecord) -> None:
    """ValueError unless ``last.pt`` (read into ``state``) was written by a run with ``record``'s settings."""
    saved, wanted = state.get("config", {}), config_dict(record.config)
    if state.get("task", "classification") != record.task:  # last.pt files from before segmentation lack it
        raise ValueError(
            f"{path} was written by a {state.get('task', 'classification')} run, not {record.task}; use another out_dir"
        )
    for key in RESUME_KEYS:
        if saved.get(key) != wanted[key]:
            raise ValueError(
                f"{path} was written with {key}={saved.get(key)!r}, but this run asks for "
                f"{wanted[key]!r}; pass resume=False or use another out_dir"
            )
    if state.get("loss") != record.loss:
        raise ValueError(f"{path} was trained with loss {state.get('loss')!r}, not {record.loss!r}")


def resume_run(
    path: Path,
    model: torch.nn.Module,
    record: RunRecord,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> RunState:
    """Load ``last.pt`` into the model, optimizer, scheduler and global RNGs; return where the run stands.

    The learning rates follow this run's schedule (:func:`medimg.training.schedule.follow_schedule`).

    Raises:
        ValueError: ``last.pt`` was written with other settings (:func:`check_resumable`).
        CheckpointError: ``last.pt`` is unreadable or does not fit ``model``.
    """
    state = read_checkpoint(path, map_location="cpu")
    check_resumable(path, state, record)
    try:
        unwrap_model(model).load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model being trained: {exc}") from exc
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    follow_schedule(optimizer, scheduler)
    set_rng_state(state["rng"])
    return RunState(
        start_epoch=int(state["epoch"]),
        history=[dict(row) for row in state["history"]],
        best_value=state["best_value"],
        best_epoch=state["best_epoch"],
    )
