"""Score a whole submission folder against a truth folder, in parallel, and write the results.

``scores.csv``: ``case_id,region,DSC_AUC,FTP_RATIO_AUC,FTN_RATIO_AUC,SCORE`` (one row per case
and region); ``curves.csv``: ``case_id,THRESHOLDS,WT_DICE,WT_FTP_RATIO,...,ET_FTN_RATIO`` (the
columns of the official scorer's curves, one row per case and threshold); ``errors.csv``:
``case_id,file,error``; ``warnings.csv``: ``case_id,file,warning`` (cases scored, but whose score
may mislead: uncertainty maps that look like a 0..1 scale). All written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medimg.parallel import ProgressCallback, parallel_map
from medimg.writers import write_csv
from uncertainty.qubrats import DEFAULT_NUM_THRESHOLDS, REGIONS, CaseScore, score_case
from uncertainty.submission import CaseError, CaseFiles, find_submission, find_truth, load_case

__all__ = [
    "CURVE_COLUMNS",
    "ERROR_COLUMNS",
    "SCORE_COLUMNS",
    "WARNING_COLUMNS",
    "SubmissionScores",
    "curve_rows",
    "score_rows",
    "score_submission",
    "summarize",
    "write_results",
]

SCORE_COLUMNS = ("case_id", "region", "DSC_AUC", "FTP_RATIO_AUC", "FTN_RATIO_AUC", "SCORE")
CURVE_COLUMNS = ("case_id", "THRESHOLDS") + tuple(
    f"{r}_{m}" for r in REGIONS for m in ("DICE", "FTP_RATIO", "FTN_RATIO")
)
ERROR_COLUMNS = ("case_id", "file", "error")
WARNING_COLUMNS = ("case_id", "file", "warning")


@dataclass
class SubmissionScores:
    """Results of :func:`score_submission`.

    Attributes:
        cases: scored cases, sorted by case ID.
        errors: every case that could not be scored, and every input problem, with the file.
        truth_case_ids: the case IDs of the truth folder (what a complete submission covers).
        brain_mask_sources: per scored case, where its brain mask came from.
        num_thresholds: the size of the threshold grid.
        warnings: scored cases whose score may mislead, as ``{case_id, file, warning}`` rows.
    """

    cases: list[CaseScore] = field(default_factory=list)
    errors: list[CaseError] = field(default_factory=list)
    truth_case_ids: list[str] = field(default_factory=list)
    brain_mask_sources: dict[str, str] = field(default_factory=dict)
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS
    warnings: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _scale_warning(submission: CaseFiles, maps: dict[str, np.ndarray]) -> dict[str, str] | None:
    """A warning row when every uncertainty map of a case has max <= 1 (0..1 instead of 0..100)."""
    if not maps:
        return None
    highest = max(float(np.max(m)) if m.size else 0.0 for m in maps.values())
    if highest > 1:
        return None
    path = submission.files.get(REGIONS[0], "")
    message = (
        f"every uncertainty map has max <= 1 (highest {highest:g}): a 0..1 scale? QU-BraTS expects 0..100, "
        "so nearly every threshold filters all voxels; scored as given"
    )
    return {"case_id": submission.case_id, "file": str(path), "warning": message}


_Scored = tuple[CaseScore | None, str, CaseError | None, dict[str, str] | None]


def _score_job(job: tuple[CaseFiles, CaseFiles, int, str]) -> _Scored:
    submission, truth, num_thresholds, brain_mask = job
    try:
        inputs = load_case(submission, truth, brain_mask=brain_mask)
        score = score_case(
            inputs.prediction,
            inputs.uncertainty,
            inputs.truth,
            inputs.brain_mask,
            case_id=inputs.case_id,
            num_thresholds=num_thresholds,
        )
        return score, inputs.brain_mask_source, None, _scale_warning(submission, inputs.uncertainty)
    except CaseError as exc:
        return None, "", exc, None
    except Exception as exc:  # noqa: BLE001 - one broken case never stops the others
        error = CaseError(submission.case_id, "", f"unexpected error: {type(exc).__name__}: {exc}")
        return None, "", error, None


def score_submission(
    submission_dir: str | os.PathLike[str],
    truth_dir: str | os.PathLike[str],
    *,
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
    brain_mask: str = "auto",
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> SubmissionScores:
    """Score every case of a submission folder; problems are collected, never raised.

    Args:
        submission_dir: folder with ``{ID}.nii.gz`` and ``{ID}_unc_{whole,core,enhance}.nii.gz``
            (flat or one sub-folder per case).
        truth_dir: folder with ``{ID}_seg.nii.gz`` (flat or BraTS layout) and brain masks.
        num_thresholds: size of the threshold grid (41: 100 -> 0 by 2.5).
        brain_mask: ``"auto"`` or ``"none"`` (see :func:`uncertainty.submission.load_case`).
        workers: processes (default: all cores).
        progress: ``progress(done, total)`` per case.

    Returns:
        The :class:`SubmissionScores`. Cases in the truth but not in the submission, unknown
        case IDs, duplicates and every invalid input are errors.
    """
    result = SubmissionScores(num_thresholds=num_thresholds)
    try:
        submission = find_submission(submission_dir)
    except NotADirectoryError as exc:
        result.errors.append(CaseError("", submission_dir, str(exc)))
        return result
    try:
        truth = find_truth(truth_dir)
    except NotADirectoryError as exc:
        result.errors.append(CaseError("", truth_dir, str(exc)))
        return result
    result.errors.extend(submission.errors)
    result.errors.extend(truth.errors)
    result.truth_case_ids = sorted(truth.cases)
    if not submission.cases:
        result.errors.append(
            CaseError("", submission_dir, "empty submission: no {ID}.nii.gz or {ID}_unc_*.nii.gz files")
        )
    if not truth.cases:
        result.errors.append(CaseError("", truth_dir, "no reference cases: no {ID}_seg.nii.gz files"))
    duplicated = {e.case_id for e in result.errors if e.case_id}
    for case_id in sorted(set(submission.cases) - set(truth.cases)):
        first = next(iter(submission.cases[case_id].files.values()))
        result.errors.append(CaseError(case_id, first, f"unknown case ID: no {case_id}_seg.nii.gz in {truth_dir}"))
    if submission.cases:
        for case_id in sorted(set(truth.cases) - set(submission.cases)):
            result.errors.append(CaseError(case_id, submission_dir, "no submission for this case"))
    jobs = [
        (submission.cases[c], truth.cases[c], num_thresholds, brain_mask)
        for c in sorted(set(submission.cases) & set(truth.cases))
        if c not in duplicated
    ]
    for score, source, error, warning in parallel_map(
        _score_job, jobs, workers=workers, progress=progress, preload=["uncertainty.scoring"]
    ):
        if error is not None:
            result.errors.append(error)
        else:
            assert score is not None
            result.cases.append(score)
            result.brain_mask_sources[score.case_id] = source
            if warning is not None:
                result.warnings.append(warning)
    return result


def score_rows(cases: Sequence[CaseScore], **extra: Any) -> list[dict[str, Any]]:
    """One dict per case and region with the :data:`SCORE_COLUMNS` (plus ``extra`` keys)."""
    return [
        {
            **extra,
            "case_id": case.case_id,
            "region": r.region,
            "DSC_AUC": r.dsc_auc,
            "FTP_RATIO_AUC": r.ftp_auc,
            "FTN_RATIO_AUC": r.ftn_auc,
            "SCORE": r.score,
        }
        for case in cases
        for r in case.regions
    ]


def curve_rows(cases: Sequence[CaseScore]) -> list[dict[str, Any]]:
    """One dict per case and threshold with the :data:`CURVE_COLUMNS`."""
    rows = []
    for case in cases:
        taus = case.regions[0].thresholds
        for i, tau in enumerate(taus):
            row: dict[str, Any] = {"case_id": case.case_id, "THRESHOLDS": float(tau)}
            for r in case.regions:
                row[f"{r.region}_DICE"] = float(r.dsc[i])
                row[f"{r.region}_FTP_RATIO"] = float(r.ftp[i])
                row[f"{r.region}_FTN_RATIO"] = float(r.ftn[i])
            rows.append(row)
    return rows


def summarize(cases: Sequence[CaseScore]) -> list[dict[str, Any]]:
    """Per region: cases, mean and median of the score and of each AUC."""
    out = []
    for region in REGIONS:
        values = [case[region] for case in cases]
        row: dict[str, Any] = {"region": region, "cases": len(values)}
        for name, attr in (
            ("SCORE", "score"),
            ("DSC_AUC", "dsc_auc"),
            ("FTP_RATIO_AUC", "ftp_auc"),
            ("FTN_RATIO_AUC", "ftn_auc"),
        ):
            data = np.array([getattr(v, attr) for v in values], dtype=float)
            row[f"mean_{name}"] = float(data.mean()) if data.size else None
            row[f"median_{name}"] = float(np.median(data)) if data.size else None
        out.append(row)
    return out


def write_results(
    result: SubmissionScores,
    scores_csv: str | os.PathLike[str],
    *,
    curves_csv: str | os.PathLike[str] | None = None,
    errors_csv: str | os.PathLike[str] | None = None,
    warnings_csv: str | os.PathLike[str] | None = None,
) -> None:
    """Write ``scores.csv`` (and ``curves.csv``, ``errors.csv``, ``warnings.csv``) atomically.

    ``errors_csv`` and ``warnings_csv`` default to ``errors.csv`` and ``warnings.csv`` beside
    ``scores_csv``; both are always written (only the header when there is nothing to say), so
    a rerun never leaves stale rows behind.
    """
    scores_csv = Path(scores_csv)
    write_csv(scores_csv, score_rows(result.cases), SCORE_COLUMNS)
    if curves_csv is not None:
        write_csv(curves_csv, curve_rows(result.cases), CURVE_COLUMNS)
    errors_path = Path(errors_csv) if errors_csv is not None else scores_csv.with_name("errors.csv")
    write_csv(errors_path, [e.to_row() for e in result.errors], ERROR_COLUMNS)
    warnings_path = Path(warnings_csv) if warnings_csv is not None else scores_csv.with_name("warnings.csv")
    write_csv(warnings_path, result.warnings, WARNING_COLUMNS)
