"""Decode one DICOM object's pixels to float32 values in a display-consistent convention.

Order of operations (PS3.3 C.11): stored values -> modality LUT (rescale slope/intercept or
Modality LUT Sequence, per frame for enhanced objects) -> optional VOI (window or VOI LUT)
-> MONOCHROME1 inverted so that higher always means brighter (the MONOCHROME2 convention).
Color images come out as RGB (pydicom converts YBR; palette color is expanded).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from medimg.limits import check_finite, check_frame_size, check_size

__all__ = ["DecodeError", "VOI", "LUMINANCE", "declared_shape", "decode_pixels", "window"]

#: ITU-R BT.601 luma weights (R, G, B): colour radiographs are converted to grey with these.
LUMINANCE = (0.299, 0.587, 0.114)

#: VOI choice: None = no VOI (modality values), True/"header" = the file's first window or
#: VOI LUT, (center, width) = that linear window. Windowed output is in [0, 1].
VOI = bool | Literal["header"] | tuple[float, float] | None


class DecodeError(ValueError):
    """Pixel data that cannot be decoded; the message names the file and the cause."""


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a DICOM VOI window (PS3.3 C.11.2.1.2) with output range [0, 1].

    Written here rather than through ``pydicom.pixels.apply_windowing`` because pydicom maps
    to the stored bit range, which differs per file; a fixed [0, 1] range is what models need.

    Args:
        x: modality values, any shape.
        center: WindowCenter.
        width: WindowWidth (> 0; < 1 is treated as 1 for LINEAR).
        function: VOILUTFunction: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        float32 array of the same shape with values in [0, 1].
    """
    x = np.asarray(x, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-6)))
    elif function == "LINEAR_EXACT":
        y = (x - center) / max(width, 1e-6) + 0.5
    else:
        width = max(width, 1.0)
        y = (x - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _first(value: Any) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _frame_rescale(ds: Any, frames: int) -> list[tuple[float, float]]:
    """(slope, intercept) per frame, from the top level or the functional groups."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        pair = (float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0)))
        return [pair] * frames
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")

    def from_item(item: Any) -> tuple[float, float] | None:
        seq = item.get("PixelValueTransformationSequence") if item is not None else None
        if not seq:
            return None
        return float(seq[0].get("RescaleSlope", 1.0)), float(seq[0].get("RescaleIntercept", 0.0))

    common = from_item(shared[0]) if shared else None
    if common is not None:
        return [common] * frames
    if per_frame and len(per_frame) == frames:
        return [from_item(item) or (1.0, 0.0) for item in per_frame]
    return [(1.0, 0.0)] * frames


def _stored_range(ds: Any) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def declared_shape(ds: Any) -> tuple[int, int, int, int]:
    """(frames, rows, columns, samples) as the header declares them, without touching pixel data."""
    return (
        int(ds.get("NumberOfFrames") or 1),
        int(ds.get("Rows") or 0),
        int(ds.get("Columns") or 0),
        int(ds.get("SamplesPerPixel") or 1),
    )


def decode_pixels(ds: Any, *, voi: VOI = None, path: str | None = None, grey: bool = False) -> np.ndarray:
    """Decode all frames of ``ds`` to float32.

    The declared size is checked before the pixel data is touched (Rows x Columns against
    :func:`medimg.limits.max_frame_pixels`, Rows x Columns x frames x samples against
    :func:`medimg.limits.max_pixels`), and the modality values
    are checked for NaN/inf (float pixel data, or a rescale that makes them).

    Args:
        ds: a pydicom Dataset with pixel data.
        voi: see :data:`VOI`. Ignored for color images.
        path: file name used in error messages (default: ``ds.filename``).
        grey: convert a colour image to one grey channel (luminance, :data:`LUMINANCE`).

    Returns:
        float32 array of shape (frames, rows, columns, samples): modality values (e.g. HU),
        or [0, 1] when a VOI was applied; MONOCHROME1 inverted to the MONOCHROME2 convention.

    Raises:
        DecodeError: no codec decodes the data, or the data is corrupt.
        medimg.limits.InputLimitError: the declared size is over the limit.
        medimg.limits.NonFiniteError: NaN or inf values.
    """
    name = path or getattr(ds, "filename", None) or "<dataset>"
    frames, rows, columns, samples = declared_shape(ds)
    check_frame_size(rows, columns, name)
    check_size([rows, columns] + [n for n in (frames, samples) if n != 1], name)  # Rows x Columns [x frames x samples]
    arr = _stored_pixels(ds, name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:  # noqa: BLE001
            raise DecodeError(f"{name}: cannot apply the palette color LUT: {exc}") from exc
        samples = 3
    arr = arr.reshape(frames, rows, columns, samples)
    if samples != 1:
        check_finite(arr, name)
        colour = arr.astype(np.float32)
        if not grey:
            return colour
        return (colour[..., :3] @ np.asarray(LUMINANCE, dtype=np.float32))[..., None]
    return _grey_values(ds, arr[..., 0], voi, name)


def _stored_pixels(ds: Any, name: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder failure reads the same to users
        raise DecodeError(f"{name}: cannot decode pixel data: {exc}") from exc


def _grey_values(ds: Any, grey: np.ndarray, voi: VOI, name: str) -> np.ndarray:
    """Modality LUT or rescale, NaN/inf check, optional VOI, MONOCHROME1 inversion -> (F, R, C, 1)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(grey, ds).astype(np.float64)
        lut = ds.ModalityLUTSequence[0]
        lo, hi = 0.0, 2.0 ** int(lut.LUTDescriptor[2]) - 1
    else:
        rescale = _frame_rescale(ds, grey.shape[0])
        slopes = np.array([s for s, _ in rescale])[:, None, None]
        intercepts = np.array([i for _, i in rescale])[:, None, None]
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN are reported by check_finite
            values = grey.astype(np.float64) * slopes + intercepts
            s_lo, s_hi = _stored_range(ds)
            ends = np.array([s_lo, s_hi]) * slopes[0, 0, 0] + intercepts[0, 0, 0]
        lo, hi = float(ends.min()), float(ends.max())
    check_finite(values, name)

    if voi is not None and voi is not False:
        if isinstance(voi, tuple):
            values = window(values, float(voi[0]), float(voi[1]))
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            function = str(ds.get("VOILUTFunction", "LINEAR"))
            values = window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
        elif "VOILUTSequence" in ds:
            lut = ds.VOILUTSequence[0]
            out_bits = int(lut.LUTDescriptor[2])
            values = apply_voi_lut(values, ds, index=0) / (2.0**out_bits - 1)
        else:
            raise DecodeError(f"{name}: a header VOI was asked for, but the file has no window or VOI LUT")
        lo, hi = 0.0, 1.0

    if photometric == "MONOCHROME1":
        values = (lo + hi) - values
    return values.astype(np.float32)[..., None]
