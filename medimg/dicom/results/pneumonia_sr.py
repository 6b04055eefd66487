"""Chest X-ray pneumonia results as a TID 1500 SR on the source radiograph.

One Comprehensive 3D SR per radiograph:

- an image-level group (TID 1501, finding type SCT 233604007 "Pneumonia") referencing the source
  image, with the probability (DCM 122157 "Probability", UCUM ``{probability}``) and the decision
  at the operating threshold as a qualitative evaluation: SCT 233604007 "Pneumonia" = DCM 121053
  "Present" or DCM 121054 "Absent" (the threshold is an algorithm parameter);
- one planar ROI group (TID 1410) per box: a closed POLYLINE SCOORD around the box on the source
  image (pixel coordinates: column, row; (0, 0) is the top-left corner of the first pixel) and
  the box's confidence as a probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medimg.dicom.results.common import Algorithm, result_uids
from medimg.dicom.results.measurement_report import PROBABILITY_UNIT, build_report, tracking

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

__all__ = ["PNEUMONIA", "box_polyline", "build_pneumonia_sr"]

#: SNOMED CT 233604007 "Pneumonia (disorder)".
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
#: SNOMED CT 168537006 "Plain radiography" (the procedure reported).
PLAIN_RADIOGRAPHY = codes.SCT.PlainRadiography


def box_polyline(x: float, y: float, width: float, height: float) -> np.ndarray:
    """A closed (5-point) polyline around a box of source pixels: columns x..x+width-1, rows
    y..y+height-1, drawn along the outer pixel edges."""
    x0, y0, x1, y1 = float(x), float(y), float(x + width), float(y + height)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def build_pneumonia_sr(
    source: Dataset,
    *,
    probability: float,
    threshold: float,
    boxes: Sequence[Sequence[float]],
    algorithm: Algorithm,
    series_number: int = 901,
) -> hd.sr.Comprehensive3DSR:
    """The SR of one radiograph's result.

    Args:
        source: the radiograph's header (:func:`medimg.dicom.results.common.read_source`).
        probability: p(pneumonia).
        threshold: the operating threshold (``probability >= threshold`` is "present").
        boxes: ``[confidence, x, y, width, height]`` per box, in source pixels (``results.csv``).
        algorithm: the algorithm (the threshold is added to its parameters).
        series_number: SeriesNumber of the SR series.
    """
    import highdicom as hd

    algo = Algorithm(
        name=algorithm.name,
        version=algorithm.version,
        weights_sha256=algorithm.weights_sha256,
        source_kind=algorithm.source_kind,
        demo=algorithm.demo,
        parameters=(*algorithm.parameters, f"operating_threshold={float(threshold)!r}"),
    )
    ident = algo.identification()
    sop = str(source.SOPInstanceUID)
    decision = codes.DCM.Present if float(probability) >= float(threshold) else codes.DCM.Absent
    groups: list = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking("pneumonia", [sop, algo.weights_sha256]),
            finding_type=PNEUMONIA,
            algorithm_id=ident,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            measurements=[
                hd.sr.Measurement(
                    name=codes.DCM.Probability, value=float(probability), unit=PROBABILITY_UNIT, algorithm_id=ident
                )
            ],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=PNEUMONIA, value=decision)],
        )
    ]
    for k, (confidence, x, y, w, h) in enumerate(boxes, start=1):
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=box_polyline(x, y, w, h),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(f"pneumonia box {k}", [sop, algo.weights_sha256]),
                referenced_region=region,
                finding_type=PNEUMONIA,
                algorithm_id=ident,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.DCM.Probability, value=float(confidence), unit=PROBABILITY_UNIT, algorithm_id=ident
                    )
                ],
            )
        )
    return build_report(
        groups=groups,
        evidence=[source],
        algorithm=algo,
        procedure=PLAIN_RADIOGRAPHY,
        what="medimg pneumonia SR",
        uids=result_uids(str(source.StudyInstanceUID), sop, algo.weights_sha256, "pneumonia-sr"),
        series_number=series_number,
    )
