"""QU-BraTS uncertainty score of one case, vectorized, with the official scorer's semantics.

Semantics (docs/methods/qubrats.md; the official script is ``BraTS_Seg_Uncertainty.py``
of RagMeh11/QU-BraTS):

- Regions from BraTS 2020 labels, compared as numbers: WT = label > 0, TC = label in {1, 4},
  ET = label == 4. Each region has its own uncertainty map (whole, core, enhance).
- Thresholds ``tau``: ``k * 100 / N`` for k = 0..N, descending (default N = 40: 41 thresholds
  100, 97.5, ..., 0), the grid the challenge ran with (NumPy 1.x; under NumPy 2 the official script silently drops 100).
- At ``tau`` a voxel is kept iff ``u <= tau`` (strict ``u > tau`` filters; NaN is never
  filtered). Filtering applies to the whole volume.
- DSC(tau) on kept voxels of truth and prediction, whole volume (no brain mask); 1.0 when
  both kept sets are empty.
- FTP(tau) = (TP_all - TP_kept) / (TP_all + eps), TP = truth AND prediction AND brain, eps =
  float32 machine epsilon, in float32 as the official script; FTN likewise for true negatives
  (NOT truth AND NOT prediction AND brain). The brain mask is ``mask > 0`` (the official script's
  official script leaves negative values as negative weights; we do not).
- AUC = trapezoid area of the curve against tau, divided by 100; score =
  (DSC_AUC + (1 - FTP_AUC) + (1 - FTN_AUC)) / 3.

Vectorized (instead of re-filtering the volume per threshold, as the official script does): for every voxel the
index of the first threshold at which it is kept is found once (``searchsorted``), and one
``bincount`` over (that index, truth, prediction, brain) gives a count table from which
cumulative sums yield every threshold at once. Only voxels in truth or prediction need that
per-voxel work; the true negatives are every brain voxel minus those, and the brain voxels need
only a histogram of keep indices (for integer maps: a value histogram folded onto thresholds).
Exact for integer and float maps.
This module needs only numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "DEFAULT_NUM_THRESHOLDS",
    "REGIONS",
    "UNCERTAINTY_SUFFIX",
    "CaseScore",
    "RegionScore",
    "region_mask",
    "score_case",
    "score_region",
    "thresholds",
    "trapezoid_auc",
]

#: Regions in the order the official script reports them.
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
#: Submission file suffix of each region's uncertainty map: ``{ID}_unc_{suffix}.nii.gz``.
UNCERTAINTY_SUFFIX: Mapping[str, str] = {"WT": "whole", "TC": "core", "ET": "enhance"}
#: 41 thresholds (100 -> 0 in steps of 2.5), as in the challenge.
DEFAULT_NUM_THRESHOLDS = 41
_EPS32 = np.float32(np.finfo(np.float32).eps)


def thresholds(num_thresholds: int = DEFAULT_NUM_THRESHOLDS) -> np.ndarray:
    """The threshold grid, descending from 100 to 0.

    Built like the official script under NumPy 1.x (``arange(0, 100 + eps, 100 / N)``
    reversed, N = num_thresholds - 1), so that grid values are bit-identical to it.

    Args:
        num_thresholds: number of thresholds (>= 2); 41 gives 100, 97.5, ..., 0.

    Returns:
        float64 array of shape (num_thresholds,), descending.

    Raises:
        ValueError: fewer than two thresholds.
    """
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
    intervals = num_thresholds - 1
    grid = np.arange(0.0, 100.0 + float(_EPS32), 100.0 / intervals)
    return grid[::-1].copy()


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of a BraTS 2020 region (WT: > 0, TC: 1 or 4, ET: 4) from a label volume."""
    if region == "WT":
        return labels > 0
    if region == "TC":
        return (labels == 1) | (labels == 4)
    if region == "ET":
        return labels == 4
    raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")


def trapezoid_auc(curve: np.ndarray, taus: np.ndarray) -> float:
    """Area under ``curve`` against ``taus`` (descending) over [0, 100], divided by 100.

    Same arithmetic as ``sklearn.metrics.auc`` on the descending grid (trapezoid rule, sign
    flipped), without its ``-0.0`` for all-zero curves.
    """
    trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009 - numpy < 2 has only trapz
    area = -float(trapezoid(curve, taus))
    return area / 100.0 + 0.0  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True)
class RegionScore:
    """QU-BraTS result of one region of one case.

    Attributes:
        region: ``"WT"``, ``"TC"`` or ``"ET"``.
        thresholds: the grid, descending, shape (T,).
        dsc: DSC at each threshold, float64, shape (T,).
        ftp: filtered true-positive ratio at each threshold, float32 values, shape (T,).
        ftn: filtered true-negative ratio at each threshold, float32 values, shape (T,).
        dsc_auc, ftp_auc, ftn_auc: trapezoid AUCs / 100, in [0, 1].
        score: (dsc_auc + (1 - ftp_auc) + (1 - ftn_auc)) / 3.
    """

    region: str
    thresholds: np.ndarray
    dsc: np.ndarray
    ftp: np.ndarray
    ftn: np.ndarray
    dsc_auc: float
    ftp_auc: float
    ftn_auc: float
    score: float


@dataclass(frozen=True)
class CaseScore:
    """QU-BraTS results of one case: one :class:`RegionScore` per region, in REGIONS order."""

    case_id: str
    regions: tuple[RegionScore, ...]

    def __getitem__(self, region: str) -> RegionScore:
        for result in self.regions:
            if result.region == region:
                return result
        raise KeyError(region)


def _keep_index(uncertainty: np.ndarray, taus_ascending: np.ndarray) -> np.ndarray:
    """Per voxel: index (into ascending taus) of the first threshold at which it is kept.

    A voxel is kept at tau iff u <= tau, so the index is ``searchsorted(taus, u, 'left')``;
    ``len(taus)`` means never kept (u > 100), and NaN (never filtered) gets 0.
    """
    values = uncertainty.astype(np.float64, copy=False)
    index = np.searchsorted(taus_ascending, values, side="left")
    nan = np.isnan(values)
    if nan.any():
        index[nan] = 0
    return index


def _keep_histogram(uncertainty: np.ndarray, taus_ascending: np.ndarray) -> np.ndarray:
    """Number of voxels per keep index (see :func:`_keep_index`), shape (len(taus) + 1,).

    Integer maps of up to 16 bits are histogrammed by value first (one ``bincount``), and the
    value histogram is folded onto keep indices: no per-voxel search at all.
    """
    n = len(taus_ascending) + 1
    if uncertainty.dtype.kind in "ui" and uncertainty.dtype.itemsize <= 2:
        info = np.iinfo(uncertainty.dtype)
        values = uncertainty.astype(np.int64, copy=False) - info.min if info.min else uncertainty
        by_value = np.bincount(values, minlength=info.max - info.min + 1)
        value_index = np.searchsorted(taus_ascending, np.arange(info.min, info.max + 1, dtype=np.float64), "left")
        return np.bincount(value_index, weights=by_value, minlength=n).astype(np.int64)
    return np.bincount(_keep_index(uncertainty, taus_ascending), minlength=n)


def score_region(
    region: str,
    truth: np.ndarray,
    prediction: np.ndarray,
    uncertainty: np.ndarray,
    brain: np.ndarray | None,
    taus: np.ndarray,
    *,
    brain_voxels: np.ndarray | None = None,
    order: Literal["C", "F"] = "C",
) -> RegionScore:
    """QU-BraTS curves, AUCs and score of one region.

    Args:
        region: region name (only recorded).
        truth: boolean region mask of the reference, any shape S.
        prediction: boolean region mask of the prediction, shape S.
        uncertainty: the region's uncertainty map, shape S, any real dtype (0 = certain).
        brain: boolean brain mask, shape S; None = every voxel is brain.
        taus: thresholds, descending (see :func:`thresholds`).
        brain_voxels: ``flatnonzero(brain)`` (flattened in ``order``), when the caller scores
            several regions.
        order: the order in which all arrays are flattened: ``"F"`` for NIfTI data as nibabel
            loads it (column-major, so flattening is free), ``"C"`` otherwise.

    Returns:
        The :class:`RegionScore`.
    """
    taus_ascending = taus[::-1]
    n = len(taus)
    u = uncertainty.ravel(order)
    truth, prediction = truth.ravel(order), prediction.ravel(order)
    # Voxels in truth or prediction, where every count but the true negatives lives.
    tumour = np.flatnonzero(truth | prediction)
    in_brain = brain.ravel(order)[tumour] if brain is not None else np.ones(tumour.size, dtype=bool)
    category = (
        truth[tumour].astype(np.int64) | (prediction[tumour].astype(np.int64) << 1) | (in_brain.astype(np.int64) << 2)
    )
    keep = _keep_index(u[tumour], taus_ascending)
    table = np.bincount(keep * 8 + category, minlength=(n + 1) * 8).reshape(n + 1, 8)
    # True negatives (neither truth nor prediction, in the brain): every brain voxel minus the
    # tumour voxels in the brain, per keep index.
    if brain is None:
        brain_hist = _keep_histogram(u, taus_ascending)
    else:
        voxels = np.flatnonzero(brain.ravel(order)) if brain_voxels is None else brain_voxels
        brain_hist = _keep_histogram(u[voxels], taus_ascending)
    table[:, 4] = brain_hist - table[:, 5:8].sum(axis=1)  # category 4: brain, not truth, not prediction

    # kept[k, c]: voxels of category c kept at ascending threshold k, back in descending order.
    kept = np.cumsum(table[:n], axis=0)[::-1]
    total = table.sum(axis=0)

    def count(counts: np.ndarray, truth_bit: int | None, pred_bit: int | None, brain_bit: int | None) -> np.ndarray:
        cats = [
            c
            for c in range(8)
            if (truth_bit is None or (c & 1) == truth_bit)
            and (pred_bit is None or ((c >> 1) & 1) == pred_bit)
            and (brain_bit is None or ((c >> 2) & 1) == brain_bit)
        ]
        return counts[..., cats].sum(axis=-1)

    intersection = count(kept, 1, 1, None).astype(np.float64)
    union = count(kept, 1, None, None) + count(kept, None, 1, None)
    dsc = np.where(union == 0, 1.0, 2.0 * intersection / np.maximum(union, 1))

    def filtered_ratio(truth_bit: int, pred_bit: int) -> np.ndarray:
        # float32 like the official script: (all - kept) / (all + eps)
        all_count = np.float32(count(total, truth_bit, pred_bit, 1))
        kept_count = count(kept, truth_bit, pred_bit, 1).astype(np.float32)
        return ((all_count - kept_count) / (all_count + _EPS32)).astype(np.float32)

    ftp = filtered_ratio(1, 1)
    ftn = filtered_ratio(0, 0)
    dsc_auc = trapezoid_auc(dsc, taus)
    ftp_auc = trapezoid_auc(ftp, taus)
    ftn_auc = trapezoid_auc(ftn, taus)
    score = (dsc_auc + (1.0 - ftp_auc) + (1.0 - ftn_auc)) / 3.0
    return RegionScore(region, taus, dsc, ftp, ftn, dsc_auc, ftp_auc, ftn_auc, score)


def score_case(
    prediction: np.ndarray,
    uncertainty: Mapping[str, np.ndarray],
    truth: np.ndarray,
    brain_mask: np.ndarray | None,
    *,
    case_id: str = "case",
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
) -> CaseScore:
    """Score one case.

    Args:
        prediction: predicted labels (BraTS 2020: 0/1/2/4), shape S (e.g. 240x240x155).
        uncertainty: per region (``"WT"``, ``"TC"``, ``"ET"``) the uncertainty map, shape S,
            values in [0, 100] (0 = certain).
        truth: reference labels, shape S.
        brain_mask: brain mask (voxels > 0 are brain) or a T1 image, shape S; None = every voxel.
        case_id: recorded in the result.
        num_thresholds: size of the threshold grid (41: 100 -> 0 in steps of 2.5).

    Returns:
        The :class:`CaseScore`.

    Raises:
        ValueError: shapes differ or a region map is missing.
    """
    shape = np.shape(truth)
    arrays = {"prediction": prediction, "brain mask": brain_mask}
    arrays.update({f"{r} uncertainty": uncertainty.get(r) for r in REGIONS})
    for name, array in arrays.items():
        if array is None and name != "brain mask":
            raise ValueError(f"{case_id}: no {name} map")
        if array is not None and np.shape(array) != shape:
            raise ValueError(f"{case_id}: {name} has shape {np.shape(array)}, truth has {shape}")
    truth = np.asarray(truth)
    # NIfTI volumes come column-major from nibabel: flatten everything in that order for free.
    order: Literal["C", "F"] = "F" if truth.flags.f_contiguous and not truth.flags.c_contiguous else "C"
    brain = None if brain_mask is None else np.asarray(brain_mask) > 0
    brain_voxels = None if brain is None else np.flatnonzero(brain.ravel(order))
    taus = thresholds(num_thresholds)
    results = tuple(
        score_region(
            region,
            region_mask(truth, region),
            region_mask(np.asarray(prediction), region),
            np.asarray(uncertainty[region]),
            brain,
            taus,
            brain_voxels=brain_voxels,
            order=order,
        )
        for region in REGIONS
    )
    return CaseScore(case_id, results)
