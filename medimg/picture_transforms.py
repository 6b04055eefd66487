"""The MONAI dictionary transform that reads PNG/JPEG radiographs beside DICOM ones.

:class:`LoadPictureOrDicomd` decodes a PNG/JPEG path with :func:`medimg.pictures.load_picture` and
hands any other path to a DICOM loader (:class:`medimg.dicom.transforms.LoadDicomd`), so one set of
pipeline transforms, and their on-disk cache, reads both. It is a deterministic MONAI
``MapTransform``, so ``PersistentDataset`` caches its output like the DICOM loader's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from monai.transforms import MapTransform

from medimg.pictures import is_picture, load_picture

__all__ = ["LoadPictureOrDicomd"]


class LoadPictureOrDicomd(MapTransform):
    """Dictionary transform: ``data[key]`` (a path) -> its decoded image; PNG/JPEG paths with
    :func:`load_picture`, anything else with ``dicom_loader`` (e.g. :class:`medimg.dicom.LoadDicomd`).

    Args:
        dicom_loader: the dictionary transform used for paths that are not pictures.
        key: the item key holding the path.
    """

    def __init__(self, dicom_loader: Callable[[Mapping[Hashable, Any]], Any], key: str = "image") -> None:
        super().__init__(key)
        self.dicom_loader = dicom_loader
        self.key = key

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        value = data.get(self.key)
        if isinstance(value, (str, os.PathLike)) and is_picture(value):
            out = dict(data)
            out[self.key] = load_picture(value)
            return out
        return self.dicom_loader(data)
