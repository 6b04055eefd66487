"""BraTS lesion-wise evaluation of one region: lesions, their matching, and per-lesion scores.

For one region (a binary mask on the reference and on the prediction, e.g. ET = label 3):

1. **Lesions** are the connected components of each mask, face-connected (6 neighbours in 3-D,
   :func:`scipy.ndimage.label`'s default, which is also the default of the official engine,
   panoptica, when it labels with SciPy).
2. **Matching** pairs reference and predicted lesions one-to-one by maximum bipartite matching on
   the Dice matrix (:func:`scipy.optimize.linear_sum_assignment`); a pair counts only when its
   Dice is at least :data:`MATCH_THRESHOLD` (1e-6, i.e. the lesions overlap). Unpaired reference
   lesions are false negatives, unpaired predicted lesions false positives.
3. Each matched pair gets its **Dice**, **HD95** and **NSD** (:mod:`medimg.evaluation.surface`),
   the two instance masks being compared alone (other lesions ignored).

:func:`evaluate_region` returns a :class:`RegionResult`; the challenge-level summaries (regions
per challenge, the METS small/large rules, CSV columns) are in
:mod:`medimg.evaluation.brats_lesionwise`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from medimg.evaluation.surface import surface_metrics

__all__ = ["MATCH_THRESHOLD", "Lesion", "RegionResult", "connected_lesions", "evaluate_region", "match_lesions"]

#: A reference and a predicted lesion are matched when their Dice is at least this.
MATCH_THRESHOLD = 1e-6


@dataclass(frozen=True)
class Lesion:
    """One reference lesion: its size and, when matched, the scores of its pair."""

    voxels: int
    volume_mm3: float
    matched: bool
    dice: float = math.nan
    hd95: float = math.nan
    nsd: float = math.nan


@dataclass(frozen=True)
class RegionResult:
    """Detection counts and reference lesions of one region of one case."""

    n_ref: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def f1(self) -> float:
        """Detection F1, 2TP / (2TP + FP + FN); NaN with no lesion on either side."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else math.nan

    def matched(self, metric: str) -> list[float]:
        """The ``dice``/``hd95``/``nsd`` values of the matched reference lesions, in reference order."""
        return [getattr(lesion, metric) for lesion in self.lesions if lesion.matched]


def connected_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected components of ``mask``: ``(labels, count)``, labels 1..count, 0 = background."""
    mask = np.asarray(mask, dtype=bool)
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    return labels, int(count)


def match_lesions(
    ref_labels: np.ndarray, n_ref: int, pred_labels: np.ndarray, n_pred: int
) -> tuple[list[tuple[int, int, float]], np.ndarray, np.ndarray]:
    """Maximum-Dice one-to-one matching of labelled lesions.

    Returns:
        ``(pairs, ref_sizes, pred_sizes)``: ``pairs`` lists ``(ref_label, pred_label, dice)`` with
        dice >= :data:`MATCH_THRESHOLD`, sorted by reference label; sizes are voxel counts
        indexed by label (index 0 = background).
    """
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    if n_ref == 0 or n_pred == 0:
        return [], ref_sizes, pred_sizes
    both = (ref_labels > 0) & (pred_labels > 0)
    codes = ref_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    overlap = np.bincount(codes, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)[1:, 1:]
    dice = 2.0 * overlap / (ref_sizes[1:, None] + pred_sizes[None, 1:])
    rows, cols = linear_sum_assignment(dice, maximize=True)
    pairs = [(int(r) + 1, int(c) + 1, float(dice[r, c])) for r, c in zip(rows, cols, strict=True)]
    pairs = sorted(p for p in pairs if p[2] >= MATCH_THRESHOLD)
    return pairs, ref_sizes, pred_sizes


def _pair_scores(
    ref_labels: np.ndarray,
    ref_box: tuple[slice, ...],
    ref_label: int,
    pred_labels: np.ndarray,
    pred_box: tuple[slice, ...],
    pred_label: int,
    spacing: Sequence[float],
) -> tuple[float, float]:
    """``(hd95, nsd)`` of one reference lesion against one predicted lesion, on their joint box."""
    box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(ref_box, pred_box, strict=True))
    return surface_metrics(ref_labels[box] == ref_label, pred_labels[box] == pred_label, spacing)


def evaluate_region(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> RegionResult:
    """Lesion-wise result of one region.

    Args:
        reference, prediction: boolean masks of the region, same shape.
        spacing: voxel size per axis in mm (used for HD95, NSD and lesion volumes).
    """
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape")
    spacing = tuple(float(s) for s in spacing)
    voxel_volume = float(np.prod(spacing))
    ref_labels, n_ref = connected_lesions(reference)
    pred_labels, n_pred = connected_lesions(prediction)
    pairs, ref_sizes, _ = match_lesions(ref_labels, n_ref, pred_labels, n_pred)
    by_ref = {r: (p, d) for r, p, d in pairs}
    ref_boxes, pred_boxes = ndimage.find_objects(ref_labels), ndimage.find_objects(pred_labels)
    lesions = []
    for label in range(1, n_ref + 1):
        voxels = int(ref_sizes[label])
        if label in by_ref:
            pred_label, dice = by_ref[label]
            hd, nsd = _pair_scores(
                ref_labels, ref_boxes[label - 1], label, pred_labels, pred_boxes[pred_label - 1], pred_label, spacing
            )
            lesions.append(Lesion(voxels, voxels * voxel_volume, True, dice, hd, nsd))
        else:
            lesions.append(Lesion(voxels, voxels * voxel_volume, False))
    tp = len(pairs)
    return RegionResult(n_ref, n_pred, tp, n_pred - tp, n_ref - tp, lesions)
