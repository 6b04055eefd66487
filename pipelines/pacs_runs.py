"""Runs whose studies come from a DICOMweb server, and results pushed back with STOW-RS.

:func:`fetch_studies` reads each study's headers first (WADO-RS metadata), applies the pipeline's
selection rules to them, and retrieves only the series the rules pick into
``OUT/pacs-cache`` (:class:`medimg.pacs.cache.SeriesCache`); the run then goes over that folder like
any other (:func:`pipelines.runner.run_pipeline`). A study the server cannot deliver, or one that
changed between the metadata and the retrieve, is an error line naming the study and series; what
did arrive stays in ``OUT/pacs-incoming`` and a rerun fetches only the rest.

:func:`push_results` sends the run's DICOM results (``run.json`` ``"dicom_results"``) with STOW-RS and
records each one sent in ``OUT/pushed.json`` (SOPInstanceUID -> destination), so a rerun sends only
what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medimg.pacs.cache import SeriesCache
from medimg.pacs.dicomweb import DicomWebSource, PacsError, PacsSetupError, PacsUnreachable
from medimg.safepath import UnsafePathError, inside
from medimg.writers import write_json

__all__ = [
    "FetchReport",
    "PushReport",
    "ResultStore",
    "error_line",
    "fetch_studies",
    "push_results",
    "read_dicom_results",
]

PUSHED_FILE = "pushed.json"


@dataclass
class FetchReport:
    """What :func:`fetch_studies` did: the studies asked for, series retrieved now or found complete
    in the cache, and ``errors.csv`` lines (``error``: not delivered; ``skipped``: nothing selected)."""

    folder: Path
    studies: list[str] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(e["kind"] == "error" for e in self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "studies": self.studies,
            "retrieved": self.retrieved,
            "cached": self.cached,
            "errors": self.errors,
        }


def error_line(kind: str, study_uid: str, series_uid: str, reason: str, patient: str = "") -> dict[str, Any]:
    """One ``errors.csv`` line about a study or series of a PACS."""
    return {
        "kind": kind,
        "PatientID": patient,
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "path": "",
        "reason": reason,
    }


def _selected_series(task: Any, study: Any, rules: Any) -> list[str]:
    """The SeriesInstanceUIDs the pipeline's rules pick in a study built from metadata."""
    from medimg.dicom import select

    chosen = select(study, rules)
    picked = [series.SeriesInstanceUID for picks in chosen.picked.values() for series, _ in picks]
    return list(dict.fromkeys(picked))


def _study_from_metadata(study_uid: str, datasets: Sequence[Any]) -> Any:
    """The :class:`medimg.dicom.Study` of the images in a study's metadata (paths are
    ``study/series/sop`` labels; instances without Rows/Columns, such as SRs, are left out)."""
    from medimg.dicom.header import header_from_dataset
    from medimg.dicom.scan import group_instances

    headers = []
    for ds in datasets:
        if not all(k in ds for k in ("SOPInstanceUID", "SeriesInstanceUID", "Rows", "Columns")):
            continue  # not an image (an SR, a presentation state, ...): never retrieved
        label = f"{ds.get('StudyInstanceUID', '')}/{ds.get('SeriesInstanceUID', '')}/{ds.get('SOPInstanceUID', '')}"
        headers.append(header_from_dataset(ds, label))
    studies, _ = group_instances(h for h in headers if h.get("StudyInstanceUID") == study_uid)
    if not studies:
        raise PacsError(f"study {study_uid}: the server lists no image of it")
    return studies[0]


def fetch_studies(
    source: DicomWebSource,
    task: Any,
    out: str | Path,
    *,
    studies: Iterable[str] = (),
    query: str | None = None,
) -> FetchReport:
    """Retrieve the series that ``task``'s rules select in each study (``studies`` and those a QIDO-RS
    ``query`` finds) into ``OUT/pacs-cache``.

    Raises:
        PacsSetupError: the server refused the credentials or its TLS certificate (nothing else is
            tried).
        PacsError: the search itself failed.
    """
    from medimg.dicom import load_rules

    cache = SeriesCache(out)
    report = FetchReport(folder=cache.root, studies=list(dict.fromkeys(studies)))
    if query:
        report.studies += [uid for uid in source.search_studies(query) if uid not in report.studies]
    rules = load_rules(task.rules)
    cache.root.mkdir(parents=True, exist_ok=True)
    down = ""  # once the server stops answering, the rest is listed, not tried
    for study_uid in report.studies:
        if down:
            report.errors.append(error_line("error", study_uid, "", f"study {study_uid}: not retrieved: {down}"))
            continue
        try:
            study = _study_from_metadata(study_uid, source.study_metadata(study_uid))
            wanted = _selected_series(task, study, rules)
        except PacsSetupError:
            raise
        except PacsError as exc:
            report.errors.append(error_line("error", study_uid, "", str(exc)))
            down = _down(source, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad study never stops the others
            reason = f"study {study_uid}: unusable metadata ({type(exc).__name__}: {exc})"
            report.errors.append(error_line("error", study_uid, "", reason))
            continue
        if not wanted:
            reason = f"no series matches the {rules.name} rules (not retrieved)"
            report.errors.append(error_line("skipped", study_uid, "", reason, study.PatientID))
            continue
        down = _fetch_selected(source, cache, study, wanted, report)
    return report


def _down(source: DicomWebSource, exc: PacsError) -> str:
    """Why the rest of the studies are not tried ("" when the server still answers)."""
    return f"{source.host} stopped answering earlier in this run" if isinstance(exc, PacsUnreachable) else ""


def _fetch_selected(
    source: DicomWebSource, cache: SeriesCache, study: Any, wanted: list[str], report: FetchReport
) -> str:
    """Fetch a study's selected series into the cache, recording each in ``report``; returns why the
    server is down ("" when it still answers)."""
    study_uid = study.StudyInstanceUID
    for series_uid in wanted:
        series = next(s for s in study.series if s.SeriesInstanceUID == series_uid)
        expected = [inst.sop_instance_uid for inst in series.instances]
        try:
            done_now = _fetch_series(source, cache, study_uid, series_uid, expected)
        except PacsSetupError:
            raise
        except PacsError as exc:
            report.errors.append(error_line("error", study_uid, series_uid, str(exc), study.PatientID))
            if _down(source, exc):
                return _down(source, exc)
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. a UID the client refuses: one bad series never stops the others
            reason = f"study {study_uid} series {series_uid}: cannot be retrieved ({type(exc).__name__}: {exc})"
            report.errors.append(error_line("error", study_uid, series_uid, reason, study.PatientID))
            continue
        (report.retrieved if done_now else report.cached).append(series_uid)
    return ""


def _fetch_series(
    source: DicomWebSource, cache: SeriesCache, study_uid: str, series_uid: str, expected: list[str]
) -> bool:
    """Bring one series into the cache; True when it was (partly) retrieved now, False when it was
    complete already.

    Raises:
        PacsError: the transfer failed, or what arrived is not the instance list of the metadata
            (the study changed on the server in between).
    """
    if cache.is_complete(study_uid, series_uid):
        return False
    here = cache.arrived(study_uid, series_uid)
    names = {cache.file_name(uid): uid for uid in expected}
    todo = [uid for name, uid in names.items() if name not in here]
    arrived: set[str] = set()
    if len(todo) == len(expected):
        for ds in source.iter_series(study_uid, series_uid):
            arrived.add(str(ds.SOPInstanceUID))
            if cache.file_name(str(ds.SOPInstanceUID)) in names:
                cache.write(study_uid, series_uid, ds)
    else:  # resume: only what an earlier try did not get
        for uid in todo:
            cache.write(study_uid, series_uid, source.retrieve_instance(study_uid, series_uid, uid))
            arrived.add(uid)
    extra = sorted(arrived - set(expected))
    missing = cache.complete(study_uid, series_uid, expected) if not extra else []
    if missing or extra:
        raise PacsError(
            f"study {study_uid} series {series_uid} changed on the server between the search and the retrieve: "
            f"{len(expected)} instance(s) listed, {len(missing)} did not arrive, {len(extra)} arrived unlisted "
            "(not used; rerun to take the study as it is now)"
        )
    return True


def read_dicom_results(out: str | Path) -> list[dict[str, Any]]:
    """The DICOM result objects of a run (``run.json`` ``"dicom_results"``); empty when none.

    Raises:
        ValueError: ``run.json`` lists them wrongly.
    """
    from pipelines.dicom_outputs import dicom_results

    return list(dicom_results(Path(out)))


class ResultStore(Protocol):
    """Where ``--push`` sends results: a DICOMweb server (STOW-RS) or a DIMSE peer (C-STORE)."""

    url: str

    def store(self, datasets: Sequence[Any]) -> list[str]: ...


@dataclass
class PushReport:
    """What :func:`push_results` did: SOPInstanceUIDs sent now, those sent by an earlier run, and
    ``(path, reason)`` of each that failed."""

    sent: list[str] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def push_results(source: ResultStore, out: str | Path) -> PushReport:
    """Store (STOW-RS or C-STORE) each DICOM result of the run in ``out`` not yet recorded in
    ``OUT/pushed.json`` for this destination; ``pushed.json`` is rewritten after each one stored.

    Raises:
        PacsSetupError: the server refused the credentials or its TLS certificate.
        ValueError: ``run.json`` lists the results wrongly.
    """
    import pydicom

    out = Path(out)
    pushed_path = out / PUSHED_FILE
    pushed: dict[str, str] = json.loads(pushed_path.read_text(encoding="utf-8")) if pushed_path.is_file() else {}
    report = PushReport()
    for entry in read_dicom_results(out):
        sop, rel = str(entry.get("SOPInstanceUID", "")), str(entry.get("path", ""))
        if pushed.get(sop) == source.url:
            report.earlier.append(sop)
            continue
        try:
            path = inside(out, out / rel)
            ds = pydicom.dcmread(path)
            problems = source.store([ds])
        except PacsSetupError:
            raise
        except (PacsError, UnsafePathError, OSError, pydicom.errors.InvalidDicomError) as exc:
            report.failed.append((rel, str(exc)))
            continue
        if problems:
            report.failed.append((rel, "; ".join(problems)))
            continue
        pushed[sop] = source.url
        write_json(pushed_path, pushed)
        report.sent.append(sop)
    return report
