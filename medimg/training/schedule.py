"""The optimizer of the supervised trainers: AdamW with a cosine learning-rate schedule over the epochs.

Epoch ``e`` of ``E`` (1-based) uses ``lr * (1 + cos(pi * (e - 1) / E)) / 2``. The factor is a
plain function, so a resumed run follows its own ``E`` (:func:`follow_schedule`): a run resumed
with more epochs continues on the schedule stretched to the new total.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["adamw_cosine", "cosine_factor", "follow_schedule"]


def cosine_factor(epochs: int) -> Callable[[int], float]:
    """LambdaLR factor for 0-based scheduler step ``i``: ``(1 + cos(pi * i / epochs)) / 2``.

    A plain function (not a callable object), so LambdaLR does not store it in its state dict
    and a resumed run follows its own ``epochs``.
    """

    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, epochs) / max(epochs, 1)))

    return factor


def adamw_cosine(
    model: torch.nn.Module, *, lr: float, weight_decay: float, epochs: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model``'s parameters and its cosine schedule over ``epochs`` (one step per epoch)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(epochs))


def follow_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """After loading a scheduler's state: set the learning rates its own factor gives for its step count.

    LambdaLR keeps ``base_lrs`` and the step count in its state but not the factor, so a run
    resumed with another number of epochs continues on its own schedule.
    """
    factor = scheduler.lr_lambdas[0]
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
