"""MONAI dictionary transforms that read DICOM through :mod:`medimg.dicom`.

MONAI's own ``LoadImage`` with ``PydicomReader`` sorts slices by InstanceNumber and does not
invert MONOCHROME1; these transforms use medimg's loader,
which does both right, and keep MONAI's ``MetaTensor`` conventions (channel first, RAS affine).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from medimg.dicom.decode import VOI
from medimg.dicom.volume import load_instance, load_series

__all__ = ["LoadDicomd"]


class LoadDicomd(MapTransform):
    """Replace a DICOM file path (or a list of a series' paths) by its decoded ``MetaTensor``.

    Args:
        keys: keys whose values are a file path (one image, single- or multi-frame) or a
            sequence of paths (one series, stacked by geometry).
        voi: VOI to apply (see :data:`medimg.dicom.decode.VOI`); None keeps modality values.
        grey: convert colour images to one grey channel (luminance; logged, and recorded as
            ``meta["converted_to_grey"]``).
        allow_missing_keys: do not raise when a key is absent.

    The result is float32 (C, X, Y[, Z]) with ``meta`` holding the UIDs and source files.
    """

    def __init__(
        self, keys: KeysCollection, voi: VOI = None, allow_missing_keys: bool = False, *, grey: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.voi = voi
        self.grey = grey

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
                d[key] = load_series(list(value), voi=self.voi, grey=self.grey)
            else:
                d[key] = load_instance(value, voi=self.voi, grey=self.grey)
        return d
