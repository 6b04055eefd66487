"""BraTS label volumes <-> DICOM Segmentation (SEG) objects that reference the source MR series.

Array convention (the one of :func:`medimg.dicom.load_series`): a label volume has shape
(X, Y, Z) where X is the column index, Y the row index and Z the slice index, slices sorted by
position along the slice normal (ascending); ``source_files[k]`` is the DICOM file of slice k
(``tensor.meta["source_files"]``). Values are integer labels, 0 background; BraTS 2018-2021
uses 1 necrotic / non-enhancing tumour core, 2 peritumoral edema, 4 enhancing tumour.

highdicom wants (frames, rows, columns) with ``pixel_array[k]`` matching ``source_images[k]``
and segment numbers 1..N, so :func:`write_seg` transposes the volume and remaps the label values
to segment numbers in ``label_values`` order (a BraTS map holding 0/1/2/4 is otherwise rejected:
segment 3 would lack a description). :func:`read_seg` places every stored frame by the source
SOP Instance UID it references (never by frame order) and maps segment numbers back to the
original label values through the segments' property type codes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medimg import __version__
from medimg.writers import atomic_path

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

__all__ = [
    "BRATS_SEGMENTS",
    "SEG_SOP_CLASS_UIDS",
    "TYPE2_PATIENT_STUDY",
    "SegmentSpec",
    "read_seg",
    "write_seg",
]

#: Segmentation Storage (BINARY/FRACTIONAL) and Label Map Segmentation Storage (LABELMAP).
SEG_SOP_CLASS_UIDS = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")

#: Patient/study attributes highdicom copies from the first source image (SEG, SR, SC). They are type 2 in
#: the source IODs (present, possibly empty), but minimal exports sometimes omit them.
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class SegmentSpec:
    """How one label value of a label volume is described in a DICOM SEG.

    Attributes:
        label: value of the segment in the label volume (e.g. 4 for BraTS enhancing tumour).
        name: SegmentLabel written to the SEG.
        property_type: SegmentedPropertyTypeCodeSequence; it identifies the segment when the
            SEG is read back, so it must differ between the segments of one table.
        category: SegmentedPropertyCategoryCodeSequence.
    """

    label: int
    name: str
    property_type: Code
    category: Code = codes.SCT.MorphologicallyAbnormalStructure


#: The BraTS 2018-2021 tumour sub-regions, keyed by label value. SNOMED CT has no pre-coordinated
#: concept for "enhancing tumour" in pydicom's code dictionary (no ``EnhancingTumor``/``Lesion``
#: keyword exists), so label 4 uses SCT 108369006 "Neoplasm" (also spelled ``codes.SCT.Tumor``);
#: the SegmentLabel "enhancing tumour" carries the distinction, as in public BraTS SEG
#: conversions. Label 1 is SCT 6574001 "Necrosis", label 2 SCT 79654002 "Edema"; all three use
#: the category SCT 49755003 "Morphologically Abnormal Structure".
BRATS_SEGMENTS: dict[int, SegmentSpec] = {
    1: SegmentSpec(1, "necrotic and non-enhancing tumour core", codes.SCT.Necrosis),
    2: SegmentSpec(2, "peritumoral edema", codes.SCT.Edema),
    4: SegmentSpec(4, "enhancing tumour", codes.SCT.Neoplasm),
}

_SEG_TYPES = {"binary": "BINARY", "labelmap": "LABELMAP"}


def write_seg(
    labels: Any,
    source_files: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    *,
    label_values: Sequence[int] = (1, 2, 4),
    segment_names: Sequence[str] | None = None,
    algorithm_name: str = "medimg",
    algorithm_version: str = __version__,
    series_description: str = "medimg brain tumour segmentation - not for clinical use",
    seg_type: str = "binary",
    series_number: int = 900,
) -> Path:
    """Write a label volume as a DICOM SEG that references the source series.

    Args:
        labels: integer (or bool, or integral float) array of shape (X, Y, Z) on the grid of
            :func:`medimg.dicom.load_series`: X column index, Y row index, Z slice index in
            ``source_files`` order. A leading channel axis of size 1, (1, X, Y, Z), is accepted.
            Values are 0 (background) or one of ``label_values``.
        source_files: the DICOM file of each slice, ``source_files[k]`` for ``labels[:, :, k]``
            (``tensor.meta["source_files"]``); single-frame images of one series with plane
            geometry.
        out_path: the ``.dcm`` file to write (atomically; parent folders are created).
        label_values: the label values to encode, in segment order: ``label_values[i]`` becomes
            segment number i + 1. Each must be a key of :data:`BRATS_SEGMENTS`, which supplies
            its codes.
        segment_names: SegmentLabel of each segment; defaults to the names in
            :data:`BRATS_SEGMENTS`.
        algorithm_name: AlgorithmName of every segment (family DCM "Artificial Intelligence",
            algorithm type AUTOMATIC).
        algorithm_version: AlgorithmVersion.
        series_description: SeriesDescription of the new series.
        seg_type: "binary" (Segmentation Storage, one bit-packed frame per slice and segment,
            empty frames omitted) or "labelmap" (Label Map Segmentation Storage, highdicom
            >= 0.24; one 8-bit frame per non-empty slice; little viewer support so far).
        series_number: SeriesNumber of the new series.

    Returns:
        ``Path(out_path)``.

    Raises:
        ValueError: ``labels`` does not match the source grid (message names the file and both
            shapes), holds values outside 0 and ``label_values``, ``label_values`` or
            ``segment_names`` are invalid, a source file cannot be read, or highdicom rejects
            the sources (e.g. no plane geometry).

    The new series gets fresh Series/SOP Instance UIDs, InstanceNumber 1, Manufacturer and
    ManufacturerModelName "medimg", SoftwareVersions ``medimg.__version__``, DeviceSerialNumber
    "0" and ContentQualification RESEARCH; patient, study and frame of reference come from the
    sources. Source attributes highdicom needs that a minimal export may lack are completed in
    memory only: missing type 2 patient/study attributes become empty, a missing SliceThickness
    becomes the spacing between slice positions.
    """
    out_path = Path(out_path)
    paths = [os.fspath(p) for p in source_files]
    seg_key = str(seg_type).lower()
    if seg_key not in _SEG_TYPES:
        raise ValueError(f"seg_type must be one of {sorted(_SEG_TYPES)}, got {seg_type!r}")
    specs = _segment_specs(label_values, segment_names)
    if not paths:
        raise ValueError(f"{out_path}: no source files given")
    datasets, frames = _sources_and_frames(labels, paths, specs, out_path)
    seg = _segmentation(
        datasets,
        frames,
        _segment_descriptions(specs, algorithm_name, str(algorithm_version)),
        segmentation_type=_SEG_TYPES[seg_key],
        series_number=series_number,
        series_description=series_description,
        out_path=out_path,
        source_paths=paths,
    )
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out_path


def _sources_and_frames(
    labels: Any, paths: Sequence[str], specs: Sequence[SegmentSpec], out_path: Path
) -> tuple[list[Dataset], np.ndarray]:
    """The source headers (checked against the label grid, completed in memory) and the (Z, rows, cols)
    frames of segment numbers."""
    array = _as_label_array(labels)
    datasets = [_read_header(p) for p in paths]
    _check_grid(array, datasets, paths)
    _check_unique_instances(datasets, paths)
    frames = _encode(array, [s.label for s in specs], out_path)  # (Z, rows, cols) segment numbers
    _complete_sources(datasets)
    return datasets, frames


def _segment_descriptions(
    specs: Sequence[SegmentSpec], algorithm_name: str, algorithm_version: str
) -> list[hd.seg.SegmentDescription]:
    """One SegmentDescription per spec, numbered from 1, each by the AUTOMATIC "Artificial Intelligence" algorithm."""
    import highdicom as hd

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.DCM.ArtificialIntelligence, version=algorithm_version
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=spec.category,
            segmented_property_type=spec.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, spec in enumerate(specs, start=1)
    ]


def _content_uid(kind: str, datasets: Sequence[Dataset], frames: np.ndarray) -> str:
    """A UID derived from the sources and the segmentation itself: writing the same SEG again (a
    rerun) gives the same UIDs, so a PACS that holds it is not sent a duplicate; other labels, other UIDs."""
    import hashlib

    from pydicom.uid import generate_uid

    digest = hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()
    sources = [str(ds.SOPInstanceUID) for ds in datasets]
    return str(generate_uid(entropy_srcs=["medimg-seg", kind, digest, *sources]))


def _segmentation(
    datasets: Sequence[Dataset],
    frames: np.ndarray,
    descriptions: Sequence[hd.seg.SegmentDescription],
    *,
    segmentation_type: str,
    series_number: int,
    series_description: str,
    out_path: Path,
    source_paths: Sequence[str],
) -> hd.seg.Segmentation:
    """The SEG instance of a new series on the sources (see :func:`write_seg` for its attributes).

    Raises:
        ValueError: highdicom rejects the sources or the frames (the message names ``out_path`` and their folder).
    """
    import highdicom as hd

    try:
        return hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=frames,
            segmentation_type=segmentation_type,
            segment_descriptions=descriptions,
            series_instance_uid=_content_uid("series", datasets, frames),
            series_number=int(series_number),
            sop_instance_uid=_content_uid("instance", datasets, frames),
            instance_number=1,
            manufacturer="medimg",
            manufacturer_model_name="medimg",
            software_versions=__version__,
            device_serial_number="0",
            omit_empty_frames=bool(frames.any()),  # highdicom keeps all frames of an empty mask anyway
            series_description=series_description,
            content_qualification=hd.ContentQualificationValues.RESEARCH,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ValueError(
            f"{out_path}: cannot build a DICOM SEG on the {len(source_paths)} source file(s) under "
            f"{os.path.dirname(source_paths[0]) or '.'}: {type(exc).__name__}: {exc}"
        ) from exc


def read_seg(
    path: str | os.PathLike[str],
    source_files: Sequence[str | os.PathLike[str]],
    *,
    label_values: Sequence[int] | None = None,
) -> np.ndarray:
    """Read a SEG written by :func:`write_seg` back to a label volume on the source grid.

    Args:
        path: the SEG file (BINARY or LABELMAP).
        source_files: the DICOM file of each slice of the wanted grid, in
            :func:`medimg.dicom.load_series` order. Every one must be referenced by the SEG; a
            subset of the referenced series is fine (only those slices are returned).
        label_values: label value of each segment number (``label_values[i]`` for segment
            i + 1). By default each segment's value is found in :data:`BRATS_SEGMENTS` by its
            SegmentedPropertyTypeCodeSequence, which gives back the values ``write_seg`` got.

    Returns:
        uint8 (uint16 for label values above 255) array of shape (X, Y, Z): X column index,
        Y row index, Z = ``len(source_files)`` in ``source_files`` order; 0 background, else
        the original label values (1/2/4 for BraTS). Slices without any stored frame are 0.

    Raises:
        ValueError: ``path`` is not a readable DICOM SEG, does not reference the given source
            files (message names both files), or has segments whose label value is unknown.
    """
    import highdicom as hd
    import pydicom

    path = Path(path)
    paths = [os.fspath(p) for p in source_files]
    if not paths:
        raise ValueError(f"{path}: no source files given")
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
        raise ValueError(f"{path}: cannot read as DICOM SEG: {type(exc).__name__}: {exc}") from exc
    if seg.SOPClassUID not in SEG_SOP_CLASS_UIDS:
        raise ValueError(f"{path}: not a DICOM Segmentation (SOP class {seg.SOPClassUID})")

    numbers = list(seg.segment_numbers)
    lut = _segment_lut(seg, numbers, label_values, path)

    uids = []
    for p in paths:
        try:
            uids.append(
                str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            )
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{p}: cannot read the SOPInstanceUID: {type(exc).__name__}: {exc}") from exc
    referenced = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    missing = [(p, u) for p, u in zip(paths, uids, strict=True) if u not in referenced]
    if missing:
        series = sorted({str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])})
        raise ValueError(
            f"{path}: does not reference {len(missing)} of the {len(paths)} source file(s), e.g. "
            f"{missing[0][0]} (SOPInstanceUID {missing[0][1]}); it references series {series}"
        )
    try:
        stack = seg.get_pixels_by_source_instance(
            uids, combine_segments=True, relabel=False, assert_missing_frames_are_empty=True
        )  # (Z, rows, cols) segment numbers
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ValueError(f"{path}: cannot place the SEG frames on the source slices: {exc}") from exc
    return np.ascontiguousarray(lut[np.asarray(stack, dtype=np.intp)].transpose(2, 1, 0))


# --------------------------------------------------------------------------------------------
# helpers


def _segment_specs(label_values: Sequence[int], segment_names: Sequence[str] | None) -> list[SegmentSpec]:
    values = [int(v) for v in label_values]
    if not values:
        raise ValueError("label_values is empty: nothing to encode")
    if len(set(values)) != len(values):
        raise ValueError(f"label_values has duplicates: {values}")
    unknown = [v for v in values if v not in BRATS_SEGMENTS]
    if unknown:
        raise ValueError(
            f"label value(s) {unknown} have no segment definition; known: {sorted(BRATS_SEGMENTS)} (BRATS_SEGMENTS)"
        )
    specs = [BRATS_SEGMENTS[v] for v in values]
    if segment_names is not None:
        names = list(segment_names)
        if len(names) != len(values):
            raise ValueError(f"{len(names)} segment_names for {len(values)} label_values {values}")
        specs = [SegmentSpec(s.label, str(n), s.property_type, s.category) for s, n in zip(specs, names, strict=True)]
    return specs


def _as_label_array(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor / MetaTensor
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"labels must have shape (X, Y, Z) (or (1, X, Y, Z)), got {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("labels hold non-integer values; pass integer labels (e.g. after argmax)")
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {array.dtype}")
    return array


def _read_header(path: str) -> Dataset:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read DICOM: {type(exc).__name__}: {exc}") from exc


def _check_grid(array: np.ndarray, datasets: Sequence[Any], paths: Sequence[str]) -> None:
    nx, ny, nz = array.shape
    if nz != len(paths):
        raise ValueError(
            f"labels have {nz} slices (shape (X, Y, Z) = {array.shape}) but {len(paths)} source files were "
            f"given (first {paths[0]})"
        )
    for ds, p in zip(datasets, paths, strict=True):
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if (rows, cols) != (ny, nx):
            raise ValueError(
                f"{p}: image is {rows} rows x {cols} columns, so labels must have shape (X, Y, Z) = "
                f"({cols}, {rows}, {nz}), got {array.shape}"
            )
        frames = int(ds.get("NumberOfFrames") or 1)
        if frames != 1:
            raise ValueError(f"{p}: multi-frame source ({frames} frames); write_seg takes single-frame slices")


def _check_unique_instances(datasets: Sequence[Any], paths: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for ds, p in zip(datasets, paths, strict=True):
        uid = str(ds.get("SOPInstanceUID", ""))
        if not uid:
            raise ValueError(f"{p}: no SOPInstanceUID")
        if uid in seen:
            raise ValueError(f"{p}: same SOPInstanceUID {uid} as {seen[uid]}; each slice needs its own instance")
        seen[uid] = p


def _encode(array: np.ndarray, values: Sequence[int], out_path: Path) -> np.ndarray:
    present = np.unique(array)
    unknown = sorted(int(v) for v in present if v != 0 and int(v) not in values)
    if unknown:
        raise ValueError(f"{out_path}: labels hold value(s) {unknown} outside 0 and label_values {list(values)}")
    lut = np.zeros(max(values) + 1, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        lut[value] = number
    segments = lut[array.astype(np.intp, copy=False)]  # (X, Y, Z) segment numbers, values now known >= 0
    return np.ascontiguousarray(segments.transpose(2, 1, 0))  # (Z, rows, cols)


def _complete_sources(datasets: Sequence[Any]) -> None:
    """Add, in memory, the attributes highdicom reads that a minimal export may omit."""
    for ds in datasets:
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
    if all(ds.get("SliceThickness") not in (None, "") for ds in datasets):
        return
    thickness = _slice_spacing(datasets)
    for ds in datasets:
        if ds.get("SliceThickness") in (None, ""):
            ds.SliceThickness = thickness


def _slice_spacing(datasets: Sequence[Any]) -> float | None:
    try:
        iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        positions = np.asarray([ds.ImagePositionPatient for ds in datasets], dtype=float)
    except (AttributeError, ValueError, TypeError):
        return None
    if len(positions) < 2:
        return None
    offsets = np.sort(positions @ np.cross(iop[:3], iop[3:]))
    steps = np.diff(offsets)
    return round(float(np.median(steps)), 6) if steps.size and np.median(steps) > 0 else None


def _segment_lut(seg: Any, numbers: Sequence[int], label_values: Sequence[int] | None, path: Path) -> np.ndarray:
    if label_values is not None:
        values = [int(v) for v in label_values]
        if len(values) < max(numbers, default=0):
            raise ValueError(f"{path}: has segment numbers {list(numbers)} but label_values {values} is shorter")
        mapping = {n: values[n - 1] for n in numbers}
    else:
        by_code = {(s.property_type.value, s.property_type.scheme_designator): s.label for s in BRATS_SEGMENTS.values()}
        mapping = {}
        for number in numbers:
            code = seg.get_segment_description(number).segmented_property_type
            key = (str(code.value), str(code.scheme_designator))
            if key not in by_code:
                raise ValueError(
                    f"{path}: segment {number} has property type {code.scheme_designator} {code.value} "
                    f"'{code.meaning}', not one of BRATS_SEGMENTS; pass label_values"
                )
            mapping[number] = by_code[key]
    top = max([0, *mapping.keys()])
    dtype = np.uint8 if max([0, *mapping.values()]) <= 255 else np.uint16
    lut = np.zeros(top + 1, dtype=dtype)
    for number, value in mapping.items():
        lut[number] = value
    return lut
