"""Run any pipeline over a DICOM folder: scan -> select -> load -> transform -> infer -> write.

Outputs in OUT:

- ``run.json``: versions, weights (their sha256 and source: the kind of model file, each file's
  SHA-256, every value taken from a MONAI bundle or model card), settings, counts, timings;
- ``results.csv``: one row per image (PatientID, Study/Series/SOP Instance UIDs, source file,
  the selection that took it, then the pipeline's columns);
- ``errors.csv``: every file, series or study not processed and why; ``kind`` is ``error``
  (a broken or undecodable file: the command exits 1) or ``skipped`` (not for this pipeline:
  another modality, a lateral view, a CSV beside the images, an SR, ...);
- ``studies/<StudyInstanceUID>/``: per-study outputs and ``study.json`` (written last, so a
  study with ``study.json`` is done: a second run skips it unless ``overwrite``);
- the pipeline's run-level files (``submission.csv``, ``exams.csv``) and ``report.html``.
- ``dicom/<StudyInstanceUID>/``: for DICOM inputs, the results as DICOM objects (SR, overlay SC),
  listed with the brats SEG in ``run.json`` ``dicom_results`` (:mod:`pipelines.dicom_outputs`).

Every run finishes its bookkeeping: whatever fails for one file, image or study (decoding,
transforms, inference, writing) becomes an ``error`` line of ``errors.csv`` with a readable cause,
and ``results.csv``, ``errors.csv``, ``run.json`` and ``report.html`` are always written.

One run at a time per OUT (``OUT/.medimg.lock``). A rerun resumes only when its result settings
(pipeline, weights' SHA-256, uncertainty method, samples and ensemble weights) agree with those in
``run.json``; otherwise it is refused (:class:`pipelines.run_state.RunRefused`) unless
``overwrite``, which removes the earlier run's outputs (inside OUT only) and starts clean.
Temporary files left by a killed run are removed at the start.

Inputs are only read.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medimg import __version__
from medimg.writers import remove_stale_temporaries, write_csv, write_json
from pipelines.base import ImageResult, Pipeline
from pipelines.run_stages import Outcome, StagePool, WorkItem, default_workers, local_outcomes
from pipelines.run_state import (
    OutputLock,
    RunRefused,
    check_rerun,
    clean_previous_run,
    describe_error,
    prepare_output,
    result_settings,
)
from pipelines.study_outputs import StudyTask, WrittenStudy, error_line, write_study

__all__ = ["ERROR_COLUMNS", "RunRefused", "RunSummary", "default_weights", "resume_study", "run_pipeline"]

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
    #: Writes the studies' DICOM result objects (:mod:`pipelines.dicom_outputs`); None: none written.
    dicom: Any = None

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
    """Select images per study; record skips; return jobs (study, folder, items) not yet done. A study
    that cannot be planned (e.g. an unusable UID for its folder) is an error line, never raised."""
    from medimg.dicom import load_rules

    rules = load_rules(pipeline.rules)
    jobs = []
    for entry in scan.quarantine:
        summary.errors.append(
            {"kind": "error" if entry.is_error else "skipped", "path": entry.path, "reason": entry.reason}
        )
    for study in scan.studies:
        try:
            job = _plan_study(pipeline, study, rules, out, overwrite, summary)
        except Exception as exc:  # noqa: BLE001 - one bad study never stops the run
            first = study.series[0].files[0] if study.series and study.series[0].files else ""
            ids = {"PatientID": study.PatientID, "StudyInstanceUID": study.StudyInstanceUID, "path": first}
            summary.errors.append(error_line(ids, f"cannot plan the study: {describe_error(exc)}"))
            continue
        if job is not None:
            jobs.append(job)
    return jobs


def _record_unselected(study: Any, chosen: Any, rules: Any, summary: RunSummary) -> None:
    """A ``skipped`` line per series or image the rules did not take."""
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


def _plan_study(
    pipeline: Pipeline, study: Any, rules: Any, out: Path, overwrite: bool, summary: RunSummary
) -> tuple | None:
    """The job ``(study, folder, items)`` of one study, or None (missing series, nothing selected, done)."""
    from medimg.dicom import select

    chosen = select(study, rules)
    ids = {"PatientID": study.PatientID, "StudyInstanceUID": study.StudyInstanceUID}
    _record_unselected(study, chosen, rules, summary)
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
                + "".join(f"; {u}" for u in unusable)
                + "".join(f"; {name}: {chosen.conflicts[name]}" for name in chosen.missing if name in chosen.conflicts),
            }
        )
        return None
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
        return None
    folder = out / pipeline.output_folder(study.StudyInstanceUID, items[0])
    summary.folders[study.StudyInstanceUID] = str(folder.relative_to(out))
    return None if resume_study(folder, overwrite, summary) else (study, folder, items)


def resume_study(folder: Path, overwrite: bool, summary: RunSummary) -> bool:
    """True when ``folder/study.json`` marks the study done (its rows are then added to
    ``summary``); False when it has to be processed (again)."""
    done = folder / "study.json"
    if overwrite or not done.is_file():
        return False
    record = json.loads(done.read_text())
    summary.rows.extend(record["rows"])
    if summary.dicom is not None:
        summary.dicom.record(record.get("dicom_results", []))
    summary.counts["studies_resumed"] = summary.counts.get("studies_resumed", 0) + 1
    return True


def _write_run_json(
    pipeline: Pipeline,
    dicom_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    meta: Mapping[str, Any],
    settings: Mapping[str, Any],
    summary: RunSummary,
    outputs: list[Path],
) -> None:
    """``OUT/run.json``: input, weights (path, SHA-256, architecture, training), settings (those that
    decide the results also as ``result_settings``, compared by a rerun), versions, counts, timings,
    the files and study folders written, and ``status`` (``running`` until the run has finished)."""
    out = summary.out
    identity = settings["result"]
    write_json(
        out / "run.json",
        {
            "pipeline": pipeline.name,
            "status": settings["status"],
            "input": str(dicom_dir),
            "weights": {
                "path": str(weights),
                "sha256": identity["weights_sha256"],
                "architecture": meta["architecture"],
                "training": meta.get("training", {}),
                "source": meta.get("source", {}),
            },
            "settings": {
                "batch_size": settings["batch_size"],
                "device": settings["device"],
                "workers": settings["workers"],
                "ray": settings["ray"],
                "preprocessing": meta["preprocessing"],
                "overwrite": settings["overwrite"],
                "selection_rules": pipeline.rules,
                "uncertainty": identity["uncertainty"],
                "samples": identity["samples"],
                "ensemble_weights": list(getattr(pipeline, "ensemble_weights", []) or []),
            },
            "result_settings": identity,
            "notes": list(settings.get("notes", [])),
            "versions": _versions(),
            "counts": summary.counts,
            "timings_s": {k: round(v, 4) for k, v in summary.timings.items()},
            "outputs": [str(p.relative_to(out)) for p in outputs] + ["results.csv", "errors.csv"],
            "folders": summary.folders,
            "dicom_results": summary.dicom.listed if summary.dicom is not None else [],
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
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
    dicom_results: bool = True,
    input_errors: Sequence[Mapping[str, Any]] = (),
    scan_index: str | os.PathLike[str] | None = None,
    ray: str | None = None,
) -> RunSummary:
    """Run ``pipeline`` on every study of ``dicom_dir`` and write the outputs to ``out``.

    Args:
        pipeline: the task (e.g. :class:`pipelines.pneumonia.PneumoniaPipeline`).
        dicom_dir: folder of DICOM files (any layout, any file names).
        out: output folder (created; reused to resume when the result settings agree).
        weights: the model for this pipeline (refused otherwise): a medimg checkpoint, a MONAI
            bundle (folder or zip), a TorchScript ``.ts`` or ``torch.export`` ``.pt2`` file
            (:func:`medimg.model_sources.load_model`).
        overwrite: remove the outputs of earlier runs in ``out`` and start clean.
        batch_size: images per forward pass.
        device: torch device; on ``cuda`` mixed precision and channels-last (:mod:`medimg.devices`).
        workers: processes that read headers and load (decode, preprocess) the images while the model
            runs (:mod:`pipelines.run_stages`); default: one per core; 0 does everything in this process.
        progress: ``progress(done, total)`` per image.
        write_report: also write ``report.html``.
        trust_code: let a bundle's config run code (``--trust-model-code``).
        card: the model card (default: the one beside the model file).
        dicom_results: for DICOM inputs, also write the results as DICOM objects (SR, SC) under
            ``OUT/dicom/`` and list them in ``run.json`` (:mod:`pipelines.dicom_outputs`).
        input_errors: error lines from before the run (e.g. series a PACS did not deliver): they
            go into ``errors.csv``, the counts and the report like the run's own.
        scan_index: an SQLite scan index of ``dicom_dir`` (:mod:`medimg.dicom.scan_index`): only new
            or changed files are read, and the index is brought up to date; None scans every header.
        ray: ``"auto"`` or a Ray cluster's address: load and infer on the cluster's workers
            (:mod:`pipelines.ray_runs`; the results are written here as in a local run); None: here.

    Returns:
        The :class:`RunSummary`. Bad inputs are recorded in ``errors.csv``, never raised.

    Raises:
        medimg.devices.DeviceError: ``device`` cannot be used here (e.g. ``cuda`` without a GPU; not
            checked with ``ray``, where the model runs on the cluster's workers).
        pipelines.ray_runs.RayUnavailable: ``ray`` given, and Ray is not installed or no cluster answers.
        medimg.models.CheckpointError: the weights are missing, unreadable or not for this pipeline
            (a :class:`medimg.model_sources.ModelSourceError` for a bundle, TorchScript or card).
        RunRefused: ``out`` is a file, another run holds it, or it holds a run with other result
            settings (and not ``overwrite``); nothing was written then.
    """
    from medimg.devices import prepare_model
    from medimg.model_sources import load_model, model_sha256

    start = time.perf_counter()
    here = _where_the_model_runs(device, ray)
    out = prepare_output(out)
    with OutputLock(out):
        remove_stale_temporaries(out)
        model, meta = load_model(weights, pipeline=pipeline.name, map_location=here, trust_code=trust_code, card=card)
        model = prepare_model(model, here)
        pipeline.load_extra_models(meta, device=here, trust_code=trust_code)
        identity = result_settings(pipeline, model_sha256(weights, card))
        if overwrite:
            clean_previous_run(out)
        else:
            check_rerun(out, identity)
        summary = RunSummary(out=out, errors=[dict(e) for e in input_errors])
        summary.dicom = _dicom_writer(pipeline, out, weights, meta, identity, enabled=dicom_results)
        notes = pipeline.run_notes(model, meta)
        workers = default_workers() if workers is None else workers
        settings = {"batch_size": batch_size, "device": device, "overwrite": overwrite, "result": identity}
        settings.update(workers=workers, ray=ray)
        settings["notes"] = notes
        _write_run_json(pipeline, dicom_dir, weights, meta, {**settings, "status": "running"}, summary, [])
        transform = pipeline.transforms(meta["preprocessing"], train=False)
        jobs, n_studies = _scan_and_plan(pipeline, dicom_dir, overwrite, workers, summary, scan_index)
        stage_timings: dict[str, float] = {}
        write = functools.partial(write_study, pipeline, summary.dicom)
        with StagePool(pipeline, transform, write, workers if jobs else 0, died=_study_writer_died) as pool:
            outcomes = _outcome_source(
                pipeline, pool, model, meta, ray, device, stage_timings, weights, card, trust_code
            )
            _process_jobs(pipeline, jobs, outcomes, pool, summary, batch_size=batch_size, progress=progress)
        timings = {**stage_timings, "write": pool.write_seconds}
        outputs = _write_results(pipeline, meta, summary, timings, n_studies=n_studies, n_processed=len(jobs))
        if summary.dicom is not None and summary.dicom.listed:
            outputs.append(out / "dicom")  # removed by --overwrite with the rest
        if write_report:
            _write_report(pipeline, summary, meta, notes)
        write_csv(out / "errors.csv", summary.errors, ERROR_COLUMNS)
        summary.timings["total"] = time.perf_counter() - start
        _write_run_json(pipeline, dicom_dir, weights, meta, {**settings, "status": "finished"}, summary, outputs)
    return summary


def _where_the_model_runs(device: str, ray: str | None) -> str:
    """The device of the model in this process, after checking ``device`` (here) or connecting to the
    cluster (``ray``; the model then runs on its workers and only waits here, on the CPU), before
    anything is written: a missing GPU or an unreachable cluster leaves OUT as it was."""
    from medimg.devices import check_device

    if ray is None:
        return check_device(device)
    from pipelines.ray_runs import connect

    connect(ray)
    return "cpu"


def _outcome_source(
    pipeline: Pipeline,
    pool: StagePool,
    model: Any,
    meta: Mapping[str, Any],
    ray: str | None,
    device: str,
    timings: dict[str, float],
    weights: str | os.PathLike[str],
    card: str | os.PathLike[str] | None,
    trust_code: bool,
) -> Callable[[list[list[WorkItem]]], Generator[list[Outcome], None, None]]:
    """Where the batches are loaded and inferred: ``pool`` and ``model`` here, or the Ray cluster at
    ``ray`` (:mod:`pipelines.ray_runs`, which loads the model on its workers)."""

    def outcomes(batches: list[list[WorkItem]]) -> Generator[list[Outcome], None, None]:
        if ray is not None:
            from pipelines.ray_runs import ray_outcomes

            return ray_outcomes(
                pipeline,
                batches,
                pool.transform,
                meta,
                weights=weights,
                card=card,
                trust_code=trust_code,
                device=device,
                address=ray,
                timings=timings,
            )
        return local_outcomes(pool, batches, model, meta, device=device, timings=timings)

    return outcomes


def _dicom_writer(
    pipeline: Pipeline,
    out: Path,
    weights: str | os.PathLike[str],
    meta: Mapping[str, Any],
    identity: Mapping[str, Any],
    *,
    enabled: bool,
) -> Any:
    """The run's :class:`pipelines.dicom_outputs.DicomResultWriter` (disabled: it writes nothing but
    still lists the objects of resumed studies)."""
    from pipelines.dicom_outputs import DicomResultWriter, is_demo_weights

    demo = is_demo_weights(weights, meta, default_weights(pipeline.name))
    sha = identity["weights_sha256"]
    return DicomResultWriter(pipeline, out, meta=meta, weights_sha256=sha, demo=demo, enabled=enabled)


def _write_report(pipeline: Pipeline, summary: RunSummary, meta: Mapping[str, Any], notes: list[str]) -> None:
    """``report.html``; when it cannot be made, an error line and a plain report of the counts and errors."""
    from pipelines.run_report import plain_run_report, run_report

    try:
        run_report(pipeline, summary, meta, notes).write(summary.out / "report.html")
    except Exception as exc:  # noqa: BLE001 - the bookkeeping is finished whatever the report does
        summary.errors.append(
            {"kind": "error", "path": "report.html", "reason": f"cannot make the report: {describe_error(exc)}"}
        )
        summary.counts["errors"] = summary.counts.get("errors", 0) + 1
        plain_run_report(pipeline, summary).write(summary.out / "report.html")


def _scan_and_plan(
    pipeline: Pipeline,
    dicom_dir: str | os.PathLike[str],
    overwrite: bool,
    workers: int | None,
    summary: RunSummary,
    scan_index: str | os.PathLike[str] | None = None,
) -> tuple[list[tuple], int]:
    """The jobs ``(study, folder, items)`` still to do and the number of studies found; the pipeline's own
    file plan when it has one, else a header scan and :func:`_plan`. Times it as ``timings["scan"]``.
    When the input cannot be read at all, an error line and no jobs."""
    from medimg.dicom import scan_folder

    t = time.perf_counter()
    try:
        planned = pipeline.plan_files(Path(dicom_dir), summary.out, overwrite, summary)
        if planned is None:
            readers = 1 if workers == 0 else workers
            if scan_index is None:
                scan = scan_folder(dicom_dir, workers=readers)
            else:
                from medimg.dicom.scan_index import scan_folder_indexed

                scan = scan_folder_indexed(dicom_dir, scan_index, workers=readers)
            jobs = _plan(pipeline, scan, summary.out, overwrite, summary)
            n_studies = len(scan.studies)
        else:
            jobs, n_studies = planned, len(planned) + summary.counts.get("studies_resumed", 0)
    except Exception as exc:  # noqa: BLE001 - the bookkeeping is finished whatever the input is
        summary.errors.append(
            {"kind": "error", "path": str(dicom_dir), "reason": f"cannot read the input: {describe_error(exc)}"}
        )
        jobs, n_studies = [], 0
    summary.timings["scan"] = time.perf_counter() - t
    return jobs, n_studies


def _process_jobs(
    pipeline: Pipeline,
    jobs: list[tuple],
    outcomes: Callable[[list[list[WorkItem]]], Generator[list[Outcome], None, None]],
    pool: StagePool,
    summary: RunSummary,
    *,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Every job's images through the stages (:mod:`pipelines.run_stages`): ``outcomes(batches)``
    loads and infers batches of ``batch_size`` (a study-level pipeline: one case per batch), here
    (:func:`pipelines.run_stages.local_outcomes`) or on a Ray cluster; ``pool`` writes each study as
    soon as its last image is done, and its rows, errors and DICOM objects go into ``summary``."""
    pending = [(j, item) for j, (_, _, items) in enumerate(jobs) for item in items]
    size = 1 if pipeline.unit == "study" else batch_size
    batches = [pending[b : b + size] for b in range(0, len(pending), size)]
    results: dict[int, list[tuple[dict, ImageResult | None]]] = {j: [] for j in range(len(jobs))}
    job_errors: dict[int, list[dict[str, Any]]] = {j: [] for j in range(len(jobs))}

    def record(written: WrittenStudy) -> None:
        summary.rows.extend(written.rows)
        summary.errors.extend(written.errors)
        if summary.dicom is not None:
            summary.dicom.record(written.objects)
        summary.counts["images_processed"] = summary.counts.get("images_processed", 0) + len(written.rows)

    done_images = 0
    stream = outcomes(batches)
    try:
        for batch in stream:
            for (j, item), result, reason in batch:
                if result is None:
                    job_errors[j].append(error_line(item, reason))
                results[j].append((item, result))
            done_images += len(batch)
            if progress:
                progress(done_images, len(pending))
            for j in sorted({j for (j, _), _, _ in batch}):
                if len(results[j]) == len(jobs[j][2]):
                    pool.write(StudyTask(jobs[j][1], results.pop(j), job_errors.pop(j)), record)
    finally:
        stream.close()


def _study_writer_died(task: StudyTask) -> WrittenStudy:
    """What a study whose writing process died gives: an error line (no ``study.json``: a rerun writes it)."""
    line = error_line(task.done[0][0], "cannot write the study's outputs: the writing process died (killed or crashed)")
    return WrittenStudy(rows=[], errors=[*task.errors, line], objects=[])


def _write_results(
    pipeline: Pipeline,
    meta: Mapping[str, Any],
    summary: RunSummary,
    timings: dict[str, float],
    *,
    n_studies: int,
    n_processed: int,
) -> list[Path]:
    """``results.csv`` (rows sorted by the pipeline's id columns) and the pipeline's run-level files
    (when they fail: an error line); completes the summary's counts and timings. Returns the
    pipeline's files. ``errors.csv`` is written by the caller, last."""
    t = time.perf_counter()
    out = summary.out
    summary.rows.sort(key=lambda r: tuple(str(r.get(c, "")) for c in pipeline.id_columns))
    columns = pipeline.id_columns + pipeline.result_columns
    write_csv(out / "results.csv", summary.rows, columns)
    try:
        outputs = pipeline.finalize(out, summary.rows, meta)
    except Exception as exc:  # noqa: BLE001 - the bookkeeping is finished whatever the pipeline does
        outputs = []
        summary.errors.append(
            {"kind": "error", "path": str(out), "reason": f"cannot write the run-level files: {describe_error(exc)}"}
        )
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
