"""Limits on input size and values, checked before compute.

- :data:`MAX_PIXELS`: the largest image or volume (pixels/voxels per image, all frames and samples
  counted) that a loader accepts. Checked from the file's header, before any pixel data is
  decoded or any array allocated, so a small file that declares a huge image is refused at once.
  Default ``2**28`` (about 268 M values, ~1 GiB as float32); the environment variable
  ``MEDIMG_MAX_PIXELS`` overrides it (read on every check).
- :data:`MAX_FRAME_PIXELS`: the largest single 2-D DICOM frame (Rows x Columns), default ``2**26``
  (67 M, e.g. 8192 x 8192; the largest radiography and mammography detectors are ~4300 x 4300
  and ~4096 x 5200). ``MEDIMG_MAX_FRAME_PIXELS`` overrides it. A 12000 x 12000 frame is refused.
- :func:`check_finite`: non-finite values (NaN, inf) in decoded pixels are an error naming the
  file, never a silent result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_FRAME_PIXELS",
    "MAX_PIXELS",
    "InputLimitError",
    "NonFiniteError",
    "check_finite",
    "check_frame_size",
    "check_size",
    "constant_image_warning",
    "max_frame_pixels",
    "max_pixels",
]

#: Default largest number of pixels/voxels per image (frames and samples included).
MAX_PIXELS = 2**28
#: Default largest number of pixels of one 2-D DICOM frame (Rows x Columns).
MAX_FRAME_PIXELS = 2**26

_ENV = "MEDIMG_MAX_PIXELS"
_FRAME_ENV = "MEDIMG_MAX_FRAME_PIXELS"


class InputLimitError(ValueError):
    """An input over a size limit; the message names the file, its declared size and the limit."""


class NonFiniteError(ValueError):
    """Pixel/voxel values that are NaN or infinite; the message names the file and how many."""


def _from_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        limit = int(float(value))
    except ValueError as exc:
        raise ValueError(f"{name}={value!r}: not a number of pixels") from exc
    if limit <= 0:
        raise ValueError(f"{name}={value!r}: must be positive")
    return limit


def max_pixels() -> int:
    """The limit in force: ``MEDIMG_MAX_PIXELS`` when set to a positive integer, else :data:`MAX_PIXELS`."""
    return _from_env(_ENV, MAX_PIXELS)


def max_frame_pixels() -> int:
    """``MEDIMG_MAX_FRAME_PIXELS`` when set to a positive integer, else :data:`MAX_FRAME_PIXELS`."""
    return _from_env(_FRAME_ENV, MAX_FRAME_PIXELS)


def check_size(shape: Sequence[int], source: str, *, limit: int | None = None, env: str = _ENV) -> None:
    """Refuse an image whose declared ``shape`` holds more than ``limit`` values.

    Args:
        shape: the dimensions declared by the header (e.g. rows, columns, frames, samples).
        source: the file name, for the message.
        limit: the largest number of values; default :func:`max_pixels`.
        env: the variable named in the message as the way to change the limit.

    Raises:
        InputLimitError: a negative dimension, or more values than the limit.
    """
    limit = max_pixels() if limit is None else limit
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise InputLimitError(f"{source}: invalid declared image size {' x '.join(map(str, dims))}")
    total = math.prod(dims)
    if total > limit:
        raise InputLimitError(
            f"{source}: declared image size {' x '.join(map(str, dims))} = {total:,} values exceeds the limit "
            f"of {limit:,} ({env} to change it)"
        )


def check_frame_size(rows: int, columns: int, source: str) -> None:
    """Refuse a 2-D frame of more than :func:`max_frame_pixels` pixels (:class:`InputLimitError`)."""
    check_size((rows, columns), source, limit=max_frame_pixels(), env=_FRAME_ENV)


def check_finite(values: np.ndarray, source: str, *, what: str = "pixel") -> None:
    """Raise :class:`NonFiniteError` when ``values`` hold NaN or inf (integer arrays always pass)."""
    if not np.issubdtype(values.dtype, np.floating) and not np.issubdtype(values.dtype, np.complexfloating):
        return
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise NonFiniteError(f"{bad} non-finite {what} value{'s' if bad != 1 else ''} (NaN/inf) in {source}")


def constant_image_warning(values: Any, *, tolerance: float = 1e-6) -> str:
    """``"constant image"`` when ``values`` (an array or tensor) span less than ``tolerance``
    (blank, all-zero or slope-0 images), else ``""``: a flag for a results row, not an error."""
    size = values.numel() if hasattr(values, "numel") else np.size(values)
    if size == 0:
        return "constant image"
    span = float(values.max()) - float(values.min())
    return "constant image" if not span > tolerance else ""
