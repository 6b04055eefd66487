"""Brain-tumour region volumes as a TID 1500 SR that references the DICOM SEG and its source series.

One group (TID 1501) per BraTS region (whole tumour WT, tumour core TC, enhancing tumour ET):
finding type SCT 108369006 "Neoplasm", the SEG as the group's source image, and the region's
volume (SCT 118565006 "Volume", UCUM ``mL``). The SEG and the source MR slices are the SR's
evidence (CurrentRequestedProcedureEvidenceSequence), so a PACS links the SR to both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medimg.dicom.results.common import Algorithm, result_uids
from medimg.dicom.results.measurement_report import build_report, tracking

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

__all__ = ["MILLILITRE", "REGIONS", "build_tumour_sr"]

MILLILITRE = Code("mL", "UCUM", "milliliter")
#: Region key in ``results.csv`` (``WT_ml``...) -> tracking label of its group.
REGIONS = {"WT": "whole tumour (WT)", "TC": "tumour core (TC)", "ET": "enhancing tumour (ET)"}
#: SCT 113091000 "Magnetic resonance imaging" (the procedure reported; not in pydicom's dictionary).
MRI = Code("113091000", "SCT", "Magnetic resonance imaging")


def build_tumour_sr(
    seg: Dataset,
    sources: Sequence[Dataset],
    volumes_ml: Mapping[str, float],
    *,
    algorithm: Algorithm,
    series_number: int = 901,
) -> hd.sr.Comprehensive3DSR:
    """The SR of one case's region volumes.

    Args:
        seg: the case's DICOM SEG (header is enough).
        sources: the MR slices the SEG was made on (headers).
        volumes_ml: ``{"WT": ml, "TC": ml, "ET": ml}`` (or the ``results.csv`` keys ``WT_ml``...).
        algorithm: the algorithm.
        series_number: SeriesNumber of the SR series.

    Raises:
        ValueError: a region's volume is missing, or the SEG is of another study.
    """
    import highdicom as hd

    found = {r: volumes_ml.get(r, volumes_ml.get(f"{r}_ml")) for r in REGIONS}
    missing = [r for r, v in found.items() if v is None]
    if missing:
        raise ValueError(f"no volume for region(s) {missing}")
    volumes = {r: float(v) for r, v in found.items() if v is not None}
    if not sources or any(str(s.StudyInstanceUID) != str(seg.StudyInstanceUID) for s in sources):
        raise ValueError("the SEG and its source slices must belong to one study")
    ident = algorithm.identification()
    seg_ref = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=str(seg.SOPClassUID), referenced_sop_instance_uid=str(seg.SOPInstanceUID)
    )
    sha = algorithm.weights_sha256
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(label, [str(seg.SOPInstanceUID), sha]),
            finding_type=codes.SCT.Neoplasm,
            algorithm_id=ident,
            source_images=[seg_ref],
            measurements=[
                hd.sr.Measurement(name=codes.SCT.Volume, value=float(volumes[r]), unit=MILLILITRE, algorithm_id=ident)
            ],
        )
        for r, label in REGIONS.items()
    ]
    study = str(seg.StudyInstanceUID)
    return build_report(
        groups=groups,
        evidence=[*sources, seg],
        algorithm=algorithm,
        procedure=MRI,
        what="medimg brain tumour volumes SR",
        uids=result_uids(study, str(sources[0].SeriesInstanceUID), sha, "tumour-sr"),
        series_number=series_number,
    )
