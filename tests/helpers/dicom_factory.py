"""Tiny hand-built DICOM files for tests: series with chosen geometry, order and defects."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def write_image(
    path: Path,
    pixels: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    instance_number: int = 1,
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
    spacing: Sequence[float] = (1.0, 1.0),
    modality: str = "MR",
    description: str = "T1",
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    patient_id: str = "P1",
    extra: dict | None = None,
) -> Path:
    """Write one uint16 single-frame image; returns its path."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = f"{patient_id}^Test"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Modality = modality
    ds.SeriesDescription = description
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    *,
    n: int = 6,
    shape: tuple[int, int] = (8, 10),
    spacing: float = 2.0,
    origin: Sequence[float] = (-10.0, 20.0, 30.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    instance_numbers: Sequence[int] | None = None,
    skip: Sequence[int] = (),
    duplicate: int | None = None,
    description: str = "T1",
    modality: str = "MR",
    study_uid: str | None = None,
    **kwargs,
) -> tuple[list[Path], np.ndarray]:
    """Write a series whose slice k holds value 100*k + pixel ramp, positions along the normal.

    Returns the paths and the expected volume (rows, cols, n) in geometric order (before skip).
    """
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, n + 1))
    ramp = np.arange(shape[0] * shape[1], dtype=np.uint16).reshape(shape)
    volume = np.stack([ramp + 100 * k for k in range(n)], axis=-1)
    paths = []
    slices = [k for k in range(n) if k not in skip]
    if duplicate is not None:
        slices.append(duplicate)
    for j, k in enumerate(slices):
        pos = np.asarray(origin, float) + k * spacing * normal
        paths.append(
            write_image(
                folder / f"IM{j:03d}",
                volume[..., k],
                study_uid=study_uid,
                series_uid=series_uid,
                instance_number=numbers[k] if k < len(numbers) else k + 1,
                position=pos,
                orientation=orientation,
                description=description,
                modality=modality,
                **kwargs,
            )
        )
    return paths, volume
