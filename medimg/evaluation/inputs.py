"""Input checks and value conversions shared by the evaluation modules.

:func:`binary_inputs` and :func:`multiclass_inputs` validate and normalize the ``(y_true, score)``
and ``(y_true, prob)`` arguments every public function takes; :func:`is_scalar` and
:func:`to_plain` turn metric results into the plain Python values that JSON and the bootstrap use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["binary_inputs", "is_scalar", "multiclass_inputs", "to_plain"]


def binary_inputs(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(y, score)`` as ``(N,) bool`` and ``(N,) float64`` after checking shapes and values.

    Raises:
        ValueError: mismatched shapes, no cases, labels other than 0/1, or non-finite scores.
    """
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"y_true and score must be 1-D of the same length, got {y.shape} and {s.shape}")
    if y.size == 0:
        raise ValueError("no cases")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold 0 and 1 only, got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError("score holds NaN or infinite values")
    return y.astype(bool), s


def multiclass_inputs(y_true: ArrayLike, prob: ArrayLike, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, prob)`` as ``(N,) int64`` in ``[0, K)`` and ``(N, K) float64`` after checking them.

    Raises:
        ValueError: mismatched shapes, a column count other than ``n_classes``, no cases,
            non-integer or out-of-range labels, or non-finite probabilities.
    """
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true must be (N,) and prob (N, K), got {y.shape} and {p.shape}")
    if p.shape[1] != n_classes:
        raise ValueError(f"prob has {p.shape[1]} columns but {n_classes} labels were given")
    if y.size == 0:
        raise ValueError("no cases")
    if not np.issubdtype(y.dtype, np.integer) and not np.array_equal(y, np.round(y)):
        raise ValueError("y_true must hold integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    if not np.isfinite(p).all():
        raise ValueError("prob holds NaN or infinite values")
    return y, p


def is_scalar(value: Any) -> bool:
    """Whether ``value`` is a real number (Python or numpy int or float), bools excluded."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def to_plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python floats, ints and lists."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value
