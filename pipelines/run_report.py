"""``report.html`` of a pipeline run: counts, timings, the model's source, results table, thumbnails, what
was skipped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medimg.report import Report
from pipelines.base import Pipeline
from pipelines.model_info import add_model_source

__all__ = ["plain_run_report", "run_report", "summarize_errors"]

MAX_THUMBNAILS = 48


def _thumbnail(summary: Any, row: Mapping[str, Any]) -> np.ndarray | None:
    """The overlay PNG when the pipeline wrote one, else the decoded source image."""
    from PIL import Image

    overlay = row.get("overlay")
    if overlay:
        path = summary.out / summary.folders.get(row["StudyInstanceUID"], "") / overlay
        if path.is_file():
            return np.asarray(Image.open(path).convert("RGB"))
    try:
        from medimg.dicom import load_instance

        image = load_instance(row["source_file"], voi=True)[0].numpy()
    except Exception:  # noqa: BLE001 - a thumbnail is never worth failing the report
        return None
    return image.T if image.ndim == 2 else None


def summarize_errors(errors: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts of errors and skips by reason category (text before the first colon)."""
    out: dict[str, int] = {}
    for e in errors:
        key = f"{e['kind']}: {e['reason'].split(':')[0]}"
        out[key] = out.get(key, 0) + 1
    return out


def _input_checks(report: Report, rows: list[Mapping[str, Any]]) -> None:
    """The rows whose input differs from what the model expects (``input_check`` column), and the
    label conventions written (``label_convention`` and why), when the pipeline records them."""
    conventions = sorted(
        {
            (str(r["label_convention"]), str(r.get("label_convention_why", "")))
            for r in rows
            if r.get("label_convention")
        }
    )
    if conventions:
        report.heading("Label convention")
        report.table([{"convention": c, "why": w} for c, w in conventions], ["convention", "why"])
    warned = [r for r in rows if r.get("input_check")]
    if warned:
        report.heading("Input checks")
        report.text(
            f"{len(warned)} case(s) differ from BraTS data (skull-stripped, co-registered, 1 mm), which a "
            "BraTS-trained model expects; their results are less reliable (see input_check in results.csv).",
            warning=True,
        )
        columns = [c for c in ("case_id", "PatientID", "input_check") if c in warned[0]]
        report.table(warned[:200], columns)


def run_report(pipeline: Pipeline, summary: Any, meta: Mapping[str, Any], notes: Sequence[str] = ()) -> Report:
    """Self-contained summary of one run; ``notes``: what the run left out (:meth:`Pipeline.run_notes`)."""
    report = Report(f"medimg run {pipeline.name}", subtitle=pipeline.description)
    report.heading("Run")
    report.table(
        [{"item": k, "value": v} for k, v in summary.counts.items()]
        + [{"item": f"time {k} (s)", "value": round(v, 3)} for k, v in summary.timings.items()],
        ["item", "value"],
    )
    training = meta.get("training", {})
    report.text(
        f"Weights: {meta['architecture']} trained for '{pipeline.name}'"
        + (f" ({training.get('note')})" if training.get("note") else "")
        + f"; preprocessing {meta['preprocessing']}."
    )
    add_model_source(report, meta, notes)
    report.heading("Results")
    columns = ["PatientID", "selection", *pipeline.result_columns]
    report.table(summary.rows[:200], [c for c in columns if c != "overlay"])
    if len(summary.rows) > 200:
        report.text(f"First 200 of {len(summary.rows)} rows; all are in results.csv.")
    _input_checks(report, summary.rows)
    pictures = []
    for row in summary.rows[:MAX_THUMBNAILS] if pipeline.unit == "image" else ():
        thumb = _thumbnail(summary, row)
        if thumb is not None:
            label = row.get("predicted", "")
            pictures.append((thumb, f"{row['PatientID'][:16]} {row['selection']}: {label}"))
    if pictures:
        report.heading("Images")
        report.gallery(pictures)
    report.heading("Skipped and failed")
    if summary.errors:
        report.table([{"what": k, "count": v} for k, v in summarize_errors(summary.errors).items()], ["what", "count"])
        report.table(summary.errors[:200], ["kind", "path", "reason"])
    else:
        report.text("Nothing was skipped.")
    return report


def plain_run_report(pipeline: Pipeline, summary: Any) -> Report:
    """The report of a run whose full report could not be made: counts and what failed, no pictures."""
    report = Report(f"medimg run {pipeline.name}", subtitle=pipeline.description)
    report.heading("Run")
    report.table([{"item": k, "value": v} for k, v in summary.counts.items()], ["item", "value"])
    report.text(f"{len(summary.rows)} row(s) in results.csv.", warning=True)
    report.heading("Skipped and failed")
    report.table(summary.errors[:200], ["kind", "path", "reason"])
    return report
