"""Siemens mosaic images: one DICOM frame holding a whole volume as a grid of tiles.

The number of slices comes from the Siemens CSA image header (``NumberOfImagesInMosaic``), read
by ``nibabel.nicom``; so does the slice normal (``SliceNormalVector``), along which the tiles are
stored. The mosaic's ImagePositionPatient is the corner of the whole tile grid, not of the first
slice: nibabel's :class:`~nibabel.nicom.dicomwrappers.MosaicWrapper` corrects it, and slice ``k``
then lies ``k`` slice spacings further along the normal.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MosaicError", "MosaicLayout", "detile", "mosaic_layout"]


class MosaicError(ValueError):
    """A file marked as a mosaic whose layout cannot be worked out; the message names the file."""


@dataclass(frozen=True)
class MosaicLayout:
    """Where the slices of one mosaic frame are.

    Attributes:
        n_images: slices in the mosaic (CSA ``NumberOfImagesInMosaic``).
        grid: tiles per row and per column of the mosaic.
        tile: (rows, columns) of one slice.
        positions: ImagePositionPatient of every slice (LPS, mm), in tile order.
        normal: unit CSA SliceNormalVector (LPS): the direction in which the tiles step.
    """

    n_images: int
    grid: int
    tile: tuple[int, int]
    positions: list[tuple[float, float, float]]
    normal: tuple[float, float, float]


def _wrapper(ds: Any) -> Any:
    from nibabel.nicom import dicomwrappers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nibabel's "experimental readers" notice
        return dicomwrappers.wrapper_from_data(ds)


def _slice_spacing(ds: Any) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, ""):
            return float(value)
    return 1.0


def mosaic_layout(ds: Any, name: str = "") -> MosaicLayout | None:
    """The mosaic layout of a Siemens mosaic image, or None for any other image.

    Args:
        ds: a pydicom Dataset (pixel data not needed).
        name: file name for error messages.

    Raises:
        MosaicError: ImageType says MOSAIC but the CSA header lacks the number of images, or
            the grid does not fit the image size.
    """
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "MOSAIC" not in image_type:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nibabel's "experimental readers" notice
        from nibabel.nicom.dicomwrappers import MosaicWrapper

    label = name or getattr(ds, "filename", None) or "<dataset>"
    try:
        wrapper = _wrapper(ds)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on odd headers
        raise MosaicError(f"{label}: mosaic image whose Siemens CSA header cannot be read: {exc}") from exc
    if not isinstance(wrapper, MosaicWrapper):
        raise MosaicError(
            f"{label}: ImageType says MOSAIC but the Siemens CSA header has no NumberOfImagesInMosaic, "
            "so the slices cannot be cut out"
        )
    n_images = int(wrapper.n_mosaic)
    grid = int(wrapper.mosaic_size)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if n_images < 1 or rows % grid or cols % grid or n_images > grid * grid:
        raise MosaicError(f"{label}: {n_images} mosaic images do not fit a {rows}x{cols} image as a {grid}x{grid} grid")
    first = wrapper.image_position
    normal = wrapper.slice_normal
    if first is None or normal is None:
        raise MosaicError(f"{label}: mosaic without ImagePositionPatient/ImageOrientationPatient or slice normal")
    step = _slice_spacing(ds) * np.asarray(normal, dtype=float)
    positions = [tuple(float(v) for v in np.asarray(first, float) + k * step) for k in range(n_images)]
    unit = tuple(float(v) for v in np.asarray(normal, float))
    return MosaicLayout(n_images, grid, (rows // grid, cols // grid), positions, unit)  # type: ignore[arg-type]


def detile(frame: np.ndarray, layout: MosaicLayout) -> np.ndarray:
    """Cut a decoded mosaic frame (rows, columns, samples) into (n_images, rows, columns, samples).

    Tiles are read row by row, left to right, as Siemens writes them.
    """
    r, c = layout.tile
    g = layout.grid
    tiles = frame.reshape(g, r, g, c, frame.shape[-1]).transpose(0, 2, 1, 3, 4).reshape(g * g, r, c, frame.shape[-1])
    return tiles[: layout.n_images]
