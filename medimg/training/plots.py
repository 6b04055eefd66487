"""The learning curve: train/validation loss and the monitored metric per epoch, as a PNG."""

from __future__ import annotations

import math
from pathlib import Path

from medimg.writers import atomic_path

__all__ = ["plot_learning_curve"]


def plot_learning_curve(path: Path, history: list[dict[str, float]], monitor: str) -> None:
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
