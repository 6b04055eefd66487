"""The BIDS sidecar JSON of one converted volume series, with the fields dcm2niix writes.

:func:`bids_sidecar` reads only headers (``stop_before_pixels=True`` is enough) of the instances
of ONE output volume series, given in the order the NIfTI stores them: the first volume's slices
first (for Siemens mosaics, one dataset per volume). It returns only the fields that the headers
determine, in BIDS units (seconds, degrees, tesla, millimetres). Header text is untrusted data and
is kept as plain strings; an odd or unreadable header value leaves its field out, it never raises.

Where each field comes from (the first dataset unless said otherwise):

============================  ==================================================================
``Modality``                  (0008,0060) Modality
``Manufacturer``              (0008,0070), named as dcm2niix names vendors (``Siemens``, ``GE``..)
``ManufacturersModelName``    (0008,1090) ManufacturerModelName
``MagneticFieldStrength``     (0018,0087) in tesla (a value over 100 is read as gauss)
``SeriesDescription``         (0008,103E)
``ProtocolName``              (0018,1030)
``SeriesNumber``              (0020,0011)
``ScanningSequence``          (0018,0020), several values joined with a backslash
``SequenceVariant``           (0018,0021), idem
``SliceThickness``            (0018,0050) in mm
``EchoTime``                  (0018,0081) ms -> s
``RepetitionTime``            (0018,0080) ms -> s
``InversionTime``             (0018,0082) ms -> s
``FlipAngle``                 (0018,1314) degrees
``ImageType``                 (0008,0008) as a list, values split at ``_`` as dcm2niix splits
                              them (``ECHO_00`` -> ``ECHO``, ``00``); ``MAGNITUDE`` is appended
                              when the header says magnitude (Siemens value ``M``; GE private
                              (0043,xx2F) = 0) and the list lacks it, as dcm2niix v1.0.20241127
                              does (v1.0.20220720 and older do not)
``PhaseEncodingDirection``    2-D only: (0018,1312) InPlanePhaseEncodingDirection gives the axis
                              (COL -> ``j``, ROW -> ``i``), the polarity comes from Siemens' CSA
                              image header ``PhaseEncodingDirectionPositive`` or from GE's
                              user-defined data (0043,xx2A) (phase polarity and k-space direction
                              bits). dcm2niix flips the row order of the image, so a positive
                              column polarity is written ``j-``
``PhaseEncodingAxis``         2-D with that axis known but no polarity: ``i`` or ``j`` only
``SliceTiming``               2-D only. Siemens mosaics: CSA ``MosaicRefAcqTimes`` of the first
                              volume, or of the second when the first's are implausible or span
                              a different range (dcm2niix's rule for first volumes recorded
                              wrongly). GE ``epiRT``/``epi`` series: computed from the protocol
                              data block (0025,xx1B) ``SLICEORDER`` (sequential or interleaved),
                              TR and the number of slices, each slice placed by its
                              InstanceNumber rank; left out for multiband, delayed-acquisition or
                              other GE sequences
============================  ==================================================================

Numeric fields equal to zero or below are left out, as dcm2niix leaves them out.
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import pydicom

from medimg.dicom.mr_physics import field_strength

__all__ = ["SIDECAR_FIELDS", "bids_sidecar"]

#: The fields :func:`bids_sidecar` may return, in the order it returns them.
SIDECAR_FIELDS: tuple[str, ...] = (
    "Modality",
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "SeriesDescription",
    "ProtocolName",
    "SeriesNumber",
    "ScanningSequence",
    "SequenceVariant",
    "ImageType",
    "SliceThickness",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "PhaseEncodingDirection",
    "PhaseEncodingAxis",
    "SliceTiming",
)

_VENDORS = (
    ("SIEMENS", "Siemens"),
    ("GE", "GE"),
    ("PHILIPS", "Philips"),
    ("TOSHIBA", "Toshiba"),
    ("CANON", "Canon"),
    ("UIH", "UIH"),
    ("UNITED IMAGING", "UIH"),
    ("BRUKER", "Bruker"),
    ("HITACHI", "Hitachi"),
)
_MAX_PROTOCOL_BLOCK = 1 << 20  # GE protocol blocks are ~kB; refuse to inflate more than 1 MiB
_GE_UNFLIPPED, _GE_FLIPPED = 0, 4


def bids_sidecar(datasets: Sequence[pydicom.Dataset]) -> dict[str, Any]:
    """BIDS sidecar fields of one volume series, as dcm2niix writes them.

    Args:
        datasets: headers of the series' instances in the NIfTI's order (first volume's slices
            first; one dataset per volume for Siemens mosaics).

    Returns:
        Only the fields the headers determine, in the order of :data:`SIDECAR_FIELDS`.

    Raises:
        ValueError: when ``datasets`` is empty.
    """
    if not datasets:
        raise ValueError("bids_sidecar needs the headers of at least one instance")
    first = datasets[0]
    out: dict[str, Any] = {}
    _put(out, "Modality", _text(first, "Modality"))
    _put(out, "Manufacturer", _vendor(first))
    _put(out, "ManufacturersModelName", _text(first, "ManufacturerModelName"))
    _put(out, "MagneticFieldStrength", _number(field_strength(_raw(first, "MagneticFieldStrength"))))
    _put(out, "SeriesDescription", _text(first, "SeriesDescription"))
    _put(out, "ProtocolName", _text(first, "ProtocolName"))
    series_number = _positive(first, "SeriesNumber")
    _put(out, "SeriesNumber", int(series_number) if series_number is not None else None)
    _put(out, "ScanningSequence", _text(first, "ScanningSequence"))
    _put(out, "SequenceVariant", _text(first, "SequenceVariant"))
    _put(out, "ImageType", _image_type(first))
    _put(out, "SliceThickness", _positive(first, "SliceThickness"))
    for keyword in ("EchoTime", "RepetitionTime", "InversionTime"):
        _put(out, keyword, _seconds(_positive(first, keyword)))
    _put(out, "FlipAngle", _positive(first, "FlipAngle"))
    if _text(first, "MRAcquisitionType") != "3D":
        out.update(_phase_encoding(first))
        _put(out, "SliceTiming", _slice_timing(datasets))
    return out


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


def _raw(ds: pydicom.Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom raises many kinds on malformed values
        return None


def _items(ds: pydicom.Dataset, keyword: str) -> list[str]:
    value = _raw(ds, keyword)
    if value is None:
        return []
    items = list(value) if isinstance(value, pydicom.multival.MultiValue | list | tuple) else [value]
    return [str(item) for item in items]


def _values(ds: pydicom.Dataset, keyword: str) -> list[str]:
    return [item.strip() for item in _items(ds, keyword) if item.strip()]


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    """The element as one string; several values joined by the backslash DICOM stores between them."""
    text = "\\".join(_items(ds, keyword)).strip()
    return text or None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _positive(ds: pydicom.Dataset, keyword: str) -> float | None:
    number = _number(_raw(ds, keyword))
    return number if number is not None and number > 0 else None


def _seconds(milliseconds: float | None) -> float | None:
    return milliseconds / 1000.0 if milliseconds is not None else None


def _vendor(ds: pydicom.Dataset) -> str | None:
    name = _text(ds, "Manufacturer")
    if name is None:
        return None
    upper = name.upper()
    for prefix, vendor in _VENDORS:
        if upper.startswith(prefix):
            return vendor
    return name


def _private(ds: pydicom.Dataset, group: int, offset: int, creator: str) -> Any:
    try:
        return ds.get_private_item(group, offset, creator).value
    except Exception:  # noqa: BLE001 - absent, or a creator block that does not parse
        return None


def _image_type(ds: pydicom.Dataset) -> list[str] | None:
    values = [part for value in _values(ds, "ImageType") for part in value.split("_") if part]
    if not values:
        return None
    vendor = _vendor(ds)
    if vendor == "GE":
        magnitude = _number(_private(ds, 0x0043, 0x2F, "GEMS_PARM_01")) == 0
    else:
        magnitude = "M" in values[2:]
    if magnitude and "MAGNITUDE" not in values:
        values.append("MAGNITUDE")
    return values


def _csa_tags(ds: pydicom.Dataset) -> dict[str, Any]:
    """The Siemens CSA image header's tags (``{}`` when absent or unreadable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel.nicom warns that its readers are experimental
            from nibabel.nicom import csareader

            header = csareader.get_csa_header(ds, "image")
    except Exception:  # noqa: BLE001 - a malformed CSA blob is data, not our error
        return {}
    return header.get("tags", {}) if isinstance(header, dict) else {}


def _csa_items(tags: dict[str, Any], name: str) -> list[Any]:
    entry = tags.get(name)
    items = entry.get("items") if isinstance(entry, dict) else None
    return list(items) if isinstance(items, list) else []


def _phase_encoding(ds: pydicom.Dataset) -> dict[str, str]:
    """``PhaseEncodingDirection`` (polarity known) or ``PhaseEncodingAxis`` (axis only)."""
    axis_code = (_text(ds, "InPlanePhaseEncodingDirection") or "").upper()
    if axis_code not in ("ROW", "COL") and _vendor(ds) == "GE":
        axis_code = str(_private(ds, 0x0043, 0x8A, "GEMS_PARM_01") or "").strip().upper()
    if axis_code not in ("ROW", "COL"):
        return {}
    axis = "j" if axis_code == "COL" else "i"
    positive = _polarity(ds)
    if positive is None:
        return {"PhaseEncodingAxis": axis}
    # dcm2niix stores rows bottom-up, which reverses the column (j) polarity.
    negative = positive if axis == "j" else not positive
    return {"PhaseEncodingDirection": axis + ("-" if negative else "")}


def _polarity(ds: pydicom.Dataset) -> bool | None:
    """True when phase is encoded towards increasing row/column index; None when unknown."""
    vendor = _vendor(ds)
    if vendor == "Siemens":
        items = _csa_items(_csa_tags(ds), "PhaseEncodingDirectionPositive")
        value = _number(items[0]) if items else None
        return None if value not in (0, 1) else value == 1
    if vendor == "GE":
        sequence = str(_private(ds, 0x0019, 0x9C, "GEMS_ACQU_01") or "").lower()
        if "pepolar" in sequence:  # research sequences that reverse polarity per volume
            return None
        flag = _ge_polarity_flag(_private(ds, 0x0043, 0x2A, "GEMS_PARM_01"))
        return None if flag is None else flag == _GE_UNFLIPPED
    return None


def _ge_polarity_flag(blob: Any) -> int | None:
    """GE's phase polarity (0 unflipped, 4 flipped) from the user-defined data (0043,xx2A)."""
    if not isinstance(blob, bytes) or len(blob) < 916:
        return None
    start = struct.unpack_from("<H", blob, 24)[0]
    if len(blob) < start + 916:
        return None
    version = struct.unpack_from("<f", blob, start)[0]
    if not 5.0 <= version <= 40.0:
        return None
    base, kydir = start, 0x394
    if version >= 25.002:
        base, kydir = base + 0x4C, kydir - 0x8C
    if base + max(kydir, 0x3A) + 2 > len(blob):
        return None
    if not struct.unpack_from("<h", blob, base + 0x3A)[0] & 0x800:  # not an EPI acquisition
        return None
    flag = struct.unpack_from("<h", blob, base + 0x30)[0] & 0x0004
    if struct.unpack_from("<h", blob, base + kydir)[0] == 2:  # k-space read bottom-up
        flag = _GE_UNFLIPPED if flag == _GE_FLIPPED else _GE_FLIPPED
    return flag


def _slice_timing(datasets: Sequence[pydicom.Dataset]) -> list[float] | None:
    vendor = _vendor(datasets[0])
    if vendor == "Siemens" and "MOSAIC" in _values(datasets[0], "ImageType"):
        return _mosaic_times(datasets)
    if vendor == "GE":
        return _ge_times(datasets)
    return None


def _mosaic_times(datasets: Sequence[pydicom.Dataset]) -> list[float] | None:
    """Seconds per mosaic tile, from CSA ``MosaicRefAcqTimes`` (ms)."""
    tr = _positive(datasets[0], "RepetitionTime")
    tags = _csa_tags(datasets[0])
    count = _number((_csa_items(tags, "NumberOfImagesInMosaic") or [None])[0])
    if tr is None or count is None or count < 2:
        return None
    n = int(count)
    first = _tile_times(tags, n)
    second = _tile_times(_csa_tags(datasets[1]), n) if len(datasets) > 1 else None
    chosen = first
    if second is not None and _plausible(second, tr):
        spans_differ = first is not None and not _same(_span(first), _span(second))
        if first is None or not _plausible(first, tr) or spans_differ:
            chosen = second
    if chosen is None or not _plausible(chosen, tr):
        return None
    low = min(chosen)
    return [(t - low) / 1000.0 for t in chosen]


def _tile_times(tags: dict[str, Any], n: int) -> list[float] | None:
    numbers = [_number(t) for t in _csa_items(tags, "MosaicRefAcqTimes")[:n]]
    if len(numbers) != n or any(t is None for t in numbers):
        return None
    return [float(t) for t in numbers if t is not None]


def _span(times: list[float]) -> float:
    return max(times) - min(times)


def _plausible(times: list[float], tr: float) -> bool:
    return _span(times) > 0 and _span(times) < tr


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1.0)


def _ge_protocol(ds: pydicom.Dataset) -> dict[str, str]:
    """``KEY "value"`` lines of GE's gzip-compressed protocol data block (0025,xx1B)."""
    blob = _private(ds, 0x0025, 0x1B, "GEMS_SERS_01")
    if not isinstance(blob, bytes) or len(blob) < 24:
        return {}
    start = blob.find(b"\x1f\x8b\x08")
    if start < 0:
        return {}
    try:
        text = zlib.decompressobj(wbits=31).decompress(blob[start:], _MAX_PROTOCOL_BLOCK)
    except zlib.error:
        return {}
    found: dict[str, str] = {}
    for line in text.decode("latin-1").splitlines():
        key, _, value = line.strip().partition(" ")
        if key and value.startswith('"') and value.endswith('"') and len(value) >= 2:
            found[key] = value[1:-1]
    return found


def _ge_times(datasets: Sequence[pydicom.Dataset]) -> list[float] | None:
    """Seconds per slice of GE 2-D EPI (``epiRT`` / ``epi``), sequential or interleaved."""
    first = datasets[0]
    sequence = str(_private(first, 0x0019, 0x9C, "GEMS_ACQU_01") or "").strip().lower()
    tr = _positive(first, "RepetitionTime")
    if sequence not in ("epirt", "epi") or tr is None:
        return None
    protocol = _ge_protocol(first)
    order = protocol.get("SLICEORDER")
    multiband = _number(protocol.get("MBACCEL", "1"))
    delay = _number(protocol.get("DELACQ", "0"))
    if order not in ("0", "1") or multiband != 1 or delay != 0:
        return None
    ranks = _slice_ranks(datasets)
    if ranks is None or str(len(ranks)) != protocol.get("NOSLC", str(len(ranks))):
        return None
    n = len(ranks)
    step = tr / n / 1000.0
    if order == "0":
        acquired_at = list(range(n))
    else:  # interleaved: 1st, 3rd, 5th... slice of the prescription, then 2nd, 4th...
        first_half = (n + 1) // 2
        acquired_at = [i // 2 if i % 2 == 0 else first_half + i // 2 for i in range(n)]
    return [acquired_at[rank] * step for rank in ranks]


def _slice_ranks(datasets: Sequence[pydicom.Dataset]) -> list[int] | None:
    """For the first volume's slices (in NIfTI order): each one's InstanceNumber rank."""
    positions = []
    for ds in datasets:
        values = [_number(v) for v in _values(ds, "ImagePositionPatient")]
        if len(values) != 3 or any(v is None for v in values):
            return None
        positions.append(tuple(round(float(v), 3) for v in values if v is not None))
    n = len(set(positions))
    if n < 2 or len(datasets) % n or len(set(positions[:n])) != n:
        return None
    numbers = [_number(_raw(ds, "InstanceNumber")) for ds in datasets[:n]]
    if any(number is None for number in numbers) or len(set(numbers)) != n:
        return None
    order = sorted(range(n), key=lambda k: float(numbers[k] or 0))
    ranks = [0] * n
    for rank, index in enumerate(order):
        ranks[index] = rank
    return ranks
