"""Synthetic chest radiographs laid out like the RSNA Pneumonia Detection Challenge.

Layout written under the dataset root (``OUT/cxr``)::

    stage_2_train_images/<patientId>.dcm
    stage_2_train_labels.csv            patientId,x,y,width,height,Target
    stage_2_detailed_class_info.csv     patientId,class

As in the Kaggle release, ``stage_2_train_labels.csv`` has one row per box
(``x, y`` is the top-left corner in pixels of the stored image) and one row with
empty box fields and ``Target = 0`` for a negative image, and
``stage_2_detailed_class_info.csv`` has one row per label row.

Classes are assigned in shuffled blocks of ten images: 4 ``Lung Opacity``
(positives, 1-2 boxes), 3 ``No Lung Opacity / Not Normal`` (cardiomegaly or a
small pleural effusion, no box) and 3 ``Normal``.

Each image is a Secondary Capture (like the real files) with Modality CR or DX,
ViewPosition PA or AP, MONOCHROME2, 8 bits, no ImagePositionPatient /
ImageOrientationPatient, and its own study and series. Even-indexed images are
JPEG Baseline (Process 1) encapsulated (lossy, quality 90), odd-indexed ones
Explicit VR Little Endian.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom import config
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage
from scipy import ndimage

from medimg.synth.common import (
    DatasetSummary,
    FileLog,
    item_rng,
    smooth_field,
    smoothstep,
    stratified_choice,
    uuid_from,
    write_csv,
)
from medimg.synth.dicomio import (
    encode_jpeg_baseline,
    format_ds,
    make_uid,
    new_dataset,
    set_pixels,
    write_dataset,
)

__all__ = [
    "CLASS_HEADER",
    "CLASS_NAMES",
    "DEFAULT_COUNT",
    "DEFAULT_SIZE",
    "FULL_SIZE",
    "LABELS_HEADER",
    "Box",
    "CxrRecord",
    "generate_cxr",
    "render_cxr",
]

#: Default number of images.
DEFAULT_COUNT = 24
#: Image side in pixels by default and with ``full_size``.
DEFAULT_SIZE = 256
FULL_SIZE = 1024
#: RSNA pixel spacing (mm) at 1024 pixels; scaled by ``1024 / size`` for smaller images.
PIXEL_SPACING_1024_MM = 0.143

LABELS_HEADER = ("patientId", "x", "y", "width", "height", "Target")
CLASS_HEADER = ("patientId", "class")
LUNG_OPACITY = "Lung Opacity"
NOT_NORMAL = "No Lung Opacity / Not Normal"
NORMAL = "Normal"
CLASS_NAMES = (LUNG_OPACITY, NOT_NORMAL, NORMAL)
#: One block of ten images: 40 % positives.
_CLASS_PATTERN = (LUNG_OPACITY,) * 4 + (NOT_NORMAL,) * 3 + (NORMAL,) * 3
_DATASET = "cxr"
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Box:
    """An opacity bounding box in pixels of the stored image.

    Attributes:
        x: Column of the top-left corner.
        y: Row of the top-left corner.
        width: Width in pixels.
        height: Height in pixels.
    """

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class CxrRecord:
    """One generated radiograph and its labels.

    Attributes:
        patient_id: UUID-like patientId (file stem, PatientID and PatientName).
        label_class: One of :data:`CLASS_NAMES`.
        boxes: Opacity boxes (empty for negatives).
        view_position: ``"PA"`` or ``"AP"``.
        modality: ``"CR"`` or ``"DX"``.
        transfer_syntax_uid: Transfer syntax of the file.
        path: Path of the DICOM file.
    """

    patient_id: str
    label_class: str
    boxes: tuple[Box, ...]
    view_position: str
    modality: str
    transfer_syntax_uid: str
    path: Path

    @property
    def target(self) -> int:
        """1 for a positive (Lung Opacity) image, else 0."""
        return int(self.label_class == LUNG_OPACITY)


def render_cxr(
    rng: np.random.Generator,
    size: int,
    *,
    view_position: str = "PA",
    label_class: str = NORMAL,
) -> tuple[np.ndarray, tuple[Box, ...]]:
    """Render a frontal chest radiograph.

    The image is built in normalized coordinates ``u`` (columns) and ``v``
    (rows) in [0, 1], so anatomy scales with ``size``. Patient right is on image
    left. Components (in an attenuation-like scale where 1 is bright): air
    around a soft-tissue body with neck and shoulders, two pear-shaped lung
    fields with domed hemidiaphragms (the right one higher), mediastinum, spine
    and heart shadow (bulging to image right), ten posterior ribs per side,
    clavicles, vascular lung markings, then blur and quantum noise.

    ``Lung Opacity`` images get one or two boxes inside the lung fields (two
    boxes: one per lung) holding smooth, patchy Gaussian opacities confined to
    the lung; ``No Lung Opacity / Not Normal`` images get an enlarged heart or
    a blunted costophrenic angle; AP views have a slightly larger heart. The
    anatomy is drawn before the opacities, so one generator state renders the
    same chest as ``Normal`` and as ``Lung Opacity`` (only the noise differs).

    Args:
        rng: Source of randomness for this image.
        size: Side of the square image in pixels.
        view_position: ``"PA"`` or ``"AP"``.
        label_class: One of :data:`CLASS_NAMES`.

    Returns:
        ``(image, boxes)``: a ``(size, size)`` ``uint8`` MONOCHROME2 image and
        the opacity boxes (empty unless ``label_class`` is ``Lung Opacity``).
    """
    scale = size / DEFAULT_SIZE
    u = ((np.arange(size, dtype=np.float32) + 0.5) / size)[None, :]
    v = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None]
    mid = 0.5 + rng.uniform(-0.015, 0.015)
    du = u - mid

    # Body outline: neck widening into the shoulders.
    body_half = rng.uniform(0.40, 0.46)
    neck_half = rng.uniform(0.09, 0.12)
    half_w = neck_half + (body_half - neck_half) / (1.0 + np.exp(-(v - 0.13) / 0.025))
    body = smoothstep((half_w - np.abs(du)) / 0.015 + 0.5)

    # Heart and mediastinum.
    heart_scale = 1.12 if view_position == "AP" else 1.0
    abnormality = None
    if label_class == NOT_NORMAL:
        abnormality = "cardiomegaly" if rng.random() < 0.5 else "effusion"
        if abnormality == "cardiomegaly":
            heart_scale *= 1.28
    hx = mid + rng.uniform(0.035, 0.06)
    hy = rng.uniform(0.62, 0.66)
    hax = rng.uniform(0.16, 0.19) * heart_scale
    hay = rng.uniform(0.12, 0.14) * min(heart_scale, 1.15)
    heart_r = np.sqrt(((u - hx) / hax) ** 2 + ((v - hy) / hay) ** 2)
    heart = smoothstep((1.0 - heart_r) / 0.2)
    medi_half = 0.05 + 0.05 * np.clip((v - 0.15) / 0.4, 0.0, 1.0)
    mediastinum = smoothstep((medi_half - np.abs(du + 0.008)) / 0.02) * smoothstep((hy + 0.05 - v) / 0.05)
    dense = np.maximum(heart, mediastinum)

    # Lung fields: side -1 is the patient's right lung (image left).
    lungs: list[np.ndarray] = []
    lung_core: list[np.ndarray] = []
    lung_bbox: list[tuple[int, int, int, int]] = []
    lung_bottoms: list[float] = []
    shape_noise = smooth_field(rng, (size, size), 10.0 * scale)
    for side in (-1.0, 1.0):
        cx = mid + side * rng.uniform(0.175, 0.205)
        ax = rng.uniform(0.13, 0.15)
        top = rng.uniform(0.11, 0.15)
        bottom = rng.uniform(0.72, 0.78) - (0.025 if side < 0 else 0.0)
        cy, ay = 0.5 * (top + bottom), 0.5 * (bottom - top)
        t = np.clip((v - top) / (bottom - top), 0.0, 1.0)
        ax_eff = ax * (0.5 + 0.6 * np.sqrt(t))
        r = np.sqrt(((u - cx) / ax_eff) ** 2 + ((v - cy) / ay) ** 2) + 0.04 * shape_noise
        lung = smoothstep((1.0 - r) / 0.08) * (1.0 - dense)
        lungs.append(lung)
        lung_core.append((r < 0.72) & (dense < 0.2))
        rows_in, cols_in = np.nonzero((r < 1.0) & (dense < 0.5))
        lung_bbox.append((cols_in.min(), rows_in.min(), cols_in.max() + 1, rows_in.max() + 1))
        lung_bottoms.append(bottom)
    lung = np.maximum(lungs[0], lungs[1]) * body

    if abnormality == "effusion":
        k = int(rng.integers(0, 2))
        side = -1.0 if k == 0 else 1.0
        level = lung_bottoms[k] - rng.uniform(0.06, 0.1)
        meniscus = level - 0.25 * np.clip(side * du - 0.12, 0.0, None)
        fluid = smoothstep((v - meniscus) / 0.02) * (side * du > 0)
        lung = lung * (1.0 - 0.85 * fluid)

    abdomen = smoothstep((v - 0.72) / 0.08)
    below = abdomen * (1.0 - lung)
    spine = smoothstep((0.032 - np.abs(du)) / 0.01)

    # Ribs: posterior arcs from the spine, running out and then down laterally.
    ribs = np.zeros((size, size), dtype=np.float32)
    rib_top = rng.uniform(0.11, 0.13)
    rib_step = rng.uniform(0.054, 0.062)
    thick = rng.uniform(0.010, 0.013)
    for side in (-1.0, 1.0):
        d = side * du
        lateral = smoothstep((d - 0.03) / 0.02) * smoothstep((0.43 - d) / 0.03)
        for k in range(10):
            v0 = rib_top + k * rib_step
            posterior = v0 - 0.55 * d + 1.7 * d * d
            anterior = v0 + 0.1 + 0.45 * (0.42 - d) - 0.35 * (0.42 - d) ** 2
            ribs += np.exp(-(((v - posterior) / thick) ** 2)) * lateral
            front = lateral * smoothstep((d - 0.1) / 0.04)
            ribs += 0.45 * np.exp(-(((v - anterior) / (1.3 * thick)) ** 2)) * front
    ribs *= 1.0 - 0.7 * abdomen
    clav_y = rng.uniform(0.14, 0.17) - (0.02 if view_position == "AP" else 0.0)
    clavicles = np.exp(-(((v - (clav_y - 0.12 * (np.abs(du) - 0.05))) / 0.012) ** 2))
    clavicles *= smoothstep((np.abs(du) - 0.04) / 0.02) * smoothstep((0.3 - np.abs(du)) / 0.03)

    markings = smooth_field(rng, (size, size), 1.6 * scale)
    hilum = np.exp(-((np.abs(du) - 0.09) ** 2 + (v - 0.45) ** 2) / (2 * 0.12**2))
    att = (
        0.06
        + body * (0.46 - 0.30 * lung + 0.18 * dense * (1.0 - 0.6 * abdomen) + 0.08 * below + 0.07 * spine * (1 - lung))
        + body * (0.075 * np.minimum(ribs, 1.3) + 0.12 * clavicles)
        + 0.04 * lung * smoothstep((np.abs(du) - 0.2) / 0.2)
        + 0.045 * lung * np.clip(markings, 0.0, None) * (0.4 + hilum)
    )

    boxes: list[Box] = []
    if label_class == LUNG_OPACITY:
        sides = [0, 1] if rng.random() < 0.45 else [int(rng.integers(0, 2))]
        patchy = smooth_field(rng, (size, size), 4.0 * scale)
        opacity = np.zeros((size, size), dtype=np.float32)
        for k in sides:
            rows, cols = np.nonzero(lung_core[k])
            pick = int(rng.integers(0, rows.size))
            cy_px, cx_px = rows[pick] + 0.5, cols[pick] + 0.5
            w = rng.uniform(0.11, 0.19) * size
            h = rng.uniform(0.14, 0.26) * size
            # Keep the box inside the lung's bounding box (it shrinks if the lung is small).
            bx0, by0, bx1, by1 = lung_bbox[k]
            bw = int(min(round(w), bx1 - bx0))
            bh = int(min(round(h), by1 - by0))
            x0 = int(np.clip(round(cx_px - bw / 2), bx0, bx1 - bw))
            y0 = int(np.clip(round(cy_px - bh / 2), by0, by1 - bh))
            boxes.append(Box(x0, y0, bw, bh))
            gx = (x0 + bw / 2) / size
            gy = (y0 + bh / 2) / size
            blob = np.exp(-0.5 * (((u - gx) / (bw / size / 4)) ** 2 + ((v - gy) / (bh / size / 4)) ** 2))
            opacity += rng.uniform(0.26, 0.34) * blob
        opacity *= 0.8 + 0.2 * np.tanh(patchy)
        att = att + opacity * np.clip(lung * 1.3, 0.0, 1.0)

    img = 255.0 * np.clip(att, 0.0, 1.0) ** 0.9
    img = ndimage.gaussian_filter(img.astype(np.float32), 0.6 * scale)
    img += rng.normal(0.0, 2.5, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), tuple(boxes)


def _make_record(seed: int, index: int, images_dir: Path) -> tuple[CxrRecord, np.random.Generator]:
    """Draw the per-image metadata (class, view, modality) deterministically."""
    rng = item_rng(seed, _DATASET, index)
    label_class = stratified_choice(seed, _DATASET, index, _CLASS_PATTERN)
    view = "AP" if rng.random() < (0.55 if label_class == LUNG_OPACITY else 0.4) else "PA"
    modality = "CR" if rng.random() < 0.6 else "DX"
    patient_id = uuid_from(seed, _DATASET, index)
    ts = JPEGBaseline8Bit if index % 2 == 0 else ExplicitVRLittleEndian
    record = CxrRecord(
        patient_id=patient_id,
        label_class=label_class,
        boxes=(),
        view_position=view,
        modality=modality,
        transfer_syntax_uid=ts,
        path=images_dir / f"{patient_id}.dcm",
    )
    return record, rng


def generate_cxr(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    count: int = DEFAULT_COUNT,
    full_size: bool = False,
) -> DatasetSummary:
    """Write an RSNA-Pneumonia-style chest X-ray set under ``root``.

    Args:
        root: Dataset root (e.g. ``OUT/cxr``); created if missing.
        seed: Global seed; the same seed gives byte-identical files.
        count: Number of images (one patient each).
        full_size: 1024 × 1024 images instead of 256 × 256.

    Returns:
        Summary with ``n_items`` images and ``details`` holding the number of
        positives, boxes and JPEG-compressed files.

    Raises:
        ValueError: If ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(root)
    log = FileLog(root)
    size = FULL_SIZE if full_size else DEFAULT_SIZE
    spacing = format_ds(PIXEL_SPACING_1024_MM * FULL_SIZE / size)
    images_dir = root / "stage_2_train_images"
    images_dir.mkdir(parents=True, exist_ok=True)

    records: list[CxrRecord] = []
    for index in range(count):
        record, rng = _make_record(seed, index, images_dir)
        image, boxes = render_cxr(rng, size, view_position=record.view_position, label_class=record.label_class)
        record = replace(record, boxes=boxes)
        sex = "M" if rng.random() < 0.56 else "F"
        age = int(np.clip(rng.normal(47, 16), 2, 92))

        ds = new_dataset(
            sop_class_uid=SecondaryCaptureImageStorage,
            sop_instance_uid=make_uid(seed, _DATASET, index, "sop"),
            study_instance_uid=make_uid(seed, _DATASET, index, "study"),
            series_instance_uid=make_uid(seed, _DATASET, index, "series"),
            modality=record.modality,
            patient_id=record.patient_id,
            study_date="19010101",
            study_time="000000.00",
        )
        ds.ConversionType = "WSD"
        ds.PatientSex = sex
        # RSNA writes the age as plain digits ("51"), which is not a valid AS
        # value; reproduce the quirk without pydicom's validation warning.
        with config.disable_value_validation():
            ds.PatientAge = str(age)
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = record.view_position
        ds.SeriesDescription = f"view: {record.view_position}"
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.PatientOrientation = ""
        ds.PixelSpacing = [spacing, spacing]
        if record.transfer_syntax_uid == JPEGBaseline8Bit:
            encode_jpeg_baseline(ds, image, quality=_JPEG_QUALITY)
        else:
            set_pixels(ds, image, photometric="MONOCHROME2", bits_stored=8)
        write_dataset(ds, record.path, log)
        records.append(record)

    label_rows: list[tuple[object, ...]] = []
    class_rows: list[tuple[str, str]] = []
    for rec in records:
        if rec.boxes:
            for b in rec.boxes:
                label_rows.append(
                    (
                        rec.patient_id,
                        f"{b.x:.1f}",
                        f"{b.y:.1f}",
                        f"{b.width:.1f}",
                        f"{b.height:.1f}",
                        1,
                    )
                )
                class_rows.append((rec.patient_id, rec.label_class))
        else:
            label_rows.append((rec.patient_id, None, None, None, None, 0))
            class_rows.append((rec.patient_id, rec.label_class))
    write_csv(root / "stage_2_train_labels.csv", LABELS_HEADER, label_rows, log)
    write_csv(root / "stage_2_detailed_class_info.csv", CLASS_HEADER, class_rows, log)

    return DatasetSummary.from_log(
        _DATASET,
        log,
        n_items=len(records),
        item_kind="images",
        details={
            "positives": sum(r.target for r in records),
            "boxes": sum(len(r.boxes) for r in records),
            "jpeg_baseline": sum(r.transfer_syntax_uid == JPEGBaseline8Bit for r in records),
            "image_size": size,
        },
    )
