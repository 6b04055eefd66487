"""The overlay picture (image, heat map, boxes, label) as an RGB Secondary Capture, for viewers without SR.

The SC joins the source's study in a new series, copies its patient and study attributes
(highdicom ``SCImage.from_ref_dataset``; also BodyPartExamined and the laterality) and says in
its SeriesDescription and ImageComments what it is (and, for demo weights, that it is not for
clinical use); BurnedInAnnotation is YES (the label text is drawn on the picture).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from medimg.dicom.results.common import MANUFACTURER, Algorithm, result_uids, series_description

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

__all__ = ["build_overlay_sc"]


def build_overlay_sc(
    source: Dataset, rgb: np.ndarray, *, algorithm: Algorithm, what: str, series_number: int = 902
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``rgb`` ((rows, columns, 3) uint8) made from ``source``'s result.

    Raises:
        ValueError: ``rgb`` is not a (rows, columns, 3) uint8 picture.
    """
    import highdicom as hd

    picture = np.asarray(rgb)
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise ValueError(f"the overlay must be a (rows, columns, 3) uint8 picture, got {picture.shape} {picture.dtype}")
    uids = result_uids(str(source.StudyInstanceUID), str(source.SOPInstanceUID), algorithm.weights_sha256, "overlay-sc")
    with warnings.catch_warnings():  # a one-component PatientName (anonymised exports) is kept as is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=np.ascontiguousarray(picture),
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=uids.series,
            series_number=series_number,
            sop_instance_uid=uids.instance,
            instance_number=1,
            manufacturer=MANUFACTURER,
            patient_orientation=_orientation(source),
            laterality=_laterality(source),
            series_description=series_description(what, algorithm),
            software_versions=algorithm.version,
        )
    if source.get("BodyPartExamined"):  # says whether Laterality is needed (a paired structure)
        sc.BodyPartExamined = source.BodyPartExamined
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = " ".join([*algorithm.notes(), *algorithm.all_parameters()])[:10240]
    sc.DerivationDescription = f"{algorithm.name} {algorithm.version} overlay of the result on the source image"[:1024]
    return sc


def _orientation(source: Dataset) -> tuple[str, str]:
    """PatientOrientation of the picture (highdicom requires one): the source's (the picture keeps its
    grid), else ``("L", "F")``, how chest radiographs are displayed (the patient's left on the
    viewer's right, the feet down), whether PA or AP."""
    value = source.get("PatientOrientation")
    if value and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    return ("L", "F")


def _laterality(source: Dataset) -> str | None:
    """The source series' Laterality when it is L or R, else None (ImageLaterality is not copied: a
    chest radiograph may carry one, but a chest is not a paired structure)."""
    value = str(source.get("Laterality") or "").upper()
    return value if value in ("L", "R") else None
