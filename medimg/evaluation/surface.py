"""Surface distances between two binary masks: HD95 and normalized surface Dice (NSD).

The definitions are those the BraTS lesion-wise evaluation uses (see
``docs/methods/brats-lesionwise.md``):

* the **surface** of a mask is the set of its voxels that a one-voxel erosion with the
  face-connected (6-neighbour in 3-D) structuring element removes; voxels on the array's edge
  count as surface;
* the **directed distances** from A to B are, for every surface voxel of A, the Euclidean
  distance in millimetres (voxel spacing applied) to the nearest surface voxel of B;
* **HD95** is the 95th percentile (linear interpolation) of the distances of both directions
  pooled together;
* **NSD** at tolerance ``t`` is the mean of the two directed fractions of surface voxels within
  ``t``; ``t`` defaults to the smallest voxel spacing.

Both distances are computed on the union's bounding box plus a one-voxel margin, which gives the
same values as on the whole volume (the nearest surface voxel of B always lies in B's box). The
directed distances equal MONAI's ``get_mask_edges`` + ``get_surface_distance`` (tested), which is
not used here because it returns float32 and its HD95 takes the percentile per direction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["directed_surface_distances", "hd95", "normalized_surface_dice", "surface_metrics"]


def _crop_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` cut to their union's bounding box, with a margin of one zero voxel."""
    union = a | b
    boxes = ndimage.find_objects(union.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return a, b
    box = boxes[0]
    return (np.pad(a[box], 1), np.pad(b[box], 1))


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {values} does not have one value per axis of a {ndim}-D mask")
    return values


def _both_directions(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed surface distances a->b and b->a (None when either mask is empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes: {a.shape} and {b.shape}")
    if not a.any() or not b.any():
        return None
    sampling = _spacing(spacing, a.ndim)
    a, b = _crop_union(a, b)
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=sampling)
    return np.asarray(to_b[surface_a], dtype=np.float64), np.asarray(to_a[surface_b], dtype=np.float64)


def directed_surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b``.

    Empty when ``a`` is empty; infinite for every surface voxel of ``a`` when ``b`` is empty.
    """
    a = np.asarray(a, dtype=bool)
    pair = _both_directions(a, b, spacing)
    if pair is None:
        return np.full(int(_surface(a).sum()), math.inf)
    return pair[0]


def surface_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float] | None = None,
    tolerance: float | None = None,
) -> tuple[float, float]:
    """``(hd95, nsd)`` of two masks from one pair of distance transforms.

    Args:
        reference, prediction: boolean masks of the same shape.
        spacing: voxel size per axis in mm (None: 1 mm).
        tolerance: NSD tolerance in mm (None: the smallest voxel spacing).

    Returns:
        ``(inf, 0.0)`` when either mask is empty, else the HD95 in mm and the NSD in [0, 1].
    """
    pair = _both_directions(reference, prediction, spacing)
    if pair is None:
        return math.inf, 0.0
    ref_to_pred, pred_to_ref = pair
    hd = float(np.percentile(np.concatenate([pred_to_ref, ref_to_pred]), 95))
    if tolerance is None:
        tolerance = min(_spacing(spacing, np.ndim(reference)))
    nsd = (float(np.mean(ref_to_pred <= tolerance)) + float(np.mean(pred_to_ref <= tolerance))) / 2.0
    return hd, nsd


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of the pooled symmetric surface distances in mm (inf when a mask is empty)."""
    return surface_metrics(reference, prediction, spacing)[0]


def normalized_surface_dice(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float] | None = None,
    tolerance: float | None = None,
) -> float:
    """Mean of the two directed fractions of surface voxels within ``tolerance`` mm (0 when a mask is empty)."""
    return surface_metrics(reference, prediction, spacing, tolerance)[1]
