"""Diffusion b-values and gradient directions from DICOM headers, written as FSL ``.bval``/``.bvec``.

Per volume, the b-value and gradient direction come from the standard tags (DiffusionBValue
(0018,9087), DiffusionGradientOrientation (0018,9089), at the top level or in
MRDiffusionSequence), else from the Siemens CSA image header (``B_value``,
``DiffusionGradientDirection``). Directions are in patient (LPS) coordinates there; FSL wants
them along the NIfTI voxel axes, with the first axis negated when the voxel-to-world matrix has a
positive determinant (FSL's radiological voxel convention). That is what dcm2niix writes too.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Diffusion", "diffusion_of", "fsl_bvecs", "write_fsl"]


@dataclass(frozen=True)
class Diffusion:
    """One volume's diffusion weighting.

    Attributes:
        bval: b-value in s/mm^2.
        direction: unit gradient direction in patient (LPS) coordinates; None for b=0 or an
            isotropic (trace) image.
    """

    bval: float
    direction: tuple[float, float, float] | None


def _standard(ds: Any) -> tuple[Any, Any]:
    bval = ds.get("DiffusionBValue")
    vector = ds.get("DiffusionGradientOrientation")
    for item in ds.get("MRDiffusionSequence") or []:
        bval = item.get("DiffusionBValue", bval)
        for gradient in item.get("DiffusionGradientDirectionSequence") or []:
            vector = gradient.get("DiffusionGradientOrientation", vector)
    return bval, vector


def _siemens_csa(ds: Any) -> tuple[Any, Any]:
    if "SIEMENS" not in str(ds.get("Manufacturer", "")).upper():
        return None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nibabel's "experimental readers" notice
            from nibabel.nicom import csareader

            csa = csareader.get_csa_header(ds, "image")
    except Exception:  # noqa: BLE001 - a broken CSA header only means no diffusion information
        return None, None
    if not csa:
        return None, None
    try:
        bval = csareader.get_b_value(csa)
    except (KeyError, IndexError, TypeError, ValueError):
        bval = None
    try:
        vector = csareader.get_vector(csa, "DiffusionGradientDirection", 3)
    except (KeyError, IndexError, TypeError, ValueError):
        vector = None
    return bval, vector


def diffusion_of(ds: Any) -> Diffusion | None:
    """The diffusion weighting of one image, or None when its header has none."""
    bval, vector = _standard(ds)
    if bval is None:
        bval, vector = _siemens_csa(ds)
    if bval is None:
        return None
    name = getattr(ds, "filename", None) or "<dataset>"
    try:
        bval = float(bval)
        v = np.asarray([float(x) for x in vector], dtype=float) if vector is not None else None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: unreadable diffusion b-value or gradient direction: {exc}") from exc
    if v is not None and v.shape != (3,):
        raise ValueError(f"{name}: the diffusion gradient direction has {v.size} values, not 3")
    direction = None
    if v is not None and bval > 0:
        norm = float(np.linalg.norm(v))
        if norm > 1e-6:
            direction = tuple(float(x) for x in v / norm)
    return Diffusion(bval, direction)  # type: ignore[arg-type]


def fsl_bvecs(directions: Sequence[tuple[float, float, float] | None], affine_ras: np.ndarray) -> np.ndarray:
    """Gradient directions (LPS) -> FSL bvecs along the NIfTI voxel axes, shape (3, N).

    Args:
        directions: per volume, the unit direction in LPS, or None (written as 0 0 0).
        affine_ras: the NIfTI's voxel-to-RAS affine.
    """
    linear = np.asarray(affine_ras, dtype=float)[:3, :3]
    axes = linear / np.linalg.norm(linear, axis=0)  # unit RAS direction of each voxel axis
    out = np.zeros((3, len(directions)))
    for n, direction in enumerate(directions):
        if direction is None:
            continue
        ras = np.asarray(direction, dtype=float) * np.array([-1.0, -1.0, 1.0])
        out[:, n] = axes.T @ ras
    if np.linalg.det(linear) > 0:
        out[0] = -out[0]
    out[np.abs(out) < 5e-7] = 0.0  # no "-0" in the text files
    return out


def write_fsl(stem: str | Path, diffusion: Sequence[Diffusion | None], affine_ras: np.ndarray) -> list[Path]:
    """Write ``stem.bval`` and ``stem.bvec`` for a 4-D NIfTI's volumes; returns the two paths."""
    from medimg.writers import write_text

    bvals = [d.bval if d is not None else 0.0 for d in diffusion]
    bvecs = fsl_bvecs([d.direction if d is not None else None for d in diffusion], affine_ras)
    bval_path = write_text(f"{stem}.bval", " ".join(f"{b:g}" for b in bvals) + "\n")
    rows = [" ".join(f"{v:.6g}" for v in row) for row in bvecs]
    bvec_path = write_text(f"{stem}.bvec", "\n".join(rows) + "\n")
    return [bval_path, bvec_path]
