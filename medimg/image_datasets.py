"""Label tables of the PNG/JPEG chest X-ray datasets: NIH ChestX-ray14 and CheXpert-style CSVs.

Layouts (:func:`load_image_dataset` tells them apart by their tables):

- **NIH ChestX-ray14**: ``Data_Entry_2017.csv`` (``Image Index``, ``Finding Labels`` with
  ``|``-separated findings, ``Patient ID``, ``View Position``, ...) beside the images, in one flat
  folder or in ``images_*/images/``. A finding is positive when it is among the labels (``No
  Finding`` and every other finding: negative). ``BBox_List_2017.csv`` (``Image Index``, ``Finding
  Label``, ``Bbox [x``, ``y``, ``w``, ``h]``) gives boxes; they are on the 1024 x 1024 pixel grid of
  the released images (:data:`NIH_BOX_GRID`) and are scaled to the size of the file at hand (e.g.
  a 512 x 512 copy). Optional ``test_list.txt`` marks its images as the held-out test split.
- **CheXpert-style**: any top-level CSV with a ``Path`` column and the finding's column (``1``
  positive, ``0`` negative, ``-1`` uncertain, blank: not mentioned). ``Path`` is relative to the
  folder or to its parent (``CheXpert-v1.0-small/train/...``); lateral views (``Frontal/Lateral``
  = ``Lateral``) are left out. The patient is the ``patientNNNNN`` component of the path.

:class:`LabelPolicy` says what uncertain and blank labels become (default: uncertain images are
left out, "U-Ignore"; blank is negative, as the CheXpert authors read it).

A table with missing columns raises :class:`ImageDatasetError` naming the file and the columns;
an image listed but absent, or unreadable, is one line of :attr:`ImageDataset.problems` and the
others are kept.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medimg.pictures import PictureError, find_pictures, picture_shape

__all__ = [
    "BLANK_POLICIES",
    "NIH_BOXES",
    "NIH_BOX_GRID",
    "NIH_TABLE",
    "UNCERTAIN_POLICIES",
    "ImageDataset",
    "ImageDatasetError",
    "LabelPolicy",
    "chexpert_tables",
    "describe_problems",
    "load_image_dataset",
    "picture_catalogue",
    "picture_metadata",
    "read_nih_boxes",
    "read_nih_table",
]

NIH_TABLE = "Data_Entry_2017.csv"
NIH_BOXES = "BBox_List_2017.csv"
NIH_TEST_LIST = "test_list.txt"
#: Side of the released NIH images, the grid the BBox_List boxes are given on.
NIH_BOX_GRID = 1024
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
NIH_BOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
CHEXPERT_COLUMNS = ("Path",)
#: What a ``-1`` (uncertain) label becomes: left out, negative or positive.
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
#: What a blank (not mentioned) label becomes: negative, or left out.
BLANK_POLICIES = ("zeros", "ignore")
_PATIENT = re.compile(r"^patient\d+$")


class ImageDatasetError(ValueError):
    """A label table that cannot be used (the message names the file and the problem)."""


@dataclass(frozen=True)
class LabelPolicy:
    """Which finding is the label, and what CheXpert's uncertain (``-1``) and blank labels become.

    Attributes:
        finding: the finding column / label (``Pneumonia``).
        uncertain: one of :data:`UNCERTAIN_POLICIES` (``ignore``: U-Ignore, the image is left out).
        blank: one of :data:`BLANK_POLICIES` (``zeros``: negative).
    """

    finding: str = "Pneumonia"
    uncertain: str = "ignore"
    blank: str = "zeros"

    def __post_init__(self) -> None:
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain label policy {self.uncertain!r}: choose from {list(UNCERTAIN_POLICIES)}")
        if self.blank not in BLANK_POLICIES:
            raise ValueError(f"blank label policy {self.blank!r}: choose from {list(BLANK_POLICIES)}")


@dataclass
class ImageDataset:
    """What :func:`load_image_dataset` found.

    Attributes:
        layout: ``nih`` or ``chexpert``.
        items: one dict per usable image: ``image`` (path), ``image_file`` (path relative to the
            folder), ``label`` (0/1), ``patient_id``, ``boxes`` (``[x, y, w, h]`` in the file's
            pixels), ``ViewPosition``, ``Rows``, ``Columns`` and, for NIH's test list, ``split``.
        problems: one readable line per image or row left out for a problem.
        left_out: count of images left out by the label policy or as lateral views (not problems).
    """

    layout: str
    items: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    left_out: int = 0


def _read_table(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Rows of a CSV (header stripped of spaces); :class:`ImageDatasetError` when it cannot be read
    or lacks a required column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise ImageDatasetError(f"{path}: missing column(s) {missing} (found {header})")
            return [dict(zip(header, (v.strip() for v in row), strict=False)) for row in reader if any(row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImageDatasetError(f"{path}: cannot read the table ({exc})") from exc


def read_nih_table(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``Data_Entry_2017.csv`` rows by ``Image Index`` (later duplicates win)."""
    return {row["Image Index"]: row for row in _read_table(Path(path), NIH_COLUMNS) if row.get("Image Index")}


def read_nih_boxes(path: str | os.PathLike[str], finding: str = "Pneumonia") -> dict[str, list[list[float]]]:
    """``BBox_List_2017.csv``: ``[x, y, w, h]`` boxes (on the :data:`NIH_BOX_GRID` grid) of
    ``finding`` by ``Image Index``.

    Raises:
        ImageDatasetError: a missing column or a box value that is not a number (line named).
    """
    path = Path(path)
    boxes: dict[str, list[list[float]]] = {}
    for line, row in enumerate(_read_table(path, NIH_BOX_COLUMNS), start=2):
        if row["Finding Label"] != finding:
            continue
        try:
            box = [float(row[c]) for c in ("Bbox [x", "y", "w", "h]")]
        except ValueError as exc:
            raise ImageDatasetError(f"{path}, line {line}: box value is not a number ({exc})") from exc
        boxes.setdefault(row["Image Index"], []).append(box)
    return boxes


def picture_catalogue(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Every PNG/JPEG under ``folder`` by file name (NIH's ``Image Index``); the first in sorted
    order wins when two sub-folders hold the same name."""
    found: dict[str, Path] = {}
    for path in find_pictures(folder):
        found.setdefault(path.name, path)
    return found


def chexpert_tables(folder: str | os.PathLike[str]) -> list[Path]:
    """The top-level CSVs of ``folder`` whose header has a ``Path`` column, sorted."""
    tables = []
    for path in sorted(Path(folder).glob("*.csv")):
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                header = [h.strip() for h in next(csv.reader(fh), [])]
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        if "Path" in header:
            tables.append(path)
    return tables


def _scaled_boxes(boxes: list[list[float]], rows: int, columns: int) -> list[list[float]]:
    sx, sy = columns / NIH_BOX_GRID, rows / NIH_BOX_GRID
    return [[x * sx, y * sy, w * sx, h * sy] for x, y, w, h in boxes]


def _with_shape(item: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    """``item`` with ``Rows`` and ``Columns`` from its header, or None (a problem line) when unreadable."""
    try:
        item["Rows"], item["Columns"] = picture_shape(item["image"])
    except PictureError as exc:
        problems.append(str(exc))
        return None
    return item


def _load_nih(folder: Path, finding: str) -> ImageDataset:
    table = read_nih_table(folder / NIH_TABLE)
    boxes = read_nih_boxes(folder / NIH_BOXES, finding) if (folder / NIH_BOXES).is_file() else {}
    test = set()
    if (folder / NIH_TEST_LIST).is_file():
        test = set((folder / NIH_TEST_LIST).read_text(encoding="utf-8", errors="replace").split())
    pictures = picture_catalogue(folder)
    out = ImageDataset("nih")
    for name, row in sorted(table.items()):
        path = pictures.get(name)
        if path is None:
            out.problems.append(f"{folder / NIH_TABLE}: image {name} is listed but not found under {folder}")
            continue
        findings = {f.strip() for f in row["Finding Labels"].split("|")}
        item: dict[str, Any] = {
            "image": str(path),
            "image_file": path.relative_to(folder).as_posix(),
            "label": int(finding in findings),
            "patient_id": row["Patient ID"],
            "ViewPosition": row["View Position"],
            **({"split": "test"} if name in test else {}),
        }
        if _with_shape(item, out.problems) is None:
            continue
        item["boxes"] = _scaled_boxes(boxes.get(name, []), item["Rows"], item["Columns"])
        out.items.append(item)
    return out


def _chexpert_path(folder: Path, text: str) -> Path | None:
    """The file a CheXpert ``Path`` names: relative to ``folder``, or with leading components
    dropped (``CheXpert-v1.0-small/train/...`` read inside ``CheXpert-v1.0-small``); never outside."""
    parts = [p for p in Path(text).parts if p not in ("", ".")]
    if not parts or ".." in parts or Path(text).is_absolute():
        return None
    for start in range(len(parts)):
        candidate = folder.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    return None


def _chexpert_label(value: str, policy: LabelPolicy) -> int | None:
    """The 0/1 label of a CheXpert cell under ``policy``, or None when the image is left out."""
    if value == "":
        return 0 if policy.blank == "zeros" else None
    number = float(value)
    if number == -1:
        return {"ignore": None, "zeros": 0, "ones": 1}[policy.uncertain]
    if number in (0, 1):
        return int(number)
    raise ValueError(f"label {value!r} is not 1, 0, -1 or blank")


def _chexpert_patient(path_text: str) -> str:
    parts = Path(path_text).parts
    found = [p for p in parts if _PATIENT.match(p)]
    return found[-1] if found else (parts[-3] if len(parts) >= 3 else path_text)


def _load_chexpert(folder: Path, tables: list[Path], policy: LabelPolicy) -> ImageDataset:
    out = ImageDataset("chexpert")
    for table in tables:
        rows = _read_table(table, (*CHEXPERT_COLUMNS, policy.finding))
        for line, row in enumerate(rows, start=2):
            if row.get("Frontal/Lateral", "Frontal").lower() == "lateral":
                out.left_out += 1
                continue
            try:
                label = _chexpert_label(row[policy.finding], policy)
            except ValueError as exc:
                out.problems.append(f"{table}, line {line}: {policy.finding} {exc}")
                continue
            if label is None:
                out.left_out += 1
                continue
            path = _chexpert_path(folder, row["Path"])
            if path is None:
                out.problems.append(f"{table}, line {line}: image {row['Path']} is listed but not found under {folder}")
                continue
            item: dict[str, Any] = {
                "image": str(path),
                "image_file": path.relative_to(folder).as_posix(),
                "label": label,
                "patient_id": _chexpert_patient(row["Path"]),
                "ViewPosition": row.get("AP/PA", ""),
                "boxes": [],
            }
            if _with_shape(item, out.problems) is not None:
                out.items.append(item)
    return out


def load_image_dataset(folder: str | os.PathLike[str], policy: LabelPolicy | None = None) -> ImageDataset | None:
    """The labelled PNG/JPEG images of an NIH ChestX-ray14 or CheXpert-style folder (see the module
    docstring), or None when ``folder`` has neither table.

    Raises:
        ImageDatasetError: a table lacks a required column or cannot be read.
    """
    folder = Path(folder)
    policy = policy or LabelPolicy()
    if (folder / NIH_TABLE).is_file():
        return _load_nih(folder, policy.finding)
    tables = chexpert_tables(folder)
    if tables:
        return _load_chexpert(folder, tables, policy)
    return None


def describe_problems(problems: list[str], limit: int = 10) -> str:
    """The first ``limit`` problems, one per line, and how many more there are."""
    shown = "\n".join(f"  {p}" for p in problems[:limit])
    more = len(problems) - limit
    return shown + (f"\n  ... and {more} more" if more > 0 else "")


def picture_metadata(folder: str | os.PathLike[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """What a folder's label table says about each picture, for ``medimg run``: ``PatientID``,
    ``ViewPosition`` and ``lateral`` (``"1"`` for a lateral view) by path relative to ``folder``
    (NIH: by file name, the table's ``Image Index``). Labels are not read.

    Returns:
        ``(metadata, problems)``: a table that cannot be used is a problem line and gives no
        metadata (the pictures are still run).
    """
    folder = Path(folder)
    found: dict[str, dict[str, str]] = {}
    try:
        if (folder / NIH_TABLE).is_file():
            for name, row in read_nih_table(folder / NIH_TABLE).items():
                found[name] = {"PatientID": row["Patient ID"], "ViewPosition": row["View Position"], "lateral": ""}
            return found, []
        for table in chexpert_tables(folder):
            for row in _read_table(table, CHEXPERT_COLUMNS):
                path = _chexpert_path(folder, row["Path"])
                if path is not None:
                    found[path.relative_to(folder).as_posix()] = {
                        "PatientID": _chexpert_patient(row["Path"]),
                        "ViewPosition": row.get("AP/PA", ""),
                        "lateral": "1" if row.get("Frontal/Lateral", "").lower() == "lateral" else "",
                    }
    except ImageDatasetError as exc:
        return {}, [str(exc)]
    return found, []
