"""Read one file's header (never its pixels) into an :class:`InstanceHeader`, or say why not.

This is the per-file work of a folder scan, run in worker processes, so it must never raise:
every failure becomes a :class:`QuarantineEntry` whose reason starts with a short category.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from functools import lru_cache
from typing import Any, BinaryIO

from medimg.dicom.codecs import decode_support
from medimg.dicom.index import InstanceHeader, QuarantineEntry

__all__ = ["INDEXED_KEYWORDS", "header_from_dataset", "jsonable", "read_instance_header"]

#: Header keywords kept per instance: what selection rules, the index and loaders look at.
#: Rules may name other keywords too; those are read from the first file on demand.
INDEXED_KEYWORDS: tuple[str, ...] = (
    "PatientID",
    "PatientName",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "BodyPartExamined",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "AcquisitionNumber",
    "ImageType",
    "ProtocolName",
    "SequenceName",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "ContrastBolusAgent",
    "ViewPosition",
    "ImageLaterality",
    "Laterality",
    "PatientOrientation",
    "PatientPosition",
    "PhotometricInterpretation",
    "Manufacturer",
    "ManufacturerModelName",
    "PresentationIntentType",
    "BreastImplantPresent",
    "FrameOfReferenceUID",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SpecificCharacterSet",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "GridFrameOffsetVector",
)

#: Keywords kept for geometry and loading only, not shown in the index output.
_PRIVATE_KEYWORDS = ("SpecificCharacterSet", "ImagePositionPatient", "ImageOrientationPatient", "GridFrameOffsetVector")

_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_DEFLATED = "1.2.840.10008.1.2.1.99"


def read_instance_header(path: str) -> InstanceHeader | QuarantineEntry:
    """Read the header of ``path`` and check that its pixel data is present and complete.

    Only the header is parsed; the pixel data element is located and its length checked
    against the file size (and, for native data, against Rows x Columns x frames), but not read.

    Args:
        path: a file path.

    Returns:
        An :class:`InstanceHeader` for a usable image instance, otherwise a
        :class:`QuarantineEntry` naming the file and the reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd value; we report instead
            return _read(path)
    except Exception as exc:  # noqa: BLE001 - a scan never raises; the reason is recorded
        return QuarantineEntry(path, f"corrupt header: {type(exc).__name__}: {exc}")


def _read(path: str) -> InstanceHeader | QuarantineEntry:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return QuarantineEntry(path, "broken symbolic link: target does not exist")
    except OSError as exc:
        return QuarantineEntry(path, f"unreadable: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return QuarantineEntry(path, "not a regular file (device, pipe or socket)")
    if st.st_size == 0:
        return QuarantineEntry(path, "not DICOM: empty file")
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        return QuarantineEntry(path, f"unreadable: {exc.strerror or exc}")
    with fp:
        head = fp.read(132)
        has_preamble = head[128:132] == b"DICM"
        if not has_preamble and not _looks_like_raw_dataset(head):
            return QuarantineEntry(path, "not DICOM: no 'DICM' prefix and no DICOM data element at the start")
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_preamble)
        except InvalidDicomError as exc:
            return QuarantineEntry(path, f"not DICOM: {exc}")
        except (EOFError, struct.error, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            return QuarantineEntry(path, f"truncated or corrupt header: {type(exc).__name__}: {exc}")
        pixel_pos = fp.tell()

        media_class = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or "")
        if media_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
            return QuarantineEntry(path, "DICOMDIR: a media directory that indexes other files, not an image")

        transfer_syntax = _transfer_syntax(ds)
        try:
            attributes = _indexed_attributes(ds)
        except Exception as exc:  # noqa: BLE001 - a bad value in any indexed element
            return QuarantineEntry(path, f"corrupt header value: {type(exc).__name__}: {exc}")

        if transfer_syntax == _DEFLATED:
            problem = _check_pixels_fully(path, attributes)
        else:
            problem = _check_pixel_element(fp, pixel_pos, st.st_size, ds, attributes)
            if problem and not problem.startswith("no pixel data"):
                # Some writers encode odd element headers that pydicom still reads correctly:
                # confirm a suspected problem with a full read before quarantining.
                problem = _check_pixels_fully(path, attributes, suspicion=problem)
        if problem:
            return QuarantineEntry(path, problem)

        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not attributes.get(keyword):
                return QuarantineEntry(
                    path, f"incomplete header: no {keyword}, so the file cannot be placed in a series"
                )
        if not attributes.get("Rows") or not attributes.get("Columns"):
            return QuarantineEntry(path, "incomplete header: pixel data without Rows/Columns")

        support = decode_support(transfer_syntax)
        if not support.known:
            return QuarantineEntry(path, f"unsupported transfer syntax: {support.note}")

        header = InstanceHeader(path=path, attributes=attributes, transfer_syntax=transfer_syntax)
        _add_geometry(header, ds)
        return header


def header_from_dataset(ds: Any, path: str) -> InstanceHeader:
    """Build the :class:`InstanceHeader` of an already-read data set (no checks).

    Args:
        ds: a pydicom Dataset (pixel data may or may not have been read).
        path: the file it came from.
    """
    header = InstanceHeader(path=path, attributes=_indexed_attributes(ds), transfer_syntax=_transfer_syntax(ds))
    _add_geometry(header, ds)
    return header


def _looks_like_raw_dataset(head: bytes) -> bool:
    """True when a file without preamble starts like a DICOM data set (group 0002 or 0008)."""
    if len(head) < 8:
        return False
    for fmt in ("<HH", ">HH"):
        group, element = struct.unpack(fmt, head[:4])
        if group in (0x0002, 0x0008) and element < 0x0200:
            return True
    return False


def _transfer_syntax(ds: Any) -> str:
    from pydicom import uid

    ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
    if ts:
        return str(ts)
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        return uid.ImplicitVRLittleEndian
    return uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian


def jsonable(value: Any) -> Any:
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence
    from pydicom.valuerep import PersonName

    if value is None or isinstance(value, (bytes, Sequence)):
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, PersonName):
        return str(value)
    return str(value)


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI", "UC"}
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_ASCII_SAFE_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}


@lru_cache(maxsize=1)
def _indexed_tags() -> list[tuple[int, str, str]]:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    out = []
    for keyword in INDEXED_KEYWORDS:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        out.append((int(tag), keyword, dictionary_VR(tag)))
    return out


def _fast_value(raw: Any, vr: str, little: bool, plain_charset: bool) -> tuple[bool, Any]:
    """Convert a raw element of a simple VR without pydicom's general machinery.

    pydicom's conversion costs more than reading the whole header, so the handful of text and
    number VRs the index needs are converted here; anything else returns ``(False, None)`` and
    goes through pydicom.
    """
    value = raw.value
    if value is None:
        return False, None
    if vr in _TEXT_VRS:
        if not plain_charset and vr not in _ASCII_SAFE_VRS and any(b > 127 for b in value):
            return False, None
        text = value.decode("latin-1").rstrip(" \x00")
        parts = [part.strip(" \x00") for part in text.split("\\")]
        if vr == "DS":
            converted: list[Any] = [float(part) for part in parts if part]
        elif vr == "IS":
            converted = [int(float(part)) for part in parts if part]
        else:
            converted = parts
        if not converted or converted == [""]:
            return True, None
        return True, converted[0] if len(converted) == 1 else converted
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        if len(value) % size:
            return False, None
        numbers = list(struct.unpack(("<" if little else ">") + fmt * (len(value) // size), value))
        if not numbers:
            return True, None
        return True, numbers[0] if len(numbers) == 1 else numbers
    return False, None


def _indexed_attributes(ds: Any) -> dict[str, Any]:
    from pydicom.dataelem import RawDataElement
    from pydicom.multival import MultiValue

    little = getattr(ds, "original_encoding", (True, True))[1] is not False
    charset = ds.get_item(0x00080005) if 0x00080005 in ds else None
    charset_value = charset.value if charset is not None else None
    if isinstance(charset_value, bytes):
        charset_value = charset_value.decode("latin-1")
    if isinstance(charset_value, (list, tuple, MultiValue)):
        charset_value = "\\".join(str(v) for v in charset_value)
    plain_charset = (charset_value or "").strip(" \x00") in ("", "ISO_IR 6", "ISO_IR 100")
    out: dict[str, Any] = {}
    elements = dict(ds.items())  # tag -> element, raw (unconverted) where not yet accessed
    for tag, keyword, dict_vr in _indexed_tags():
        raw = elements.get(tag)
        if raw is None:
            continue
        done = False
        if isinstance(raw, RawDataElement):
            vr = raw.VR or dict_vr
            done, value = _fast_value(raw, str(vr), little, plain_charset)
        if not done:
            value = jsonable(ds[tag].value)
        if value is not None and value != "":
            out[keyword] = value
    return out


def _check_pixel_element(fp: BinaryIO, pos: int, file_size: int, ds: Any, attributes: dict[str, Any]) -> str | None:
    """Locate the pixel data element at ``pos`` and check it is complete; None when fine."""
    fp.seek(pos)
    raw = fp.read(12)
    little = getattr(ds, "original_encoding", (True, True))[1]
    implicit = getattr(ds, "original_encoding", (True, True))[0]
    endian = "<" if little is not False else ">"
    if len(raw) < 8:
        return _no_pixel_reason(ds)
    group, element = struct.unpack(endian + "HH", raw[:4])
    tag = (group << 16) | element
    if tag not in _PIXEL_TAGS:
        return _no_pixel_reason(ds)
    if implicit:
        (length,) = struct.unpack(endian + "I", raw[4:8])
        header_len = 8
    elif raw[4:6] in _LONG_VRS:
        if len(raw) < 12:
            return "truncated: file ends inside the pixel data element header"
        (length,) = struct.unpack(endian + "I", raw[8:12])
        header_len = 12
    else:
        (length,) = struct.unpack(endian + "H", raw[6:8])
        header_len = 8
    start = pos + header_len
    if length == _UNDEFINED:
        return _check_fragments(fp, start, file_size, endian)
    if start + length > file_size:
        return f"truncated: pixel data declares {length} bytes but the file holds {file_size - start}"
    expected = _native_pixel_bytes(attributes)
    if expected is not None and length < expected:
        return f"truncated: pixel data holds {length} bytes, Rows x Columns x frames x samples x bits needs {expected}"
    return None


def _no_pixel_reason(ds: Any) -> str:
    from pydicom.uid import UID

    sop_class = ds.get("SOPClassUID")
    name = UID(str(sop_class)).name if sop_class else "unknown SOP class"
    return f"no pixel data: not an image ({name})"


def _native_pixel_bytes(attributes: dict[str, Any]) -> int | None:
    try:
        rows, cols = int(attributes["Rows"]), int(attributes["Columns"])
        bits = int(attributes["BitsAllocated"])
    except (KeyError, TypeError, ValueError):
        return None
    frames = int(attributes.get("NumberOfFrames") or 1)
    samples = int(attributes.get("SamplesPerPixel") or 1)
    if attributes.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # chroma subsampled 2:1 horizontally: 4 values per 2 pixels
    total_bits = rows * cols * frames * samples * bits
    return (total_bits + 7) // 8


def _check_fragments(fp: BinaryIO, pos: int, file_size: int, endian: str) -> str | None:
    """Walk the items of encapsulated pixel data (seeking, not reading) up to the delimiter."""
    item, delimiter = 0xFFFEE000, 0xFFFEE0DD
    items = 0
    while True:
        fp.seek(pos)
        raw = fp.read(8)
        if len(raw) < 8:
            return "truncated: encapsulated pixel data ends without its sequence delimiter"
        group, element, length = struct.unpack(endian + "HHI", raw)
        tag = (group << 16) | element
        if tag == delimiter:
            # the first item is the basic offset table; at least one fragment must follow
            return None if items >= 2 else "corrupt pixel data: encapsulated pixel data has no fragments"
        if tag != item:
            return f"corrupt pixel data: unexpected tag ({group:04X},{element:04X}) among fragments"
        pos += 8 + length
        if pos > file_size:
            return "truncated: a pixel data fragment runs past the end of the file"
        items += 1


def _check_pixels_fully(path: str, attributes: dict[str, Any], suspicion: str | None = None) -> str | None:
    """Read the whole data set (pixel bytes included, not decoded) and check its pixel data.

    Used for deflated data sets, which cannot be seeked, and to confirm a suspicion raised by
    the quick element check.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        keyword = next((k for k in _PIXEL_TAGS.values() if k in ds), None)
        if keyword is None:
            return suspicion or _no_pixel_reason(ds)
        value = ds[keyword].value
    except Exception as exc:  # noqa: BLE001
        return suspicion or f"truncated or corrupt pixel data: {type(exc).__name__}: {exc}"
    if ds[keyword].is_undefined_length:
        return None
    expected = _native_pixel_bytes(attributes)
    if ds.file_meta.get("TransferSyntaxUID", "") and ds.file_meta.TransferSyntaxUID.is_compressed:
        return None if value else "corrupt pixel data: empty"
    if expected is not None and len(value) < expected:
        return suspicion or (
            f"truncated: pixel data holds {len(value)} bytes, Rows x Columns x frames x samples x bits needs {expected}"
        )
    return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _pair(value: Any) -> tuple[float, float] | None:
    out = _floats(value, 2)
    return None if out is None else (out[0], out[1])


def _point(value: Any) -> tuple[float, float, float] | None:
    out = _floats(value, 3)
    return None if out is None else (out[0], out[1], out[2])


def _first_item(ds: Any, keyword: str) -> Any:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _add_geometry(header: InstanceHeader, ds: Any) -> None:
    """Fill frame positions, orientation and spacings from classic or enhanced headers."""
    frames = header.frames
    shared = _first_item(ds, "SharedFunctionalGroupsSequence") if 0x52009229 in ds else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") if 0x52009230 in ds else None

    attrs = header.attributes
    orientation = _floats(attrs.get("ImageOrientationPatient"), 6)
    spacing = _pair(attrs.get("PixelSpacing"))
    thickness = attrs.get("SpacingBetweenSlices") or attrs.get("SliceThickness")
    if shared is not None:
        plane = _first_item(shared, "PlaneOrientationSequence")
        if plane is not None and orientation is None:
            orientation = _floats(plane.get("ImageOrientationPatient"), 6)
        measures = _first_item(shared, "PixelMeasuresSequence")
        if measures is not None:
            spacing = spacing or _pair(measures.get("PixelSpacing"))
            thickness = thickness or measures.get("SpacingBetweenSlices") or measures.get("SliceThickness")

    positions: list[tuple[float, float, float]] | None = None
    if per_frame and len(per_frame) == frames:
        found = []
        for item in per_frame:
            plane_pos = _first_item(item, "PlanePositionSequence")
            pos = _point(plane_pos.get("ImagePositionPatient")) if plane_pos is not None else None
            if orientation is None:
                plane = _first_item(item, "PlaneOrientationSequence")
                if plane is not None:
                    orientation = _floats(plane.get("ImageOrientationPatient"), 6)
            if spacing is None:
                measures = _first_item(item, "PixelMeasuresSequence")
                if measures is not None:
                    spacing = _pair(measures.get("PixelSpacing"))
            found.append(pos)
        if all(p is not None for p in found):
            positions = found  # type: ignore[assignment]
    else:
        ipp = _point(attrs.get("ImagePositionPatient"))
        offsets = attrs.get("GridFrameOffsetVector")
        if offsets is not None and not isinstance(offsets, list):
            offsets = [offsets]
        if ipp is not None and frames == 1:
            positions = [ipp]
        elif ipp is not None and orientation is not None and offsets and len(offsets) == frames:
            import numpy as np

            normal = np.cross(orientation[:3], orientation[3:])
            points = [np.add(ipp, float(o) * normal) for o in offsets]
            positions = [(float(p[0]), float(p[1]), float(p[2])) for p in points]

    if spacing is None:
        spacing = _pair(attrs.get("ImagerPixelSpacing"))
    for keyword in _PRIVATE_KEYWORDS:
        attrs.pop(keyword, None)
    header.frame_positions = positions if orientation is not None else None
    header.frame_orientation = orientation if positions is not None else None
    header.pixel_spacing = spacing
    try:
        header.slice_spacing_hint = float(thickness) if thickness else None
    except (TypeError, ValueError):
        header.slice_spacing_hint = None
