"""Synthetic QU-BraTS submissions for BraTS NIfTI cases: what teams of different quality send.

For each case folder ``BraTS2021_XXXXX/`` (with ``_seg``), a submission holds ``{ID}.nii.gz``
(a perturbed segmentation) and ``{ID}_unc_{whole,core,enhance}.nii.gz`` (uint8 maps in [0, 100]).
Team styles:

- ``calibrated``: uncertainty high near the predicted region's boundary, where the errors are;
- ``overconfident``: the same segmentation, all-zero maps (never filters anything);
- ``random``: the same segmentation, uniformly random maps.

Deterministic for a seed; used by ``medimg demo`` and the tests of the scorer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage
from scipy import ndimage

from medimg.synth.common import item_rng
from medimg.writers import atomic_path

__all__ = ["TEAM_STYLES", "generate_submission"]

TEAM_STYLES = ("calibrated", "overconfident", "random")
_REGIONS = {"whole": (1, 2, 4), "core": (1, 4), "enhance": (4,)}


def _perturb(seg: np.ndarray, rng: np.random.Generator, error_rate: float) -> np.ndarray:
    """Flip labels of boundary voxels to a neighbour's label (segmentation errors at edges)."""
    grown = ndimage.grey_dilation(seg, size=3)
    boundary = (grown != seg) | (ndimage.grey_erosion(seg, size=3) != seg)
    flip = boundary & (rng.random(seg.shape) < error_rate)
    out = seg.copy()
    out[flip] = grown[flip]
    return out


def _boundary_uncertainty(
    mask: np.ndarray, spacing: np.ndarray, rng: np.random.Generator, width_mm: float
) -> np.ndarray:
    """100 at the boundary of ``mask``, falling off with distance (mm), plus a little noise."""
    if not mask.any():
        return np.zeros(mask.shape, np.uint8)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    distance = np.where(mask, inside, outside)
    values = 100.0 * np.exp(-((distance / width_mm) ** 2)) + rng.normal(0, 3, mask.shape)
    return np.clip(np.round(values), 0, 100).astype(np.uint8)


def generate_submission(
    nifti_root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    style: str = "calibrated",
    seed: int = 0,
    error_rate: float = 0.3,
) -> list[Path]:
    """Write one team's submission for every case under ``nifti_root``.

    Args:
        nifti_root: BraTS NIfTI folder (``BraTS2021_XXXXX/BraTS2021_XXXXX_seg.nii.gz``).
        out: submission folder (flat, challenge naming).
        style: one of :data:`TEAM_STYLES`.
        seed: seed of the segmentation errors and map noise.
        error_rate: fraction of boundary voxels whose label is wrong.

    Returns:
        The files written.

    Raises:
        ValueError: unknown style, or no cases under ``nifti_root``.
    """
    if style not in TEAM_STYLES:
        raise ValueError(f"unknown team style {style!r}; choose from {TEAM_STYLES}")
    segs = sorted(Path(nifti_root).glob("*/*_seg.nii.gz"))
    if not segs:
        raise ValueError(f"{nifti_root}: no BraTS cases (*/*_seg.nii.gz)")
    written = []
    for seg_path in segs:
        case_id = seg_path.name[: -len("_seg.nii.gz")]
        image = cast(SpatialImage, nib.load(str(seg_path)))
        seg = np.asarray(image.dataobj).astype(np.uint8)
        spacing = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
        rng = item_rng(seed, "qubrats-submission", case_id)
        prediction = _perturb(seg, rng, error_rate)
        arrays = {f"{case_id}.nii.gz": prediction}
        for name, labels in _REGIONS.items():
            if style == "calibrated":
                unc = _boundary_uncertainty(np.isin(prediction, labels), spacing, rng, width_mm=4.0)
            elif style == "overconfident":
                unc = np.zeros(seg.shape, np.uint8)
            else:
                unc = rng.integers(0, 101, seg.shape).astype(np.uint8)
            arrays[f"{case_id}_unc_{name}.nii.gz"] = unc
        for name, array in arrays.items():
            path = Path(out) / name
            with atomic_path(path) as tmp:
                nib.save(nib.Nifti1Image(array, image.affine), str(tmp))
            written.append(path)
    return written
