"""``medimg run`` over a folder of PNG/JPEG radiographs: one work item and output folder per image.

A 2-D pipeline's :meth:`~pipelines.base.Pipeline.plan_files` hands the pictures it found here.
Each image is its own case: its path relative to the input folder stands where a DICOM image has
UIDs (``StudyInstanceUID``, ``SeriesInstanceUID``, ``SOPInstanceUID`` of ``results.csv``), and its
output folder is ``studies/<safe relative path>`` (:func:`medimg.safepath.safe_name`). What the
folder's NIH/CheXpert table says (patient, view) fills ``PatientID`` and ``ViewPosition``; a
lateral view is ``skipped``; an image whose header cannot be read is an ``error`` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medimg.image_datasets import picture_metadata
from medimg.pictures import PictureError, picture_shape
from medimg.safepath import inside
from pipelines.base import Pipeline

__all__ = ["plan_pictures"]

#: The ``selection`` column of an image read from a picture file.
SELECTION = "image file"


def _item(source: Path, path: Path, known: dict[str, str]) -> dict[str, Any]:
    rel = path.relative_to(source).as_posix()
    rows, columns = picture_shape(path)
    return {
        "image": str(path),
        "image_file": rel,
        "source_file": str(path),
        "selection": SELECTION,
        "PatientID": known.get("PatientID", ""),
        "StudyInstanceUID": rel,
        "SeriesInstanceUID": rel,
        "SOPInstanceUID": rel,
        "ViewPosition": known.get("ViewPosition", ""),
        "Rows": rows,
        "Columns": columns,
        "Modality": "",
    }


def plan_pictures(
    pipeline: Pipeline, source: Path, pictures: Sequence[Path], out: Path, overwrite: bool, summary: Any
) -> list[tuple]:
    """Jobs ``(relative path, folder, [item])`` for the pictures not yet done; problems go to
    ``summary.errors`` (see the module docstring)."""
    from pipelines.runner import resume_study

    metadata, problems = picture_metadata(source)
    for problem in problems:
        summary.errors.append({"kind": "error", "path": str(source), "reason": f"label table ignored: {problem}"})
    jobs = []
    for path in pictures:
        rel = path.relative_to(source).as_posix()
        known = metadata.get(rel) or metadata.get(path.name) or {}
        if known.get("lateral"):
            summary.errors.append(
                {
                    "kind": "skipped",
                    "PatientID": known.get("PatientID", ""),
                    "StudyInstanceUID": rel,
                    "path": str(path),
                    "reason": "lateral view (the table's Frontal/Lateral column)",
                }
            )
            continue
        try:
            item = _item(source, path, known)
            folder = inside(out, out / pipeline.output_folder(rel, item))
        except (PictureError, ValueError) as exc:
            summary.errors.append(
                {"kind": "error", "StudyInstanceUID": rel, "path": str(path), "reason": f"cannot load: {exc}"}
            )
            continue
        summary.folders[rel] = folder.relative_to(out).as_posix()
        if not resume_study(folder, overwrite, summary):
            jobs.append((rel, folder, [item]))
    return jobs
