"""Series and single instances -> MONAI ``MetaTensor`` with a correct voxel-to-world affine.

Array layout follows MONAI's DICOM convention: channel first, then column index (along the
row direction cosine), row index, slice index: shape (C, X, Y[, Z]). The affine maps those
indices to RAS millimetres (``meta["space"] == "RAS"``), as NIfTI does. Slices are ordered by
position along the slice normal, never by InstanceNumber.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.dicom.decode import VOI, DecodeError, declared_shape, decode_pixels
from medimg.dicom.geometry import GeometryError, affine_lps, sort_slices
from medimg.dicom.header import header_from_dataset
from medimg.dicom.index import InstanceHeader, Series
from medimg.limits import check_size

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = ["SeriesError", "decode_frames", "load_instance", "load_series", "read_dataset", "LPS_TO_RAS"]

#: Flips x and y: DICOM patient coordinates (LPS) <-> NIfTI/MONAI world coordinates (RAS).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

log = logging.getLogger(__name__)


class SeriesError(ValueError):
    """A series that cannot become one volume; the message names the series and the problem."""


def read_dataset(path: str) -> Any:
    """Read one DICOM file with pydicom; :class:`DecodeError` (naming the file) when it cannot."""
    import pydicom

    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"{path}: cannot read DICOM: {type(exc).__name__}: {exc}") from exc


def _series_name(paths: Sequence[str], headers: Sequence[InstanceHeader]) -> str:
    uid = headers[0].get("SeriesInstanceUID", "?") if headers else "?"
    desc = headers[0].get("SeriesDescription", "") if headers else ""
    label = f" '{desc}'" if desc else ""
    return f"series {uid}{label} ({len(paths)} file(s) under {os.path.dirname(paths[0]) or '.'})"


def load_series(
    series: Series | Sequence[str | os.PathLike[str]], *, voi: VOI = None, grey: bool = False
) -> MetaTensor:
    """Decode a series to one volume.

    Args:
        series: a :class:`~medimg.dicom.index.Series` from a scan, or the paths of its files.
        voi: VOI to apply (see :data:`medimg.dicom.decode.VOI`); None keeps modality values.
        grey: convert colour images to one grey channel (luminance), logged as a warning and
            recorded as ``meta["converted_to_grey"]``.

    Returns:
        float32 ``MetaTensor`` of shape (C, X, Y, Z) for series with plane geometry, (C, X, Y)
        for a single projection image, (C, X, Y, frames) for a multi-frame object without
        geometry. C is 1 for grey, 3 for color.

    Raises:
        SeriesError: mixed sizes or orientations, duplicate positions, missing slices, or
            several images without plane geometry.
        DecodeError: a file cannot be read or decoded.
        medimg.limits.InputLimitError: the declared size (all files) is over the limit.
        medimg.limits.NonFiniteError: NaN or inf values.
    """
    paths = [os.fspath(p) for p in (series.files if isinstance(series, Series) else series)]
    if not paths:
        raise SeriesError("empty series: no files")
    datasets = [read_dataset(p) for p in paths]
    headers = [header_from_dataset(ds, p) for ds, p in zip(datasets, paths, strict=True)]
    name = _series_name(paths, headers)

    sizes = {(h.rows, h.columns, int(h.get("SamplesPerPixel") or 1)) for h in headers}
    if len(sizes) > 1:
        raise SeriesError(f"{name}: mixed image sizes {sorted(sizes)}")
    with_geometry = [h.frame_positions is not None for h in headers]
    if len(paths) == 1:
        return _to_metatensor(datasets, headers, voi, name, grey)
    if not all(with_geometry):
        missing = with_geometry.count(False)
        raise SeriesError(
            f"{name}: {missing} of {len(paths)} instances have no ImagePositionPatient/"
            "ImageOrientationPatient, so they cannot be stacked into a volume; "
            "load them one at a time with load_instance"
        )
    return _to_metatensor(datasets, headers, voi, name, grey)


def load_instance(path: str | os.PathLike[str], *, voi: VOI = None, grey: bool = False) -> MetaTensor:
    """Decode one file (single- or multi-frame). See :func:`load_series` for the layout."""
    path = os.fspath(path)
    ds = read_dataset(path)
    header = header_from_dataset(ds, path)
    return _to_metatensor([ds], [header], voi, f"{path}", grey)


def decode_frames(
    datasets: list[Any], headers: list[InstanceHeader], voi: VOI, name: str, grey: bool
) -> tuple[list[np.ndarray], bool]:
    """Every frame (rows, cols, samples) of every file, after checking the declared total size, and
    whether colour was converted to grey."""
    shapes = [declared_shape(ds) for ds in datasets]
    total = sum(f * r * c * s for f, r, c, s in shapes)
    if len(datasets) > 1:
        check_size((total,), f"{name} (all files together)")
    frames: list[np.ndarray] = []
    for ds, header in zip(datasets, headers, strict=True):
        frames.extend(decode_pixels(ds, voi=voi, path=header.path, grey=grey))
    colour = any(s != 1 for *_, s in shapes) or any(
        str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR" for ds in datasets
    )
    if grey and colour:
        log.warning("%s: colour image converted to grey (luminance)", name)
    return frames, grey and colour


def _four_d_hint(positions: list[Any], orientations: list[Any], headers: list[InstanceHeader]) -> str | None:
    """For a well-formed 4-D series, say so (load_series makes one volume); else None."""
    from medimg.dicom.series4d import frame_order_key, split_volumes

    keys = [frame_order_key(h.get, f, k) for f, h in enumerate(headers) for k in range(h.frames)]
    try:
        split = split_volumes(positions, orientations, keys)
    except GeometryError:
        return None
    if len(split.volumes) < 2:
        return None
    return (
        f"a 4-D series ({len(split.volumes)} volumes of {len(split.volumes[0])} slices): load_series makes "
        "one volume; convert it with `medimg convert` (convert_folder), which writes a 4-D NIfTI"
    )


def _to_metatensor(
    datasets: list[Any], headers: list[InstanceHeader], voi: VOI, name: str, grey: bool = False
) -> MetaTensor:
    frames, converted = decode_frames(datasets, headers, voi, name, grey)
    from monai.data import MetaTensor  # after the size checks: a refused file costs no import

    first = headers[0]
    spacing = first.pixel_spacing or (1.0, 1.0)
    geometry = "volume" if first.frame_positions is not None else ("projection" if len(frames) == 1 else "frames")
    order = list(range(len(frames)))
    slice_spacing = 1.0
    if geometry == "volume":
        positions = [p for h in headers for p in h.frame_positions or []]
        orientations = [h.frame_orientation for h in headers for _ in range(h.frames)]
        try:
            stack = sort_slices(positions, orientations)  # type: ignore[arg-type]
        except GeometryError as exc:
            raise SeriesError(f"{name}: {_four_d_hint(positions, orientations, headers) or exc}") from exc
        order = stack.order
        slice_spacing = stack.spacing or first.slice_spacing_hint or 1.0
        lps = affine_lps(positions[order[0]], first.frame_orientation, spacing, slice_spacing)  # type: ignore[arg-type]
        affine = LPS_TO_RAS @ lps
    else:
        affine = np.diag([float(spacing[1]), float(spacing[0]), 1.0, 1.0])

    array = np.stack([frames[i] for i in order])  # (N, rows, cols, samples)
    array = array.transpose(3, 2, 1, 0)  # (samples, cols, rows, N)
    if geometry == "projection":
        array = array[..., 0]
    sop_uids = [h.get("SOPInstanceUID") for h in headers for _ in range(h.frames)]
    files = [h.path for h in headers for _ in range(h.frames)]
    meta = {
        "original_affine": affine.copy(),
        "space": "RAS",
        "spatial_shape": np.asarray(array.shape[1:]),
        "original_channel_dim": 0,
        "filename_or_obj": headers[0].path,
        "geometry": geometry,
        "PatientID": first.get("PatientID", ""),
        "StudyInstanceUID": first.get("StudyInstanceUID", ""),
        "SeriesInstanceUID": first.get("SeriesInstanceUID", ""),
        "Modality": first.get("Modality", ""),
        "SeriesDescription": first.get("SeriesDescription", ""),
        "PhotometricInterpretation": first.get("PhotometricInterpretation", ""),
        "pixel_spacing": [float(spacing[0]), float(spacing[1])],
        "slice_spacing": float(slice_spacing),
        "SOPInstanceUIDs": [sop_uids[i] for i in order],
        "source_files": [files[i] for i in order],
        "voi": "none" if voi is None or voi is False else str(voi),
        "converted_to_grey": converted,
    }
    return MetaTensor(np.ascontiguousarray(array), affine=affine, meta=meta)
