"""What every result object shares: the algorithm that made it, its UIDs, its source headers, saving.

- :class:`Algorithm`: name, version, the weights' SHA-256 and source kind, and whether they are
  the demo weights (then every object says it is not for clinical use: SeriesDescription and a
  text content item);
- :func:`result_uid`: deterministic UIDs (pydicom ``generate_uid(entropy_srcs=...)``) from the
  source's UIDs and the weights' hash, so a rerun writes the same objects instead of new copies;
- :func:`read_source`: a source image's header, completed in memory with the empty type 2
  patient/study attributes that minimal exports omit (highdicom copies them);
- :func:`save_dataset`: atomic write of a dataset in the DICOM file format.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg import __version__
from medimg.dicom.seg import TYPE2_PATIENT_STUDY
from medimg.writers import atomic_path

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

__all__ = [
    "DISCLAIMER",
    "MANUFACTURER",
    "Algorithm",
    "ResultUIDs",
    "describe",
    "parameters_of",
    "read_source",
    "read_sources",
    "result_uid",
    "result_uids",
    "save_dataset",
    "series_description",
]

MANUFACTURER = "medimg"
#: Said by every object made with the demo weights.
DISCLAIMER = "NOT FOR CLINICAL USE: demo weights trained on synthetic phantoms"
#: Said by every object: the results are a research tool's.
RESEARCH_NOTE = "Research use only: automated result, not reviewed by a physician"


@dataclass(frozen=True)
class Algorithm:
    """The algorithm behind a result object.

    Attributes:
        name: the pipeline, e.g. ``medimg pneumonia``.
        version: medimg's version.
        weights_sha256: SHA-256 of the weights (``run.json`` ``weights.sha256``).
        source_kind: kind of model file (``checkpoint``, ``bundle``, ``torchscript``...), if known.
        demo: the weights are the demo weights (synthetic phantoms only).
        parameters: further ``name=value`` strings (e.g. the operating threshold).
    """

    name: str
    version: str = __version__
    weights_sha256: str = ""
    source_kind: str = ""
    demo: bool = False
    parameters: tuple[str, ...] = field(default_factory=tuple)

    def identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification: name, version and parameters (weights, source kind, ...)."""
        import highdicom as hd
        from pydicom.sr.codedict import codes

        return hd.sr.AlgorithmIdentification(
            name=self.name,
            version=self.version,
            parameters=list(self.all_parameters()) or None,
            family=codes.DCM.ArtificialIntelligence,
            manufacturer=MANUFACTURER,
        )

    def all_parameters(self) -> tuple[str, ...]:
        """``weights_sha256=...``, ``weights_source=...``, ``demo_weights=yes`` and :attr:`parameters`."""
        out = [f"weights_sha256={self.weights_sha256}"] if self.weights_sha256 else []
        out += [f"weights_source={self.source_kind}"] if self.source_kind else []
        out += ["demo_weights=yes"] if self.demo else []
        return (*out, *self.parameters)

    def notes(self) -> list[str]:
        """The text items every object carries: the research note and, for demo weights, the disclaimer."""
        return [DISCLAIMER, RESEARCH_NOTE] if self.demo else [RESEARCH_NOTE]


def series_description(what: str, algorithm: Algorithm) -> str:
    """SeriesDescription (at most 64 characters): ``what``, and ``NOT FOR CLINICAL USE`` for demo weights."""
    text = f"{what} - NOT FOR CLINICAL USE" if algorithm.demo else f"{what} - research"
    return text[:64]


@dataclass(frozen=True)
class ResultUIDs:
    """Series and SOP Instance UIDs of one result object."""

    series: str
    instance: str


def result_uid(*sources: object) -> str:
    """A UID derived from ``sources`` (UIDs, the weights' hash, the object kind): the same sources
    give the same UID, so a rerun replaces an object rather than adding a copy."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(s) for s in sources]))


def result_uids(study_uid: str, instance_key: str, weights_sha256: str, kind: str) -> ResultUIDs:
    """UIDs of a new series per (study, weights, kind) and of the instance made from ``instance_key``
    (the source SOPInstanceUID, or the study's for an exam-level object)."""
    return ResultUIDs(
        series=result_uid("medimg-series", study_uid, weights_sha256, kind),
        instance=result_uid("medimg-instance", instance_key, weights_sha256, kind),
    )


def read_source(path: str | os.PathLike[str]) -> Dataset:
    """The header of a source image (no pixels), with missing type 2 patient/study attributes
    added empty and values that break their VR emptied (in memory only).

    Raises:
        ValueError: the file cannot be read as DICOM or has no Study/Series/SOP Instance UID
            (the message names the file).
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
        raise ValueError(f"{path}: cannot read DICOM: {type(exc).__name__}: {exc}") from exc
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not ds.get(k)]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}: a result object cannot reference it")
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    _drop_invalid_copied_values(ds)
    return ds


def _drop_invalid_copied_values(ds: Dataset) -> None:
    """Empty (in memory) the copied patient/study values that break their VR, so that a result object
    is valid whatever the source holds: anonymisers write hashes as birth dates, RSNA writes "40" as
    an age. Type 2 attributes become empty; PatientAge (type 3) is removed."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    for keyword in (*TYPE2_PATIENT_STUDY, "PatientAge"):
        element = ds.data_element(keyword) if keyword in ds else None
        if element is None or element.value in (None, ""):
            continue
        try:
            for value in element.value if element.VM > 1 else [element.value]:
                validate_value(element.VR, value, config.RAISE)
        except (ValueError, TypeError):
            if keyword == "PatientAge":
                del ds.PatientAge
            else:
                element.value = ""


def read_sources(paths: Iterable[str | os.PathLike[str]]) -> list[Dataset]:
    """:func:`read_source` of each path."""
    return [read_source(p) for p in paths]


def save_dataset(dataset: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``dataset`` atomically in the DICOM file format (preamble and file meta)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path


def describe(dataset: Dataset) -> dict[str, Any]:
    """The identifiers of a written object, as listed in ``run.json`` ``dicom_results``."""
    return {
        "StudyInstanceUID": str(dataset.StudyInstanceUID),
        "SeriesInstanceUID": str(dataset.SeriesInstanceUID),
        "SOPInstanceUID": str(dataset.SOPInstanceUID),
        "SOPClassUID": str(dataset.SOPClassUID),
    }


def parameters_of(identification: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    """``name=value`` strings -> dict (the algorithm parameters read back from an object)."""
    items = identification.items() if isinstance(identification, Mapping) else (p.split("=", 1) for p in identification)
    return {str(k): str(v) for k, v in items}
