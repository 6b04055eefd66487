"""DICOM helpers shared by the synthetic-data generators.

All generators build their files through these functions so that the file meta
information, UID derivation, pixel encoding and atomic writing behave the same
everywhere:

* :func:`make_uid` derives a UID from the seed and an item key
  (:func:`pydicom.uid.generate_uid` with ``entropy_srcs``), so the same seed
  always yields the same UIDs.
* :func:`new_dataset` creates a dataset with file meta and the SOP Common /
  Patient / Study attributes every IOD needs.
* :func:`set_pixels` stores a native (uncompressed) frame;
  :func:`encode_jpeg_baseline` stores a Pillow-encoded JPEG Baseline (Process 1)
  frame (pydicom has no JPEG Baseline encoder); :func:`compress_lossless` uses
  pydicom's encoders for RLE Lossless and JPEG 2000 Lossless.
* :func:`write_dataset` serializes to memory and writes atomically;
  :class:`SeriesWriter` does the same for the many slices of a series, encoding
  the elements the slices share only once.

Fixed values (dates, times, software names) keep output byte-identical across runs.
"""

from __future__ import annotations

import heapq
import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from medimg.synth.common import FileLog, atomic_write_bytes

__all__ = [
    "LOSSLESS_SYNTAXES",
    "SeriesWriter",
    "code_item",
    "compress_lossless",
    "encode_jpeg_baseline",
    "format_ds",
    "make_uid",
    "multi_value",
    "new_dataset",
    "sequence",
    "set_instance_uid",
    "set_pixels",
    "write_dataset",
]

#: Transfer syntaxes :func:`compress_lossless` accepts.
LOSSLESS_SYNTAXES: frozenset[str] = frozenset({RLELossless, JPEG2000Lossless})

_SOFTWARE = "medimg.synth"
_META_GROUP_LENGTH = Tag(0x0002, 0x0000)
_META_INSTANCE_UID = Tag(0x0002, 0x0003)


def make_uid(seed: int, *keys: object) -> UID:
    """Return a deterministic UID for ``(seed, *keys)``.

    The UID uses pydicom's root (``1.2.826.0.1.3680043.8.498.``) followed by a
    decimal rendering of a SHA-512 hash of the key, as
    :func:`pydicom.uid.generate_uid` does with ``entropy_srcs``.

    Args:
        seed: Global seed.
        *keys: Item key, e.g. ``("cxr", 3, "study")``.

    Returns:
        A valid UID of at most 64 characters.
    """
    return generate_uid(entropy_srcs=[_SOFTWARE, str(int(seed)), *(str(k) for k in keys)])


def format_ds(value: float, digits: int = 6) -> str:
    """Format a float as a DICOM Decimal String (at most 16 characters).

    Args:
        value: Number to format.
        digits: Maximum number of decimals; trailing zeros are stripped.

    Returns:
        e.g. ``"0.572"`` or ``"2"``.
    """
    text = f"{float(value):.{digits}f}".rstrip("0").rstrip(".")
    if text in ("", "-0"):
        text = "0"
    if len(text) > 16:
        text = f"{float(value):.10g}"
    return text


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """Return a Code Sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def new_dataset(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    study_instance_uid: str,
    series_instance_uid: str,
    modality: str,
    patient_id: str,
    patient_name: str | None = None,
    study_date: str = "20200101",
    study_time: str = "000000",
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Create a dataset with file meta and the attributes every generated IOD shares.

    Sets the SOP Common (class, instance, character set), Patient (name, id,
    empty birth date and sex unless overwritten), General Study (UID, date, time,
    empty referring physician / accession / id) and General Series (modality,
    UID) attributes. Content date and time equal the study date and time.

    Args:
        sop_class_uid: SOP Class UID, e.g. ``SecondaryCaptureImageStorage``.
        sop_instance_uid: SOP Instance UID (also the MediaStorageSOPInstanceUID).
        study_instance_uid: Study Instance UID.
        series_instance_uid: Series Instance UID.
        modality: Modality code (``"CR"``, ``"MG"``, ``"MR"``, ...).
        patient_id: Patient ID.
        patient_name: Patient's Name; defaults to ``patient_id``.
        study_date: ``YYYYMMDD``.
        study_time: ``HHMMSS[.FFFFFF]``.
        transfer_syntax_uid: Initial transfer syntax (file meta).

    Returns:
        The dataset, ready for pixel data.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = UID(sop_class_uid)
    ds.SOPInstanceUID = UID(sop_instance_uid)
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.ContentTime = study_time
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_name if patient_name is not None else patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = UID(study_instance_uid)
    ds.SeriesInstanceUID = UID(series_instance_uid)
    ds.StudyID = ""
    return ds


def set_instance_uid(ds: Dataset, sop_instance_uid: str) -> None:
    """Set the SOP Instance UID in both the dataset and its file meta."""
    ds.SOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)


def set_pixels(
    ds: Dataset,
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
) -> None:
    """Store one native greyscale frame and the Image Pixel attributes.

    Sets Rows, Columns, SamplesPerPixel, PhotometricInterpretation,
    BitsAllocated (from the dtype), BitsStored, HighBit, PixelRepresentation and
    PixelData, and switches an encapsulated transfer syntax back to Explicit VR
    Little Endian. The SOP Instance UID is left alone.

    Args:
        ds: Dataset to modify in place.
        arr: ``(rows, columns)`` array of dtype uint8, uint16 or int16.
        photometric: ``"MONOCHROME1"`` or ``"MONOCHROME2"``.
        bits_stored: Bits Stored; defaults to the dtype's full width.

    Raises:
        ValueError: If ``arr`` is not 2-D or values exceed ``bits_stored``.
    """
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {arr.shape}")
    bits = int(bits_stored or arr.dtype.itemsize * 8)
    ds.set_pixel_data(np.ascontiguousarray(arr), photometric, bits, generate_instance_uid=False)


def encode_jpeg_baseline(ds: Dataset, arr: np.ndarray, *, quality: int = 90) -> None:
    """Store ``arr`` as an encapsulated JPEG Baseline (Process 1) frame.

    The frame is encoded with Pillow (4:4:4, no optimization, so output is
    deterministic) and wrapped with :func:`pydicom.encaps.encapsulate` (with a
    Basic Offset Table). The transfer syntax becomes ``JPEGBaseline8Bit`` and the
    lossy-compression flags are set (``LossyImageCompression = "01"``,
    ``LossyImageCompressionMethod = "ISO_10918_1"``, ratio from the sizes).

    Args:
        ds: Dataset to modify in place.
        arr: ``(rows, columns)`` ``uint8`` image, MONOCHROME2.
        quality: Pillow JPEG quality (1-95).

    Raises:
        ValueError: If ``arr`` is not a 2-D ``uint8`` array.
    """
    from PIL import Image

    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"JPEG baseline needs a 2-D uint8 frame, got {arr.dtype} {arr.shape}")
    set_pixels(ds, arr, photometric="MONOCHROME2", bits_stored=8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(
        buf, format="JPEG", quality=int(quality), optimize=False, progressive=False
    )
    frame = buf.getvalue()
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = format_ds(arr.size / len(frame), 2)


def compress_lossless(ds: Dataset, transfer_syntax_uid: str) -> None:
    """Re-encode the dataset's native pixel data with a lossless syntax.

    Args:
        ds: Dataset with native Pixel Data (see :func:`set_pixels`).
        transfer_syntax_uid: ``RLELossless`` or ``JPEG2000Lossless``; Explicit
            VR Little Endian is accepted and leaves the data native.

    Raises:
        ValueError: For any other transfer syntax.
    """
    if transfer_syntax_uid == ExplicitVRLittleEndian:
        return
    if transfer_syntax_uid not in LOSSLESS_SYNTAXES:
        raise ValueError(f"unsupported lossless transfer syntax {transfer_syntax_uid}")
    ds.compress(UID(transfer_syntax_uid), generate_instance_uid=False)


def write_dataset(ds: Dataset, path: str | os.PathLike[str], log: FileLog | None = None) -> int:
    """Serialize ``ds`` as a DICOM Part 10 file and write it atomically.

    Args:
        ds: Dataset with ``file_meta`` (transfer syntax set).
        path: Destination file.
        log: If given, the write is recorded there.

    Returns:
        Number of bytes written.
    """
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return atomic_write_bytes(path, buf.getvalue(), log)


def multi_value(values: Sequence[float], digits: int = 6) -> list[str]:
    """Format a sequence of floats as a multi-valued DS list."""
    return [format_ds(v, digits) for v in values]


def sequence(*items: Dataset) -> DicomSequence:
    """Return a DICOM Sequence built from ``items``."""
    return DicomSequence(list(items))


def _encode_element(elem: DataElement, encodings: str | list[str]) -> bytes:
    """Encode one element as Explicit VR Little Endian."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


class SeriesWriter:
    """Fast writer for instances that differ only in a few elements.

    :meth:`pydicom.dataset.Dataset.save_as` re-encodes every element of every
    file, which dominates the time needed to write the hundreds of slices of an
    MR study. This writer encodes the elements shared by all instances once
    (from the dataset as it is at construction time) and, per instance, only the
    ``dynamic`` elements and the file meta information. The output is
    byte-identical to ``save_as(..., enforce_file_format=True)`` for explicit VR
    little-endian transfer syntaxes (native or encapsulated pixel data).

    Args:
        template: A fully populated instance (pixel data included). Every
            element not listed in ``dynamic`` must stay unchanged afterwards.
        dynamic: Keywords of the elements that change per instance, e.g.
            ``("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient",
            "PixelData")``.

    Raises:
        ValueError: If the template's transfer syntax is implicit VR or big endian.
    """

    def __init__(self, template: Dataset, dynamic: Iterable[str]) -> None:
        tsyntax = UID(template.file_meta.TransferSyntaxUID)
        if tsyntax.is_implicit_VR or not tsyntax.is_little_endian:
            raise ValueError(f"SeriesWriter needs explicit VR little endian, not {tsyntax.name}")
        self._tsyntax = tsyntax
        self._dynamic: frozenset[BaseTag] = frozenset(Tag(k) for k in dynamic)
        self._encodings: str | list[str] = template.get("SpecificCharacterSet", default_encoding)
        # File meta: complete it once the way dcmwrite does, then keep every
        # element but the group length and the instance UID pre-encoded.
        meta = FileMetaDataset()
        for elem in template.file_meta:
            meta.add(DataElement(elem.tag, elem.VR, elem.value))
        meta.MediaStorageSOPClassUID = template.SOPClassUID
        meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        write_file_meta_info(DicomBytesIO(), meta, enforce_standard=True)
        self._meta_static: list[tuple[BaseTag, bytes]] = [
            (tag, _encode_element(meta[tag], default_encoding))
            for tag in sorted(meta.keys())
            if tag not in (_META_GROUP_LENGTH, _META_INSTANCE_UID)
        ]
        self._static: list[tuple[BaseTag, bytes]] = [
            (tag, _encode_element(template[tag], self._encodings))
            for tag in sorted(template.keys())
            if tag not in self._dynamic and not (tag.element == 0 and tag.group > 6)
        ]

    def encode(self, ds: Dataset) -> bytes:
        """Return the Part 10 file bytes of ``ds`` (static elements from the template).

        Args:
            ds: The instance; only its ``dynamic`` elements and file meta are read.

        Raises:
            ValueError: If the transfer syntax differs from the template's.
        """
        if ds.file_meta.TransferSyntaxUID != self._tsyntax:
            raise ValueError("transfer syntax changed since the SeriesWriter was created")
        uid_elem = DataElement(_META_INSTANCE_UID, "UI", ds.SOPInstanceUID)
        meta_parts = sorted([*self._meta_static, (_META_INSTANCE_UID, _encode_element(uid_elem, default_encoding))])
        group_length = sum(len(chunk) for _, chunk in meta_parts)
        length_elem = DataElement(_META_GROUP_LENGTH, "UL", group_length)
        if "PixelData" in ds:
            ds["PixelData"].is_undefined_length = self._tsyntax.is_compressed
        dynamic = sorted((tag, _encode_element(ds[tag], self._encodings)) for tag in self._dynamic if tag in ds)
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        fp.write(b"\x00" * 128 + b"DICM")
        fp.write(_encode_element(length_elem, default_encoding))
        for _, chunk in meta_parts:
            fp.write(chunk)
        for _, chunk in heapq.merge(self._static, dynamic, key=lambda item: item[0]):
            fp.write(chunk)
        return fp.getvalue()

    def write(self, ds: Dataset, path: str | os.PathLike[str], log: FileLog | None = None) -> int:
        """Encode ``ds`` with :meth:`encode` and write it atomically; return the size."""
        return atomic_write_bytes(path, self.encode(ds), log)
