"""The one epoch loop of medimg: optimization steps, the progress bar, one history row per epoch.

:func:`run_epochs` drives any training that goes "for each epoch: draw batches, take one
optimizer step per batch, validate, step the schedule, record a row": the supervised trainers
(:func:`medimg.training.train_classifier`, :func:`medimg.training.train_segmenter`) and the
lesion localizer (:func:`saliency.localizer.train_localizer`). What differs between them
(where batches come from, how a batch becomes a loss, validation, what is kept or written after
an epoch, the line shown for it) is an :class:`EpochSteps`.

Each epoch's row is ``{"epoch", "train_loss", **validate(epoch), "lr", "seconds"}``, where ``lr``
is the learning rate the epoch trained with and ``seconds`` its wall time.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from rich.progress import Progress, TaskID

from medimg.progress import progress_bar

__all__ = ["Batches", "EpochSteps", "check_finite", "progress_session", "run_epochs", "train_one_epoch"]


class Batches(Protocol):
    """An epoch's batches: iterable, with a length (steps per epoch), like a ``DataLoader``."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


class EpochSteps(abc.ABC):
    """What a training run does in each epoch beside the shared optimization steps."""

    @abc.abstractmethod
    def batches(self, epoch: int) -> Batches:
        """The epoch's training batches (seed RNGs, set samplers and build loaders here)."""

    @abc.abstractmethod
    def loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        """``(scalar loss with its graph, items in the batch)`` for one training batch, model in train mode."""

    def train_loss(self, loss_sum: float, count: int) -> float:
        """The epoch's training loss from the item-weighted sum of batch losses (e.g. reduced over ranks)."""
        return loss_sum / count

    @abc.abstractmethod
    def validate(self, epoch: int) -> dict[str, float]:
        """The row's entries between ``train_loss`` and ``lr`` (e.g. ``val_loss`` and the metrics)."""

    @abc.abstractmethod
    def record(self, row: dict[str, float]) -> str:
        """Keep the epoch's completed row (history, files) and return the line shown for it."""


@contextmanager
def progress_session(enabled: bool) -> Iterator[Progress | None]:
    """A started progress bar with a status field for the ``with`` block (None when not ``enabled``)."""
    progress = progress_bar(enabled, status=True)
    if progress is None:
        yield None
        return
    progress.start()
    try:
        yield progress
    finally:
        progress.stop()


def check_finite(loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    """FloatingPointError when a training loss is NaN or infinite."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}, step {step} (lr {lr:.3g})")


def train_one_epoch(
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    loss: Callable[[Any], tuple[torch.Tensor, int]],
    *,
    epoch: int,
    lr: float,
    progress: Progress | None = None,
    bar: TaskID | None = None,
    log_every: int = 1,
) -> tuple[float, int]:
    """One optimizer step per batch; returns ``(sum of batch loss x items, items)``.

    The running mean loss is shown on ``bar`` after the first step and every ``log_every`` steps.

    Raises:
        FloatingPointError: a batch's loss is NaN or infinite.
    """
    loss_sum, count = 0.0, 0
    for step, batch in enumerate(batches, 1):
        optimizer.zero_grad(set_to_none=True)
        batch_loss, items = loss(batch)
        check_finite(batch_loss, epoch, step, lr)
        batch_loss.backward()
        optimizer.step()
        loss_sum += float(batch_loss.item()) * items
        count += items
        if progress is not None and bar is not None:
            if step % log_every == 0 or step == 1:
                progress.update(bar, advance=1, status=f"loss {loss_sum / count:.4f}")
            else:
                progress.update(bar, advance=1)
    return loss_sum, count


def run_epochs(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    steps: EpochSteps,
    *,
    epochs: range,
    total: int,
    progress: Progress | None = None,
    log_every: int = 1,
) -> int:
    """Train ``net`` for ``epochs`` (1-based, out of ``total``); returns the number of epochs run.

    Per epoch: ``steps.batches``, ``net.train()``, :func:`train_one_epoch`, ``steps.train_loss``,
    ``steps.validate``, ``scheduler.step()``, then ``steps.record`` of the row, whose line is
    printed above ``progress`` (a started bar with a ``status`` field, or None for silence).
    """
    for epoch in epochs:
        started = time.perf_counter()
        batches = steps.batches(epoch)
        lr = float(optimizer.param_groups[0]["lr"])
        bar = None
        if progress is not None:
            bar = progress.add_task(f"epoch {epoch}/{total}", total=len(batches), status="")
        net.train()
        loss_sum, count = train_one_epoch(
            optimizer, batches, steps.loss, epoch=epoch, lr=lr, progress=progress, bar=bar, log_every=log_every
        )
        train_loss = steps.train_loss(loss_sum, count)
        if progress is not None and bar is not None:
            progress.update(bar, description=f"epoch {epoch}/{total} validation", status="")
        validation = steps.validate(epoch)
        scheduler.step()
        row = {"epoch": epoch, "train_loss": train_loss, **validation, "lr": lr}
        row["seconds"] = round(time.perf_counter() - started, 3)
        line = steps.record(row)
        if progress is not None and bar is not None:
            progress.remove_task(bar)
            progress.console.print(line, soft_wrap=True)
    return len(epochs)
