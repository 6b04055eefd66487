"""The per-image rows behind every figure of the audit: AUPRC per image, SSIM per image and state or model pair.

Each function scores maps already computed (:class:`~saliency.methods.MapBatch`) and returns the
rows written to ``localization.csv``, ``randomization.csv``, ``repeatability.csv`` and
``reproducibility.csv``. SSIM is taken at the protocol's data range (column ``ssim``) and, when the
protocol calibrates its agreement line, also at the line's range (column ``ssim_range2``); the
column is empty otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from saliency.criteria import auprc, inter_image_ssim, ssim
from saliency.protocol import PAPER_LINE_RANGE

__all__ = [
    "LOCALIZATION_COLUMNS",
    "PAIR_COLUMNS",
    "RANDOMIZATION_COLUMNS",
    "baseline_ssim",
    "calibration_pairs",
    "localization_rows",
    "pair_rows",
    "prior_maps",
    "stage_rows",
]

LOCALIZATION_COLUMNS = (
    "image_id",
    "method",
    "source",
    "average_precision",
    "trapezoid",
    "degenerate",
    "explained_class",
    "true_class",
)
RANDOMIZATION_COLUMNS = (
    "model",
    "method",
    "stage_index",
    "stage",
    "image_id",
    "ssim",
    "ssim_range2",
    "degenerate",
)
PAIR_COLUMNS = ("image_id", "method", "model_a", "model_b", "ssim", "ssim_range2", "degenerate_a", "degenerate_b")


def _ssims(a: np.ndarray, b: np.ndarray, data_range: float, calibrate: bool) -> tuple[float, float | str]:
    value = ssim(a, b, data_range=data_range)
    return value, (ssim(a, b, data_range=PAPER_LINE_RANGE) if calibrate else "")


def prior_maps(masks: np.ndarray, prior: np.ndarray | None) -> Callable[[int], np.ndarray]:
    """Image i's average-mask prior: ``prior`` itself, or the mean of the *other* images' masks."""
    if prior is not None:
        fixed = np.asarray(prior, dtype=np.float32)
        return lambda i: fixed
    n = len(masks)
    if n < 2:
        raise ValueError("a leave-one-out prior needs at least two images with masks")
    total = masks.reshape(n, -1).sum(axis=0)
    shape = masks.shape[1:]
    return lambda i: ((total - masks[i].ravel()) / (n - 1)).reshape(shape)


def localization_rows(
    ids: Sequence[str],
    masks: np.ndarray,
    labels: np.ndarray,
    source: str,
    method: str,
    map_of: Callable[[int], np.ndarray],
    degenerate: np.ndarray,
    targets: np.ndarray | None,
) -> list[dict[str, Any]]:
    """AUPRC of one source's maps (average precision and trapezoid) per image."""
    rows = []
    for i, image_id in enumerate(ids):
        result = auprc(map_of(i), masks[i])
        rows.append(
            {
                "image_id": image_id,
                "method": method,
                "source": source,
                "average_precision": result["average_precision"],
                "trapezoid": result["trapezoid"],
                "degenerate": bool(degenerate[i]),
                "explained_class": int(targets[i]) if targets is not None else "",
                "true_class": int(labels[i]),
            }
        )
    return rows


def stage_rows(
    ids: Sequence[str],
    role: str,
    method: str,
    index: int,
    stage: str,
    reference: Any,
    batch: Any,
    data_range: float,
    *,
    calibrate: bool,
) -> list[dict[str, Any]]:
    """SSIM per image between a randomized state's maps and the original model's."""
    rows = []
    for i, image_id in enumerate(ids):
        value, range2 = _ssims(reference.maps[i], batch.maps[i], data_range, calibrate)
        rows.append(
            {
                "model": role,
                "method": method,
                "stage_index": index,
                "stage": stage,
                "image_id": image_id,
                "ssim": value,
                "ssim_range2": range2,
                "degenerate": bool(batch.degenerate[i]),
            }
        )
    return rows


def pair_rows(
    ids: Sequence[str], a: Any, b: Any, method: str, names: tuple[str, str], data_range: float, *, calibrate: bool
) -> list[dict[str, Any]]:
    """SSIM per image between the maps of two models."""
    rows = []
    for i, image_id in enumerate(ids):
        value, range2 = _ssims(a.maps[i], b.maps[i], data_range, calibrate)
        rows.append(
            {
                "image_id": image_id,
                "method": method,
                "model_a": names[0],
                "model_b": names[1],
                "ssim": value,
                "ssim_range2": range2,
                "degenerate_a": bool(a.degenerate[i]),
                "degenerate_b": bool(b.degenerate[i]),
            }
        )
    return rows


def baseline_ssim(batch: Any, *, pairs_per_image: int, data_range: float, seed: int) -> np.ndarray:
    """The inter-image SSIM pairs of one model's maps, ``(N, pairs_per_image)``, image-major."""
    maps = list(batch.maps)
    values = inter_image_ssim(maps, pairs_per_image=pairs_per_image, data_range=data_range, seed=seed)
    return values.reshape(len(maps), pairs_per_image)


def calibration_pairs(
    method: str, rand_rows: Sequence[Mapping[str, Any]], pairs: Mapping[str, Sequence[Mapping[str, Any]]]
) -> tuple[np.ndarray, np.ndarray]:
    """Every (range-2 SSIM, protocol-range SSIM) pair of ``method`` in randomization.csv and the model-pair tables.

    Randomized states span the whole SSIM scale (1 at the top state down to unrelated maps), so they
    place the line; the inter-image baseline pairs are not used (their per-pair values are not written).
    """
    rows = [r for r in rand_rows if r["method"] == method and r["stage_index"] > 0]
    rows += [r for group in pairs.values() for r in group if r["method"] == method]
    scored = [(float(r["ssim_range2"]), float(r["ssim"])) for r in rows if r["ssim_range2"] != ""]
    array = np.asarray(scored, dtype=float).reshape(-1, 2)
    return array[:, 0], array[:, 1]
