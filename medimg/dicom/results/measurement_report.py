"""TID 1500 Measurement Reports as Comprehensive 3D SR documents (highdicom), and reading them back.

:func:`build_report` wraps measurement groups made by the task modules into one SR: observer
context (the algorithm as a device), procedure reported, the groups, and a text item per note
(the research note; for demo weights the "not for clinical use" disclaimer). The sources go in
as evidence, so the SR copies their patient and study attributes and lists every referenced
instance (CurrentRequestedProcedureEvidenceSequence).

:func:`read_report` parses an SR written here with highdicom and returns its groups as plain
values (numbers exactly as stored), for tests and for users checking what was sent to a PACS.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medimg.dicom.results.common import MANUFACTURER, Algorithm, ResultUIDs, series_description

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

__all__ = ["PROBABILITY_UNIT", "ReadGroup", "build_report", "read_report", "tracking"]

#: UCUM annotation for a probability in [0, 1] (a dimensionless "{annotation}" unit).
PROBABILITY_UNIT = Code("{probability}", "UCUM", "probability")
#: Comprehensive 3D SR Storage.
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def tracking(label: str, uid_sources: Sequence[object]) -> hd.sr.TrackingIdentifier:
    """A group's tracking identifier: ``label`` and a UID derived from ``uid_sources`` (stable across reruns)."""
    import highdicom as hd

    from medimg.dicom.results.common import result_uid

    return hd.sr.TrackingIdentifier(uid=result_uid("medimg-tracking", label, *uid_sources), identifier=label)


def build_report(
    *,
    groups: Sequence[Any],
    evidence: Sequence[Dataset],
    algorithm: Algorithm,
    procedure: Code,
    what: str,
    uids: ResultUIDs,
    series_number: int,
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR holding a TID 1500 Measurement Report of ``groups``.

    Args:
        groups: highdicom measurement groups (TID 1501 / 1410 / 1411).
        evidence: the source datasets (the first gives patient and study attributes).
        algorithm: who made the results (device observer; notes as text items).
        procedure: the imaging procedure reported (e.g. SCT Plain radiography).
        what: start of the SeriesDescription (e.g. ``medimg pneumonia SR``).
        uids: the SR's series and instance UIDs.
        series_number: SeriesNumber of the new series.
    """
    import highdicom as hd

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm_device_uid(algorithm),
        name=algorithm.name,
        manufacturer_name=MANUFACTURER,
        model_name=algorithm.name,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=procedure,
        imaging_measurements=list(groups),
        title=codes.DCM.ImagingMeasurementReport,
    )
    root = report[0]
    for note in algorithm.notes():
        root.ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.DCM.Comment, value=note, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    with warnings.catch_warnings():  # a one-component PatientName (anonymised exports) is kept as is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        return _document(root, evidence, algorithm, what, uids, series_number)


def _document(
    root: Any, evidence: Sequence[Dataset], algorithm: Algorithm, what: str, uids: ResultUIDs, series_number: int
) -> hd.sr.Comprehensive3DSR:
    import highdicom as hd

    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=root,
        series_instance_uid=uids.series,
        series_number=series_number,
        sop_instance_uid=uids.instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=series_description(what, algorithm),
        software_versions=algorithm.version,
    )


def algorithm_device_uid(algorithm: Algorithm) -> str:
    """The device observer's UID: one per algorithm name, version and weights."""
    from medimg.dicom.results.common import result_uid

    return result_uid("medimg-device", algorithm.name, algorithm.version, algorithm.weights_sha256)


@dataclass
class ReadGroup:
    """One measurement group read back from an SR.

    Attributes:
        label: the tracking identifier.
        finding: ``(scheme, code value)`` of the finding type, if any.
        measurements: ``(scheme, code value) -> (value, UCUM unit)`` (the value as stored).
        evaluations: ``(scheme, code value) -> (scheme, code value)`` of the qualitative evaluations.
        source_images: SOPInstanceUIDs the group references (source images, region images).
        region: the (N, 2) graphic data of the group's image region, if any.
        region_type: its graphic type (``POLYLINE``...).
        finding_sites: ``(scheme, code value, laterality code value or "")`` per finding site.
        algorithm: ``(name, version, parameters)`` of the group's algorithm identification.
    """

    label: str
    finding: tuple[str, str] | None = None
    measurements: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    evaluations: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    source_images: list[str] = field(default_factory=list)
    region: Any = None
    region_type: str = ""
    finding_sites: list[tuple[str, str, str]] = field(default_factory=list)
    algorithm: tuple[str, str, list[str]] | None = None


def _key(code: Any) -> tuple[str, str]:
    return str(code.scheme_designator), str(code.value)


def read_report(path: str | os.PathLike[str]) -> tuple[Dataset, list[ReadGroup], list[str]]:
    """``(dataset, groups, notes)`` of an SR written by :func:`build_report`.

    Raises:
        ValueError: the file is not a Comprehensive 3D SR holding a TID 1500 report (names the file).
    """
    import highdicom as hd

    try:
        sr = hd.sr.srread(path)
        report = hd.sr.MeasurementReport.from_sequence([sr], is_root=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure becomes one clear error
        raise ValueError(f"{path}: not a medimg measurement report: {type(exc).__name__}: {exc}") from exc
    groups = [_read_group(g) for g in _all_groups(report)]
    notes = [
        str(item.TextValue)
        for item in sr.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Comment.value
    ]
    return sr, groups, notes


def _all_groups(report: Any) -> list[Any]:
    """The image-level, planar ROI and volumetric ROI groups of a report, in that order."""
    return [
        *report.get_image_measurement_groups(),
        *report.get_planar_roi_measurement_groups(),
        *report.get_volumetric_roi_measurement_groups(),
    ]


def _algorithm_of(group: Any) -> tuple[str, str, list[str]] | None:
    """TID 4019 items of a group: (name, version, parameters), or None."""
    found: dict[str, list[str]] = {}
    for item in group[0].ContentSequence if group and "ContentSequence" in group[0] else []:
        if item.ValueType != "TEXT":
            continue
        key = str(item.ConceptNameCodeSequence[0].CodeValue)
        if key in ("111001", "111003", "111002"):  # DCM Algorithm Name / Version / Parameters
            found.setdefault(key, []).append(str(item.TextValue))
    if "111001" not in found:
        return None
    return found["111001"][0], found.get("111003", [""])[0], found.get("111002", [])


def _read_group(group: Any) -> ReadGroup:
    out = ReadGroup(label=str(group.tracking_identifier))
    if group.finding_type is not None:
        out.finding = _key(group.finding_type)
    for m in group.get_measurements():
        out.measurements[_key(m.name)] = (float(m.value), str(m.unit.value))
    for e in group.get_qualitative_evaluations():
        if _key(e.name) != ("DCM", "111000"):  # the algorithm family (TID 4019), not a finding
            out.evaluations[_key(e.name)] = _key(e.value)
    out.source_images = [str(s.referenced_sop_instance_uid) for s in getattr(group, "source_images", [])]
    region = getattr(group, "roi", None)
    if region is not None:
        out.region, out.region_type = region.value, str(region.graphic_type.value)
        out.source_images += [
            str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for child in region.get("ContentSequence", [])
            if "ReferencedSOPSequence" in child
        ]
    for site in group.finding_sites:
        lat = site.laterality
        out.finding_sites.append((*_key(site.value), str(lat.value) if lat is not None else ""))
    out.algorithm = _algorithm_of(group)
    return out
