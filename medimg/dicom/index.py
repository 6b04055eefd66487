"""The index a folder scan produces: Patient -> Study -> Series -> instances, plus quarantine.

Everything here is plain data built from headers only (no pixel data), small enough to pickle
between processes and to print as JSON. Names follow DICOM keywords on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "InstanceHeader",
    "QuarantineEntry",
    "ScanResult",
    "Series",
    "Study",
]


@dataclass(slots=True)
class QuarantineEntry:
    """A file (or directory link) that the index does not use, and why.

    Attributes:
        path: the path as found under the scanned folder.
        reason: one human-readable sentence, starting with a short category such as
            ``"not DICOM"``, ``"truncated"``, ``"no pixel data"``, ``"unsupported transfer
            syntax"``, ``"DICOMDIR"``, ``"unreadable"``, ``"duplicate instance"``.
    """

    path: str
    reason: str

    #: Reason categories that mean a file is broken (as opposed to simply not an image, such as
    #: a CSV beside the DICOM files, an SR, or a DICOMDIR): batch jobs exit non-zero for these.
    ERROR_CATEGORIES = ("truncated", "corrupt", "unreadable", "incomplete header", "unsupported transfer syntax")

    @property
    def is_error(self) -> bool:
        """True when the file looks like a broken image, not like something else."""
        return self.reason.startswith(self.ERROR_CATEGORIES)

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(slots=True)
class InstanceHeader:
    """What the scan keeps of one image instance (one file).

    Attributes:
        path: file path.
        attributes: JSON-able values of the header keywords in
            :data:`medimg.dicom.header.INDEXED_KEYWORDS` that the file has.
        transfer_syntax: Transfer Syntax UID of the pixel data.
        frame_positions: ImagePositionPatient of every frame (mm, LPS), in frame order, or
            None when the object has no plane geometry. Single-frame images have one entry.
        frame_orientation: ImageOrientationPatient (six direction cosines) shared by the
            frames, or None.
        pixel_spacing: (row spacing, column spacing) in mm from PixelSpacing, the pixel
            measures functional group, or ImagerPixelSpacing; None when absent.
        slice_spacing_hint: SpacingBetweenSlices (or SliceThickness) in mm, or None.
    """

    path: str
    attributes: dict[str, Any]
    transfer_syntax: str
    frame_positions: list[tuple[float, float, float]] | None = None
    frame_orientation: tuple[float, ...] | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_spacing_hint: float | None = None

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.attributes.get(keyword, default)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.attributes["SOPInstanceUID"])

    @property
    def rows(self) -> int:
        return int(self.attributes["Rows"])

    @property
    def columns(self) -> int:
        return int(self.attributes["Columns"])

    @property
    def frames(self) -> int:
        return int(self.attributes.get("NumberOfFrames") or 1)


@dataclass(slots=True)
class Series:
    """One series: instances sharing a SeriesInstanceUID, with a summary and its problems.

    Attributes:
        SeriesInstanceUID: the series UID.
        instances: the instances, sorted by file path (not a geometric order).
        orientation: ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"oblique"`` from the
            direction cosines, or None for projection images without plane geometry.
        slice_spacing: spacing between sorted slice positions in mm, when there is geometry.
        decodable: whether the installed codecs decode every instance's transfer syntax.
        decode_note: the plugins used, or what to install.
        problems: consistency problems (mixed sizes, duplicate positions, missing slices);
            a series with problems is listed, but :func:`medimg.dicom.load_series` refuses it.
    """

    SeriesInstanceUID: str
    instances: list[InstanceHeader] = field(default_factory=list)
    orientation: str | None = None
    slice_spacing: float | None = None
    decodable: bool = True
    decode_note: str = ""
    problems: list[str] = field(default_factory=list)

    def get(self, keyword: str, default: Any = None) -> Any:
        """Value of ``keyword`` in the first instance's indexed header."""
        return self.instances[0].get(keyword, default) if self.instances else default

    @property
    def Modality(self) -> str:  # noqa: N802 - DICOM keyword on purpose
        return str(self.get("Modality", "") or "")

    @property
    def SeriesDescription(self) -> str:  # noqa: N802
        return str(self.get("SeriesDescription", "") or "")

    @property
    def files(self) -> list[str]:
        return [inst.path for inst in self.instances]

    @property
    def num_frames(self) -> int:
        return sum(inst.frames for inst in self.instances)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(Rows, Columns) when all instances agree, else None."""
        sizes = {(inst.rows, inst.columns) for inst in self.instances}
        return next(iter(sizes)) if len(sizes) == 1 else None

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        return self.instances[0].pixel_spacing if self.instances else None

    @property
    def transfer_syntaxes(self) -> list[str]:
        return sorted({inst.transfer_syntax for inst in self.instances})

    def summary(self) -> dict[str, Any]:
        """JSON-able summary of the series (no per-file data)."""
        from pydicom.uid import UID

        size = self.image_size
        return {
            "SeriesInstanceUID": self.SeriesInstanceUID,
            "SeriesNumber": self.get("SeriesNumber"),
            "Modality": self.Modality,
            "SeriesDescription": self.SeriesDescription,
            "BodyPartExamined": self.get("BodyPartExamined"),
            "orientation": self.orientation,
            "instances": len(self.instances),
            "frames": self.num_frames,
            "image_size": list(size) if size else None,
            "pixel_spacing": list(self.pixel_spacing) if self.pixel_spacing else None,
            "slice_spacing": self.slice_spacing,
            "transfer_syntax": [UID(ts).name for ts in self.transfer_syntaxes],
            "decodable": self.decodable,
            "decode_note": self.decode_note,
            "problems": list(self.problems),
        }

    def to_dict(self) -> dict[str, Any]:
        out = self.summary()
        out["files"] = self.files
        return out


@dataclass(slots=True)
class Study:
    """One study: series sharing a StudyInstanceUID.

    Attributes:
        StudyInstanceUID: the study UID.
        PatientID: the patient ID of the first instance ("" when absent).
        series: the series, sorted by SeriesNumber then UID.
    """

    StudyInstanceUID: str
    PatientID: str
    series: list[Series] = field(default_factory=list)

    def get(self, keyword: str, default: Any = None) -> Any:
        """Value of ``keyword`` in the first series' first instance."""
        return self.series[0].get(keyword, default) if self.series else default

    def to_dict(self) -> dict[str, Any]:
        return {
            "StudyInstanceUID": self.StudyInstanceUID,
            "PatientID": self.PatientID,
            "StudyDate": self.get("StudyDate"),
            "StudyDescription": self.get("StudyDescription"),
            "series": [s.to_dict() for s in self.series],
        }


@dataclass(slots=True)
class ScanResult:
    """The result of :func:`medimg.dicom.scan_folder`.

    Attributes:
        root: the scanned folder.
        studies: studies sorted by PatientID then StudyInstanceUID.
        quarantine: every file under ``root`` that is not in a series, with its reason.
    """

    root: str
    studies: list[Study] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)

    def iter_series(self) -> Iterator[tuple[Study, Series]]:
        for study in self.studies:
            for series in study.series:
                yield study, series

    def find_series(self, uid: str) -> Series:
        """The series with SeriesInstanceUID ``uid``.

        Raises:
            KeyError: no such series in the index.
        """
        for _, series in self.iter_series():
            if series.SeriesInstanceUID == uid:
                return series
        raise KeyError(f"no series {uid} in the scan of {self.root}")

    @property
    def patients(self) -> dict[str, list[Study]]:
        """Studies grouped by PatientID."""
        out: dict[str, list[Study]] = {}
        for study in self.studies:
            out.setdefault(study.PatientID, []).append(study)
        return out

    @property
    def num_files(self) -> int:
        indexed = sum(len(s.instances) for _, s in self.iter_series())
        return indexed + len(self.quarantine)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "studies": [s.to_dict() for s in self.studies],
            "quarantine": [q.to_dict() for q in self.quarantine],
        }
