"""Mammography breast density results as one TID 1500 SR per exam (study).

Codes (DICOM PS3.16 CID 6000 "Overall Breast Composition", the ACR BI-RADS 5th edition
categories; code values as in pydicom's ``codes.SCT`` dictionary, which is generated from PS3.16):

====  =================================  ==============
A     Almost entirely fat                SCT 129716005
B     Scattered fibroglandular densities SCT 129717001
C     Heterogeneously dense              SCT 129718006
D     Extremely dense                    SCT 129719003
====  =================================  ==============

Concept name of the category: SCT 129715009 "Breast composition". Groups (TID 1501):

- per source image: finding type "Breast composition", the image as source image, the finding
  site (SCT Breast with laterality Left/Right when known), the four category probabilities as
  measurements (concept name = the category's code, unit UCUM ``{probability}``) and the
  predicted category as a qualitative evaluation;
- per breast (``L``, ``R``; when it has images): the breast's category, its images as sources;
- the exam: the exam's category (the denser breast's) and its probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medimg.dicom.results.common import Algorithm, result_uids
from medimg.dicom.results.measurement_report import PROBABILITY_UNIT, build_report, tracking

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

__all__ = ["BREAST_COMPOSITION", "DENSITY_CODES", "DensityImage", "build_density_sr"]

#: SCT 129715009 "Breast composition" (the concept the category answers).
BREAST_COMPOSITION = codes.SCT.BreastComposition
#: BI-RADS category -> its CID 6000 code.
DENSITY_CODES: dict[str, Code] = {
    "A": codes.SCT.AlmostEntirelyFat,
    "B": codes.SCT.ScatteredFibroglandularDensities,
    "C": codes.SCT.HeterogeneouslyDense,
    "D": codes.SCT.ExtremelyDense,
}
_LATERALITY = {"L": codes.SCT.Left, "R": codes.SCT.Right}


class DensityImage:
    """One source mammogram's result: its header, laterality (``L``, ``R`` or empty) and probabilities A-D."""

    def __init__(self, source: Dataset, laterality: str, probabilities: Mapping[str, float]) -> None:
        self.source = source
        self.laterality = laterality if laterality in _LATERALITY else ""
        missing = [c for c in DENSITY_CODES if c not in probabilities]
        if missing:
            raise ValueError(f"no probability for density categor(ies) {missing}")
        self.probabilities = {c: float(probabilities[c]) for c in DENSITY_CODES}

    @property
    def category(self) -> str:
        return max(self.probabilities, key=lambda c: self.probabilities[c])


def _site(laterality: str) -> list[hd.sr.FindingSite]:
    import highdicom as hd

    lat = _LATERALITY.get(laterality)
    return [hd.sr.FindingSite(anatomic_location=codes.SCT.Breast, laterality=lat)] if lat else []


def _group(
    label: str,
    key: Sequence[object],
    *,
    category: str,
    sources: Sequence[Dataset],
    laterality: str,
    algorithm: Algorithm,
    probabilities: Mapping[str, float] | None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    import highdicom as hd

    ident = algorithm.identification()
    measurements = [
        hd.sr.Measurement(name=DENSITY_CODES[c], value=float(p), unit=PROBABILITY_UNIT, algorithm_id=ident)
        for c, p in (probabilities or {}).items()
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(label, key),
        finding_type=BREAST_COMPOSITION,
        algorithm_id=ident,
        finding_sites=_site(laterality) or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in sources] or None,
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=BREAST_COMPOSITION, value=DENSITY_CODES[category])],
    )


def build_density_sr(
    images: Sequence[DensityImage],
    exam: Mapping[str, Any],
    *,
    algorithm: Algorithm,
    series_number: int = 901,
) -> hd.sr.Comprehensive3DSR:
    """The SR of one exam.

    Args:
        images: the exam's images (same study), each with its laterality and probabilities.
        exam: :func:`pipelines.density.aggregate_exam`'s result: ``L_density``, ``R_density``
            (``""`` when the breast has no image), ``exam_density``, ``prob_A``..``prob_D``.
        algorithm: the algorithm.
        series_number: SeriesNumber of the SR series.

    Raises:
        ValueError: no images, images of several studies, or a category that is not A-D.
    """
    if not images:
        raise ValueError("an exam SR needs at least one image")
    studies = {str(i.source.StudyInstanceUID) for i in images}
    if len(studies) != 1:
        raise ValueError(f"the images belong to {len(studies)} studies; one SR per exam")
    study = studies.pop()
    sha = algorithm.weights_sha256
    groups: list = []
    for image in images:
        sop = str(image.source.SOPInstanceUID)
        groups.append(
            _group(
                f"image {sop}"[:64],
                [sop, sha],
                category=image.category,
                sources=[image.source],
                laterality=image.laterality,
                algorithm=algorithm,
                probabilities=image.probabilities,
            )
        )
    for side, name in (("L", "left breast"), ("R", "right breast")):
        category = str(exam.get(f"{side}_density") or "")
        if category:
            side_images = [i.source for i in images if i.laterality == side]
            groups.append(_category_group(name, study, sha, category, side_images, side, algorithm))
    exam_category = str(exam["exam_density"])
    groups.append(
        _group(
            "exam",
            [study, sha],
            category=_checked(exam_category),
            sources=[],
            laterality="",
            algorithm=algorithm,
            probabilities={c: float(exam[f"prob_{c}"]) for c in DENSITY_CODES},
        )
    )
    return build_report(
        groups=groups,
        evidence=[i.source for i in images],
        algorithm=algorithm,
        procedure=codes.SCT.Mammography,
        what="medimg breast density SR",
        uids=result_uids(study, study, sha, "density-sr"),
        series_number=series_number,
    )


def _category_group(
    name: str,
    study: str,
    sha: str,
    category: str,
    sources: Sequence[Dataset],
    side: str,
    algorithm: Algorithm,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return _group(
        name,
        [study, sha],
        category=_checked(category),
        sources=sources,
        laterality=side,
        algorithm=algorithm,
        probabilities=None,
    )


def _checked(category: str) -> str:
    if category not in DENSITY_CODES:
        raise ValueError(f"density category {category!r} is not one of A-D")
    return category
