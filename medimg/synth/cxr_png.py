"""Synthetic chest radiographs as PNG/JPEG files in the NIH ChestX-ray14 layout.

Layout written under the dataset root (``OUT/cxr-png``)::

    images_001/images/<patient>_<follow-up>.png|.jpg
    Data_Entry_2017.csv     Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,
                            Patient Gender,View Position,OriginalImage[Width,Height],
                            OriginalImagePixelSpacing[x,y],
    BBox_List_2017.csv      Image Index,Finding Label,Bbox [x,y,w,h],,,

As in the NIH release, the bracketed headers are split by their commas into columns
(``OriginalImage[Width``, ``Height]``, ``Bbox [x``, ``y``, ``w``, ``h]``), both tables end their
header with empty columns, ``Finding Labels`` joins findings with ``|`` (``No Finding`` for a
normal image) and the boxes are on the 1024 x 1024 grid of the released images whatever the size
of the written file (the default 256-pixel images therefore have boxes four times their pixels).

The images are :func:`medimg.synth.cxr.render_cxr` phantoms (the RSNA set's classes: 40 %
``Pneumonia`` with boxes, 30 % ``Cardiomegaly`` or ``Effusion``, 30 % ``No Finding``), two images
(follow-ups 0 and 1) per patient. To cover what readers meet, the files cycle through four
encodings (:data:`ENCODINGS`): 8-bit grey PNG (as NIH), 16-bit grey PNG (full 0-65535 range),
RGB PNG and 8-bit grey JPEG (quality 90, ``.jpg``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from medimg.synth.common import DatasetSummary, FileLog, atomic_write_bytes, item_rng, stratified_choice, write_csv
from medimg.synth.cxr import DEFAULT_SIZE, FULL_SIZE, LUNG_OPACITY, NORMAL, NOT_NORMAL, render_cxr

__all__ = ["BOX_HEADER", "DEFAULT_COUNT", "ENCODINGS", "ENTRY_HEADER", "generate_cxr_png"]

DEFAULT_COUNT = 24
#: File encodings, cycled by image index.
ENCODINGS = ("png8", "png16", "rgb", "jpeg")
ENTRY_HEADER = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    "",
)
BOX_HEADER = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", "")
_DATASET = "cxr-png"
_BOX_GRID = 1024
_CLASS_PATTERN = (LUNG_OPACITY,) * 4 + (NOT_NORMAL,) * 3 + (NORMAL,) * 3


def _encode(image: np.ndarray, encoding: str) -> bytes:
    """``image`` (uint8 grey) as the bytes of a PNG/JPEG file in ``encoding``."""
    from PIL import Image

    buffer = io.BytesIO()
    if encoding == "png16":
        Image.fromarray(image.astype(np.uint16) * 257).save(buffer, format="PNG")
    elif encoding == "rgb":
        Image.fromarray(np.repeat(image[..., None], 3, axis=2), mode="RGB").save(buffer, format="PNG")
    elif encoding == "jpeg":
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    else:
        Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _findings(label_class: str, rng: np.random.Generator) -> str:
    if label_class == LUNG_OPACITY:
        return "Pneumonia" if rng.random() < 0.6 else "Infiltration|Pneumonia"
    if label_class == NORMAL:
        return "No Finding"
    return "Cardiomegaly" if rng.random() < 0.5 else "Effusion"


def generate_cxr_png(
    root: str | os.PathLike[str], *, seed: int = 0, count: int = DEFAULT_COUNT, full_size: bool = False
) -> DatasetSummary:
    """Write an NIH-ChestX-ray14-style PNG/JPEG chest X-ray set under ``root``.

    Args:
        root: Dataset root (e.g. ``OUT/cxr-png``); created if missing.
        seed: Global seed; the same seed gives byte-identical files.
        count: Number of images (two per patient).
        full_size: 1024 x 1024 images instead of 256 x 256.

    Returns:
        Summary with ``n_items`` images and ``details`` holding the positives, boxes and files
        per encoding.

    Raises:
        ValueError: If ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(root)
    log = FileLog(root)
    size = FULL_SIZE if full_size else DEFAULT_SIZE
    images_dir = root / "images_001" / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[object, ...]] = []
    box_rows: list[tuple[object, ...]] = []
    for index in range(count):
        rng = item_rng(seed, _DATASET, index)
        label_class = stratified_choice(seed, _DATASET, index, _CLASS_PATTERN)
        view = "AP" if rng.random() < 0.45 else "PA"
        image, boxes = render_cxr(rng, size, view_position=view, label_class=label_class)
        encoding = ENCODINGS[index % len(ENCODINGS)]
        patient, follow_up = index // 2 + 1, index % 2
        name = f"{patient:08d}_{follow_up:03d}.{'jpg' if encoding == 'jpeg' else 'png'}"
        atomic_write_bytes(images_dir / name, _encode(image, encoding), log)
        findings = _findings(label_class, rng)
        width, height = int(rng.integers(2400, 3000)), int(rng.integers(2400, 3000))
        entries.append(
            (
                name,
                findings,
                follow_up,
                patient,
                int(rng.integers(20, 90)),
                "M" if rng.random() < 0.55 else "F",
                view,
                width,
                height,
                0.143,
                0.143,
                None,
            )
        )
        scale = _BOX_GRID / size
        for b in boxes:
            box = (b.x * scale, b.y * scale, b.width * scale, b.height * scale)
            box_rows.append((name, "Pneumonia", *(f"{v:.6f}" for v in box), None, None, None))
    write_csv(root / "Data_Entry_2017.csv", ENTRY_HEADER, entries, log)
    write_csv(root / "BBox_List_2017.csv", BOX_HEADER, box_rows, log)
    return DatasetSummary.from_log(
        _DATASET,
        log,
        n_items=count,
        item_kind="images",
        details={
            "positives": sum("Pneumonia" in e[1] for e in entries),  # type: ignore[operator]
            "boxes": len(box_rows),
            **{e: len(range(i, count, len(ENCODINGS))) for i, e in enumerate(ENCODINGS)},
            "image_size": size,
        },
    )
