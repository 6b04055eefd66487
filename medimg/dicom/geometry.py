"""Plane geometry of a stack of frames: orientation label, geometric slice order, spacing.

Slices are ordered by their position projected on the slice normal, never by InstanceNumber.
The checks here are what a series must pass before it can become a volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GeometryError", "SliceStack", "affine_lps", "dcm2niix_orientation", "orientation_label", "sort_slices"]


class GeometryError(ValueError):
    """A stack of frames that is not a regular volume (duplicates, gaps, mixed orientation)."""


def orientation_label(iop: Sequence[float] | None) -> str | None:
    """Name the acquisition plane from ImageOrientationPatient.

    Args:
        iop: six direction cosines (row direction, then column direction), LPS.

    Returns:
        ``"sagittal"``, ``"coronal"`` or ``"axial"`` after the patient axis closest to the
        slice normal; None when ``iop`` is None.
    """
    if iop is None:
        return None
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


@dataclass(frozen=True)
class SliceStack:
    """A validated stack of frames.

    Attributes:
        order: indices into the input positions, sorted along the slice normal (ascending).
        spacing: distance between consecutive slices in mm (None for a single slice).
        normal: unit slice normal, row x column direction cosines (LPS).
    """

    order: list[int]
    spacing: float | None
    normal: tuple[float, float, float]


def sort_slices(
    positions: Sequence[Sequence[float]],
    orientations: Sequence[Sequence[float]],
    *,
    rtol: float = 0.02,
    atol: float = 1e-3,
) -> SliceStack:
    """Sort frames by position along the slice normal and check they form a regular volume.

    Args:
        positions: ImagePositionPatient per frame, shape (N, 3), mm.
        orientations: ImageOrientationPatient per frame, shape (N, 6).
        rtol: tolerated relative deviation of a gap from the median slice spacing.
        atol: absolute tolerance in mm (positions closer than this are duplicates).

    Returns:
        The :class:`SliceStack`.

    Raises:
        GeometryError: frames differ in orientation, are not stacked along the normal, share a
            position, or are unevenly spaced (missing slices).
    """
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    ori = np.asarray(orientations, dtype=float).reshape(-1, 6)
    if np.abs(ori - ori[0]).max() > 1e-3:
        raise GeometryError("frames differ in ImageOrientationPatient")
    row, col = ori[0, :3], ori[0, 3:]
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise GeometryError("ImageOrientationPatient row and column directions are parallel")
    normal /= norm
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    if len(pos) == 1:
        return SliceStack([0], None, tuple(normal))
    in_plane = pos[order] - np.outer(dist[order], normal)
    if np.abs(in_plane - in_plane[0]).max() > max(atol, 0.01):
        raise GeometryError("slices are not stacked along their normal (in-plane offsets differ)")
    gaps = np.diff(dist[order])
    dup = np.flatnonzero(gaps <= atol)
    if dup.size:
        where = ", ".join(f"{dist[order][i]:.3f} mm" for i in dup[:3])
        raise GeometryError(f"duplicate slice positions: {dup.size + 1} frames share positions ({where})")
    spacing = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - spacing) > rtol * spacing + atol)
    if bad.size:
        # With slices missing the median can be off; the smallest gap is the true spacing.
        spacing = float(gaps.min())
        big = gaps.max()
        if big > 1.5 * spacing:
            start = float(dist[order][int(np.argmax(gaps))])
            missing = int(round(big / spacing)) - 1
            where = ", ".join(f"{start + m * spacing:.1f} mm" for m in range(1, min(missing, 3) + 1))
            raise GeometryError(
                f"missing slices: no slice at {where}{' ...' if missing > 3 else ''} along the slice normal "
                f"(a gap of {big:.3f} mm where the spacing is {spacing:.3f} mm, "
                f"about {missing} slice(s) missing)"
            )
        raise GeometryError(f"irregular slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm")
    return SliceStack([int(i) for i in order], spacing, (float(normal[0]), float(normal[1]), float(normal[2])))


def affine_lps(
    first_position: Sequence[float],
    iop: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_spacing: float,
) -> np.ndarray:
    """Voxel-to-patient (LPS) affine for array index order (column, row, slice).

    The index order is MONAI's for DICOM (``swap_ij``): axis 0 runs along a row (the row
    direction cosine), axis 1 down a column, axis 2 along the slice normal.

    Args:
        first_position: ImagePositionPatient of the first sorted slice, mm.
        iop: ImageOrientationPatient.
        pixel_spacing: PixelSpacing (row spacing, column spacing), mm.
        slice_spacing: distance between sorted slices, mm.

    Returns:
        float64 array of shape (4, 4).
    """
    from highdicom.spatial import create_affine_matrix_from_attributes

    return create_affine_matrix_from_attributes(
        image_position=[float(v) for v in first_position],
        image_orientation=[float(v) for v in iop],
        pixel_spacing=[float(v) for v in pixel_spacing],
        spacing_between_slices=float(slice_spacing),
        index_convention="RD",
    )


def dcm2niix_orientation(
    affine_ras: np.ndarray, three_d: bool, stored_normal: Sequence[float] | None = None
) -> np.ndarray:
    """The nibabel orientation (``ornt``) that turns MONAI's DICOM layout into dcm2niix's.

    MONAI's layout (column index, row index, slices ascending along row x column) is what
    :func:`affine_lps` describes. dcm2niix writes the rows bottom-up (the row axis flipped) and
    keeps slices ascending along row x column, except for Siemens mosaics, whose slices it keeps
    in mosaic order, along the CSA SliceNormalVector (``stored_normal``). A 3-D acquisition
    (MRAcquisitionType 3D) it turns to the closest canonical (RAS) orientation. These rules are
    the ones that reproduce dcm2niix's output on its regression suites (dcm_qa, dcm_qa_nih,
    dcm_qa_ge) and on generated series.

    Args:
        affine_ras: voxel-to-RAS affine of the MONAI layout.
        three_d: the series is a 3-D acquisition.
        stored_normal: for mosaics, the direction (LPS) in which the mosaic stores its slices.

    Returns:
        A (3, 2) ``ornt`` array for :func:`nibabel.orientations.apply_orientation`.
    """
    from nibabel.orientations import io_orientation

    if three_d:
        return io_orientation(affine_ras)
    flip_slices = False
    if stored_normal is not None:
        slice_lps = np.asarray(affine_ras, float)[:3, 2] * np.array([-1.0, -1.0, 1.0])
        flip_slices = float(slice_lps @ np.asarray(stored_normal, float)) < 0
    return np.array([[0, 1], [1, -1], [2, -1 if flip_slices else 1]], dtype=float)
