"""Decode a series into a 3-D or 4-D voxel array in dcm2niix's layout, for NIfTI output.

Frames come from every file (single-frame, multi-frame, or Siemens mosaics cut into slices),
are grouped into volumes (:mod:`medimg.dicom.series4d`) and stored (X, Y, Z[, T]) with the
voxel order dcm2niix writes (:func:`medimg.dicom.geometry.dcm2niix_orientation`), so that
voxel arrays equal dcm2niix's before any reorientation and its axis names ("j-") apply.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medimg.dicom.decode import VOI
from medimg.dicom.geometry import GeometryError, affine_lps, dcm2niix_orientation
from medimg.dicom.header import header_from_dataset
from medimg.dicom.mosaic import MosaicError, detile, mosaic_layout
from medimg.dicom.series4d import frame_order_key, split_volumes
from medimg.dicom.volume import LPS_TO_RAS, SeriesError, decode_frames, read_dataset

__all__ = ["Stack", "load_stack"]


@dataclass
class Stack:
    """A decoded series in dcm2niix's voxel layout.

    Attributes:
        array: float32 modality values, (X, Y, Z) or (X, Y, Z, T).
        affine: voxel-to-RAS affine (mm).
        volumes: per volume, the datasets of its slices in the order the array stores them
            (a mosaic's one dataset repeats for each of its slices).
        pixel_spacing: (row, column) spacing in mm.
        slice_spacing: distance between slices in mm.
        mosaic: whether the frames were cut from Siemens mosaics.
        repetition_time: RepetitionTime in seconds (the time between volumes), or None.
    """

    array: np.ndarray
    affine: np.ndarray
    volumes: list[list[Any]]
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    mosaic: bool
    repetition_time: float | None = None


def _frames(
    datasets: list[Any], paths: list[str], voi: VOI, name: str
) -> tuple[list[np.ndarray], list[Any], list[Any], list[Any], list[tuple[float, ...]]]:
    """Every 2-D frame with its position, orientation, dataset and acquisition-order key."""
    headers = [header_from_dataset(ds, p) for ds, p in zip(datasets, paths, strict=True)]
    pixels, _ = decode_frames(datasets, headers, voi, name, False)
    frames, positions, orientations, owners, keys = [], [], [], [], []
    at = 0
    for f, (ds, header) in enumerate(zip(datasets, headers, strict=True)):
        mine = pixels[at : at + header.frames]
        at += header.frames
        if header.frame_positions is None or header.frame_orientation is None:
            raise SeriesError(f"{name}: {header.path} has no ImagePositionPatient/ImageOrientationPatient")
        try:
            layout = mosaic_layout(ds, header.path)
        except MosaicError as exc:
            raise SeriesError(str(exc)) from exc
        for k, frame in enumerate(mine):
            parts = detile(frame, layout) if layout else frame[None]
            where = layout.positions if layout else [header.frame_positions[k]]
            for j, (part, position) in enumerate(zip(parts, where, strict=True)):
                frames.append(part)
                positions.append(position)
                orientations.append(header.frame_orientation)
                owners.append(ds)
                keys.append(frame_order_key(ds.get, f, k * 10_000 + j))
    return frames, positions, orientations, owners, keys


def load_stack(paths: Sequence[str | os.PathLike[str]], *, voi: VOI = None) -> Stack:
    """Decode the files of one series into a :class:`Stack`.

    Raises:
        SeriesError: mixed sizes, no geometry, colour, broken 4-D structure, missing slices,
            each said in user words with the series named.
        DecodeError: a file cannot be read or decoded.
    """
    files = [os.fspath(p) for p in paths]
    if not files:
        raise SeriesError("empty series: no files")
    datasets = [read_dataset(p) for p in files]
    first = datasets[0]
    desc = str(first.get("SeriesDescription", "") or "")
    name = f"series {first.get('SeriesInstanceUID', '?')}{f' {desc!r}' if desc else ''} ({len(files)} file(s))"
    if any(int(ds.get("SamplesPerPixel") or 1) != 1 for ds in datasets):
        raise SeriesError(f"{name}: colour images cannot be stacked into a 4-D NIfTI")
    frames, positions, orientations, owners, keys = _frames(datasets, files, voi, name)
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise SeriesError(f"{name}: mixed image sizes {sorted(s[:2] for s in sizes)}")
    try:
        split = split_volumes(positions, orientations, keys)
    except GeometryError as exc:
        raise SeriesError(f"{name}: {exc}") from exc
    spacing = header_from_dataset(first, files[0]).pixel_spacing or (1.0, 1.0)
    slice_spacing = split.spacing or float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    origin = positions[split.volumes[0][0]]
    affine = LPS_TO_RAS @ affine_lps(origin, orientations[0], spacing, slice_spacing)
    # (T, Z, rows, columns) -> (columns, rows, Z, T): MONAI's layout, then dcm2niix's
    data = np.stack([np.stack([frames[i][..., 0] for i in volume]) for volume in split.volumes])
    data = data.transpose(3, 2, 1, 0)
    three_d = str(first.get("MRAcquisitionType", "")).upper() == "3D"
    layout = mosaic_layout(first, files[0]) if len(frames) > len(datasets) else None
    ornt = dcm2niix_orientation(affine, three_d, layout.normal if layout else None)
    data, affine = _reorient(data, affine, ornt)
    volumes = [[owners[i] for i in volume] for volume in split.volumes]
    if ornt[2, 0] == 2 and ornt[2, 1] < 0:  # the slice axis was reversed
        volumes = [volume[::-1] for volume in volumes]
    return Stack(
        array=data if data.shape[3] > 1 else data[..., 0],
        affine=affine,
        volumes=volumes,
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slice_spacing=float(slice_spacing),
        mosaic=layout is not None,
        repetition_time=_seconds(first.get("RepetitionTime")),
    )


def _seconds(milliseconds: Any) -> float | None:
    try:
        value = float(milliseconds)
    except (TypeError, ValueError):
        return None
    return value / 1000.0 if value > 0 and np.isfinite(value) else None


def _reorient(data: np.ndarray, affine: np.ndarray, ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    moved = apply_orientation(data, ornt)
    return np.ascontiguousarray(moved, dtype=np.float32), affine @ inv_ornt_aff(ornt, data.shape[:3])
