"""Run any pipeline over a DICOM folder: scan -> select -> load -> transform -> infer -> write.

Outputs in OUT:

- ``run.json``: versions, weights and their sha256, settings, counts, timings;
- ``results.csv``: one row per image (PatientID, Study/Series/SOP Instance UIDs, source file,
  the selection that took it, then the pipeline's columns);
- ``errors.csv``: every file, series or study not processed and why; ``kind`` is ``error``
  (a broken or undecodable file: the command exits 1) or ``skipped`` (not for this pipeline:
  another modality, a lateral view, a CSV beside the images, an SR, ...);
- ``studies/<StudyInstanceUID>/``: per-study outputs and ``study.json`` (written last, so a
  study with ``study.json`` is done: a second run skips it unless ``overwrite``);
- the pipeline's run-level files (``submission.csv``, ``exams.csv``) and ``report.html``.

Inputs are only read.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medimg import __version__
from medimg.writers import write_csv, write_json
from pipelines.base import ImageResult, Pipeline

__all__ = ["ERROR_COLUMNS", "RunSummary", "default_weights", "resume_study", "run_pipeline"]

ERROR_COLUMNS = ("kind", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "path", "reason")
_HEADER_KEYS = ("PatientID", "Rows", "Columns", "ViewPosition", "ImageLaterality", "Laterality", "Modality")


@dataclass
class RunSummary:
    """What :func:`run_pipeline` did (also written to ``run.json``)."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: StudyInstanceUID -> its output folder, relative to ``out``.
    folders: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True when something was not processed because of an error (not merely skipped)."""
        return any(e["kind"] == "error" for e in self.errors)


def default_weights(pipeline: str) -> Path | None:
    """The demo weights shipped in the repository's ``sample_data/weights/``, if present.

    They are valid for the synthetic phantoms only (see ``sample_data/README.md``).
    """
    candidate = Path(__file__).resolve().parents[1] / "sample_data" / "weights" / f"{pipeline}.pt"
    return candidate if candidate.is_file() else None


def _versions() -> dict[str, str]:
    import monai
    import pydicom
    import torch

    return {
        "medimg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "pydicom": pydicom.__version__,
        "numpy": np.__version__,
    }


def _plan(pipeline: Pipeline, scan: Any, out: Path, overwrite: bool, summary: RunSummary) -> list[tuple]:
    """Select images per study; record skips; return jobs (study, folder, items) not yet done."""
    from medimg.dicom import load_rules, select

    rules = load_rules(pipeline.rules)
    jobs = []
    for entry in scan.quarantine:
        summary.errors.append(
            {"kind": "error" if entry.is_error else "skipped", "path": entry.path, "reason": entry.reason}
        )
    for study in scan.studies:
        chosen = select(study, rules)
        ids = {"PatientID": study.PatientID, "StudyInstanceUID": study.StudyInstanceUID}
        for decision in chosen.decisions:
            if decision.taken_by is None:
                series = next(s for s in study.series if s.SeriesInstanceUID == decision.SeriesInstanceUID)
                path = (
                    next(i.path for i in series.instances if i.sop_instance_uid == decision.SOPInstanceUID)
                    if decision.SOPInstanceUID
                    else os.path.commonpath(series.files)
                )
                summary.errors.append(
                    {
                        "kind": "skipped",
                        **ids,
                        "SeriesInstanceUID": decision.SeriesInstanceUID,
                        "path": path,
                        "reason": f"not selected by the {rules.name} rules: {decision.reason}",
                    }
                )
        if chosen.missing:
            first = study.series[0].files[0] if study.series else ""
            # A series that matched but was unusable (missing slices, mixed sizes) says why.
            unusable = [f"{d.label}: {d.reason}" for d in chosen.decisions if "but unusable" in d.reason]
            summary.errors.append(
                {
                    "kind": "error",
                    **ids,
                    "path": os.path.dirname(first),
                    "reason": f"missing required series: {', '.join(chosen.missing)} (by the {rules.name} rules)"
                    + "".join(f"; {u}" for u in unusable),
                }
            )
            continue
        items = pipeline.study_items(study, chosen) if pipeline.unit == "study" else []
        for name, picks in chosen.picked.items() if pipeline.unit == "image" else ():
            for series, inst in picks:
                assert inst is not None  # the 2-D pipelines select at image level
                item = {key: inst.get(key, "") for key in _HEADER_KEYS}
                item.update(
                    image=inst.path,
                    source_file=inst.path,
                    selection=name,
                    PatientID=study.PatientID,
                    StudyInstanceUID=study.StudyInstanceUID,
                    SeriesInstanceUID=series.SeriesInstanceUID,
                    SOPInstanceUID=inst.sop_instance_uid,
                )
                items.append(item)
        if not items:
            summary.errors.append(
                {"kind": "skipped", **ids, "path": "", "reason": f"no image matches the {rules.name} rules"}
            )
            continue
        folder = out / pipeline.output_folder(study.StudyInstanceUID, items[0])
        summary.folders[study.StudyInstanceUID] = str(folder.relative_to(out))
        if not resume_study(folder, overwrite, summary):
            jobs.append((study, folder, items))
    return jobs


def resume_study(folder: Path, overwrite: bool, summary: RunSummary) -> bool:
    """True when ``folder/study.json`` marks the study done (its rows are then added to
    ``summary``); False when it has to be processed (again)."""
    done = folder / "study.json"
    if overwrite or not done.is_file():
        return False
    summary.rows.extend(json.loads(done.read_text())["rows"])
    summary.counts["studies_resumed"] = summary.counts.get("studies_resumed", 0) + 1
    return True


def _load_batch(
    pipeline: Pipeline,
    batch: list[tuple[int, dict[str, Any]]],
    transform: Any,
    results: dict[int, list[tuple[dict, ImageResult | None]]],
    job_errors: dict[int, list[dict[str, Any]]],
) -> tuple[list[Any], list[tuple[int, dict[str, Any]]]]:
    """Load and transform a batch of ``(job, item)``; an image that fails is recorded as an error of
    its job (and a missing result), never raised. Returns the tensors and their ``(job, item)``."""
    tensors, ok = [], []
    for j, item in batch:
        try:
            tensors.append(pipeline.load(item, transform))
            ok.append((j, item))
        except Exception as exc:  # noqa: BLE001 - one bad image never stops the run
            ids = {k: item.get(k, "") for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")}
            reason = f"cannot load: {exc}"
            job_errors[j].append({"kind": "error", **ids, "path": item["source_file"], "reason": reason})
            results[j].append((item, None))
    return tensors, ok


def _write_run_json(
    pipeline: Pipeline,
    dicom_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    meta: Mapping[str, Any],
    settings: Mapping[str, Any],
    summary: RunSummary,
    outputs: list[Path],
) -> None:
    """``OUT/run.json``: input, weights (path, SHA-256, architecture, training), settings, versions,
    counts, timings and the files written."""
    from medimg.models import file_sha256

    out = summary.out
    write_json(
        out / "run.json",
        {
            "pipeline": pipeline.name,
            "input": str(dicom_dir),
            "weights": {
                "path": str(weights),
                "sha256": file_sha256(weights),
                "architecture": meta["architecture"],
                "training": meta.get("training", {}),
            },
            "settings": {
                "batch_size": settings["batch_size"],
                "device": settings["device"],
                "preprocessing": meta["preprocessing"],
                "overwrite": settings["overwrite"],
                "selection_rules": pipeline.rules,
            },
            "versions": _versions(),
            "counts": summary.counts,
            "timings_s": {k: round(v, 4) for k, v in summary.timings.items()},
            "outputs": [str(p.relative_to(out)) for p in outputs] + ["results.csv", "errors.csv"],
        },
    )


def run_pipeline(
    pipeline: Pipeline,
    dicom_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str],
    overwrite: bool = False,
    batch_size: int = 8,
    device: str = "cpu",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    write_report: bool = True,
) -> RunSummary:
    """Run ``pipeline`` on every study of ``dicom_dir`` and write the outputs to ``out``.

    Args:
        pipeline: the task (e.g. :class:`pipelines.pneumonia.PneumoniaPipeline`).
        dicom_dir: folder of DICOM files (any layout, any file names).
        out: output folder (created; reused to resume).
        weights: checkpoint made for this pipeline (refused otherwise).
        overwrite: redo studies that are already done.
        batch_size: images per forward pass.
        device: torch device.
        workers: processes for the header scan.
        progress: ``progress(done, total)`` per image.
        write_report: also write ``report.html``.

    Returns:
        The :class:`RunSummary`. Bad inputs are recorded in ``errors.csv``, never raised.

    Raises:
        medimg.models.CheckpointError: the weights are missing or not for this pipeline.
    """
    from medimg.models import load_checkpoint

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(out=out)
    model, meta = load_checkpoint(weights, pipeline=pipeline.name, map_location=device)
    model.eval().to(device)
    transform = pipeline.transforms(meta["preprocessing"], train=False)
    jobs, n_studies = _scan_and_plan(pipeline, dicom_dir, overwrite, workers, summary)
    timings = _process_jobs(
        pipeline, jobs, model, meta, transform, summary, batch_size=batch_size, device=device, progress=progress
    )
    outputs = _write_results(pipeline, meta, summary, timings, n_studies=n_studies, n_processed=len(jobs))
    summary.timings["total"] = time.perf_counter() - start
    settings = {"batch_size": batch_size, "device": device, "overwrite": overwrite}
    _write_run_json(pipeline, dicom_dir, weights, meta, settings, summary, outputs)
    if write_report:
        from pipelines.run_report import run_report

        run_report(pipeline, summary, meta).write(out / "report.html")
    return summary


def _scan_and_plan(
    pipeline: Pipeline, dicom_dir: str | os.PathLike[str], overwrite: bool, workers: int | None, summary: RunSummary
) -> tuple[list[tuple], int]:
    """The jobs ``(study, folder, items)`` still to do and the number of studies found; the pipeline's own
    file plan when it has one, else a header scan and :func:`_plan`. Times it as ``timings["scan"]``."""
    from medimg.dicom import scan_folder

    t = time.perf_counter()
    planned = pipeline.plan_files(Path(dicom_dir), summary.out, overwrite, summary)
    if planned is None:
        scan = scan_folder(dicom_dir, workers=workers)
        jobs = _plan(pipeline, scan, summary.out, overwrite, summary)
        n_studies = len(scan.studies)
    else:
        jobs, n_studies = planned, len(planned) + summary.counts.get("studies_resumed", 0)
    summary.timings["scan"] = time.perf_counter() - t
    return jobs, n_studies


def _process_jobs(
    pipeline: Pipeline,
    jobs: list[tuple],
    model: Any,
    meta: Mapping[str, Any],
    transform: Any,
    summary: RunSummary,
    *,
    batch_size: int,
    device: str,
    progress: Callable[[int, int], None] | None,
) -> dict[str, float]:
    """Load, infer and write every job's images in batches of ``batch_size``; a study's files are written
    as soon as its last image is done. Returns the time spent per stage (seconds)."""
    pending = [(j, item) for j, (_, _, items) in enumerate(jobs) for item in items]
    results: dict[int, list[tuple[dict, ImageResult | None]]] = {j: [] for j in range(len(jobs))}
    job_errors: dict[int, list[dict[str, Any]]] = {j: [] for j in range(len(jobs))}
    timings = {"load_transform": 0.0, "inference": 0.0, "postprocess": 0.0, "write": 0.0}
    done_images = 0
    for b in range(0, len(pending), batch_size):
        batch = pending[b : b + batch_size]
        t = time.perf_counter()
        tensors, ok = _load_batch(pipeline, batch, transform, results, job_errors)
        timings["load_transform"] += time.perf_counter() - t
        if tensors:
            outputs = pipeline.infer(model, tensors, [item for _, item in ok], meta, device=device, timings=timings)
            for (j, item), result in zip(ok, outputs, strict=True):
                results[j].append((item, result))
        done_images += len(batch)
        if progress:
            progress(done_images, len(pending))
        t = time.perf_counter()
        for j in {j for j, _ in batch}:
            if len(results[j]) == len(jobs[j][2]):
                rows = _write_study(pipeline, jobs[j][1], results.pop(j), job_errors[j])
                summary.rows.extend(rows)
                summary.errors.extend(job_errors[j])
                summary.counts["images_processed"] = summary.counts.get("images_processed", 0) + len(rows)
        timings["write"] += time.perf_counter() - t
    return timings


def _write_results(
    pipeline: Pipeline,
    meta: Mapping[str, Any],
    summary: RunSummary,
    timings: dict[str, float],
    *,
    n_studies: int,
    n_processed: int,
) -> list[Path]:
    """``results.csv`` (rows sorted by the pipeline's id columns), the pipeline's run-level files and
    ``errors.csv``; completes the summary's counts and timings. Returns the pipeline's files."""
    t = time.perf_counter()
    out = summary.out
    summary.rows.sort(key=lambda r: tuple(str(r.get(c, "")) for c in pipeline.id_columns))
    columns = pipeline.id_columns + pipeline.result_columns
    write_csv(out / "results.csv", summary.rows, columns)
    outputs = pipeline.finalize(out, summary.rows, meta)
    write_csv(out / "errors.csv", summary.errors, ERROR_COLUMNS)
    timings["finalize"] = time.perf_counter() - t
    summary.timings.update(timings)
    summary.counts.setdefault("images_processed", 0)
    summary.counts.setdefault("studies_resumed", 0)
    summary.counts.update(
        studies=n_studies,
        studies_processed=n_processed,
        images=len(summary.rows),
        errors=sum(1 for e in summary.errors if e["kind"] == "error"),
        skipped=sum(1 for e in summary.errors if e["kind"] == "skipped"),
    )
    return outputs


def _write_study(
    pipeline: Pipeline, folder: Path, done: list[tuple[dict, ImageResult | None]], errors: list[dict[str, Any]]
) -> list[dict]:
    """Per-study files, then ``study.json`` (the done marker; not written when an image of the
    study failed, so that a rerun tries the study again and reports its errors again)."""
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for item, result in done:
        if result is None:
            continue
        row = {key: item.get(key, "") for key in pipeline.id_columns}
        row.update(result.row)
        result.row = row
        pipeline.write_image_outputs(folder, result)
        rows.append(result.row)
    if not errors:  # a study with failures gets no done marker: the next run retries it
        write_json(folder / "study.json", {"rows": rows})
    return rows
