"""Small statistics shared by every layer: :func:`finite_mean` and :func:`nan_mean`.

It lives in the core (``medimg``) so that ``saliency``, ``uncertainty``, ``continual`` and
``pipelines``, which may not import each other, all take the same one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["finite_mean", "nan_mean"]


def finite_mean(values: ArrayLike | Iterable[float | None]) -> float:
    """Mean of the finite values (NaN when there are none).

    Args:
        values: numbers in any shape: an array (all its elements count), a sequence, or any
            iterable (a generator, ``dict.values()``). NaN, infinities and ``None`` are left out.

    Returns:
        The mean as a Python float, or NaN when no value is finite (or there are none).
    """
    if (
        isinstance(values, Iterable)
        and not isinstance(values, (np.ndarray, list, tuple))
        and not hasattr(values, "__array__")
    ):
        array = np.asarray(list(values), dtype=float)  # a generator, dict.values(): not array-like to numpy
    else:
        array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    return float(array.mean()) if array.size else math.nan


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN, keeping infinities (NaN when every value is NaN).

    Unlike :func:`finite_mean`, an infinite value (e.g. a Hausdorff distance to an empty
    prediction) makes the mean infinite instead of being dropped: the training loop averages
    per-volume validation metrics with it, so a failure cannot look like a success.
    """
    kept = [float(value) for value in values if not math.isnan(float(value))]
    return sum(kept) / len(kept) if kept else math.nan
