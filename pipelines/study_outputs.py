"""Writing one finished study of a run: per-image files, its DICOM result objects, then ``study.json``.

A :class:`StudyTask` carries everything the writing needs (it is sent to a worker process by
:class:`pipelines.run_stages.StagePool`); :func:`write_study` never raises: what fails becomes an
error line of the returned :class:`WrittenStudy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medimg.writers import write_json
from pipelines.base import ImageResult, Pipeline
from pipelines.run_state import describe_error

__all__ = ["StudyTask", "WrittenStudy", "error_line", "write_study"]


def error_line(item: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """An ``error`` line of ``errors.csv`` for a work item (or a study's ids)."""
    ids = {k: item.get(k, "") for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")}
    return {"kind": "error", **ids, "path": item.get("source_file", item.get("path", "")), "reason": reason}


@dataclass
class StudyTask:
    """A study whose images are all done: its output folder, its ``(item, result)`` pairs (None: the
    image failed) and the error lines it has so far."""

    folder: Path
    done: list[tuple[dict[str, Any], ImageResult | None]]
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class WrittenStudy:
    """What writing a study gave: its ``results.csv`` rows, all its error lines, and the entries of
    the DICOM objects written (for ``run.json``)."""

    rows: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    objects: list[dict[str, Any]]


def write_study(pipeline: Pipeline, dicom: Any, task: StudyTask) -> WrittenStudy:
    """Per-image files, the DICOM objects (``dicom``: a :class:`pipelines.dicom_outputs.DicomResultWriter`
    or None), then ``study.json`` (the done marker; not written when an image of the study failed, so
    that a rerun tries the study again and reports its errors again). Never raises."""
    errors = list(task.errors)
    try:
        rows, objects = _write(pipeline, dicom, task.folder, task.done, errors)
    except Exception as exc:  # noqa: BLE001 - one bad study never stops the run
        errors.append(error_line(task.done[0][0], f"cannot write the study's outputs: {describe_error(exc)}"))
        rows, objects = [], []
    return WrittenStudy(rows=rows, errors=errors, objects=objects)


def _write(
    pipeline: Pipeline,
    dicom: Any,
    folder: Path,
    done: list[tuple[dict[str, Any], ImageResult | None]],
    errors: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for item, result in done:
        if result is None:
            continue
        row = {key: item.get(key, "") for key in pipeline.id_columns}
        row.update(result.row)
        result.row = row
        try:
            pipeline.write_image_outputs(folder, result)
        except Exception as exc:  # noqa: BLE001 - one bad image never stops the run
            errors.append(error_line(item, f"cannot write outputs: {describe_error(exc)}"))
            continue
        rows.append(result.row)
    objects = []
    if dicom is not None and not errors:  # the study's DICOM objects (pipelines.dicom_outputs)
        try:
            objects = dicom.write_study(folder, done)
        except Exception as exc:  # noqa: BLE001 - one bad study never stops the run
            errors.append(error_line(done[0][0], f"cannot write the DICOM results: {describe_error(exc)}"))
    if not errors:  # a study with failures gets no done marker: the next run retries it
        write_json(folder / "study.json", {"rows": rows, **({"dicom_results": objects} if objects else {})})
    return rows, objects
