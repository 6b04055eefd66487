"""The per-epoch rows of ``metrics.csv``: the metric function's dict as a row, the columns, NaN-aware means.

A row is ``epoch, train_loss, val_loss, <metrics>, lr, seconds``; the five fixed names
(:data:`RESERVED_COLUMNS`) cannot be metric names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["RESERVED_COLUMNS", "check_monitor", "csv_columns", "metric_row"]

RESERVED_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds")


def metric_row(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``metric_fn``'s dict as ``{name: float}``; ValueError for anything else or a reserved name."""
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metric_fn must return a dict of floats, not {type(metrics).__name__}")
    row = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or key in RESERVED_COLUMNS:
            raise ValueError(f"metric_fn returned the key {key!r}; it must be a string other than {RESERVED_COLUMNS}")
        try:
            row[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metric_fn returned {key}={value!r}, which is not a number") from exc
    return row


def check_monitor(row: Mapping[str, float], monitor: str) -> None:
    """ValueError unless ``monitor`` is one of the metrics in ``row``."""
    if monitor not in row:
        raise ValueError(f"monitor {monitor!r} is not among the metrics returned by metric_fn: {sorted(row)}")


def csv_columns(history: list[dict[str, float]]) -> list[str]:
    """The columns of ``metrics.csv``: the fixed ones around every metric name, in order of appearance."""
    metric_keys: list[str] = []
    for row in history:
        metric_keys += [k for k in row if k not in RESERVED_COLUMNS and k not in metric_keys]
    return ["epoch", "train_loss", "val_loss", *metric_keys, "lr", "seconds"]
