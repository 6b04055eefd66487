"""Runs whose studies come from a PACS over DIMSE, and results pushed back with C-STORE.

:func:`fetch_studies_dimse` finds the studies (Study Root C-FIND by Study Instance UID or by
query keys), lists each study's series (C-FIND at SERIES level) and keeps those whose Modality the
pipeline's selection rules can take (the rest of the rules needs image-level attributes and is
applied by the run itself). Each kept series is retrieved with C-GET, or with C-MOVE to a
temporary storage SCP when the PACS refuses C-GET, into ``OUT/pacs-incoming`` and moved to
``OUT/pacs-cache`` once every instance the IMAGE-level C-FIND listed has arrived
(:class:`medimg.pacs.cache.SeriesCache`, shared with the DICOMweb route); a rerun retrieves only
the series not complete there. The run then goes over ``OUT/pacs-cache`` like over any folder.

:func:`push_results_dimse` C-STOREs the run's DICOM results (``run.json`` ``"dicom_results"``),
recording each one sent in ``OUT/pushed.json`` (the DICOMweb route's
:func:`pipelines.pacs_runs.push_results`, with a C-STORE destination).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medimg.pacs.aet import RemoteAE
from medimg.pacs.cache import SeriesCache
from medimg.pacs.dimse import DimseDestination, DimseError, find, retrieve_series
from pipelines.pacs_runs import FetchReport, PushReport, error_line, push_results

LOG = logging.getLogger("medimg.pacs")
__all__ = ["DimsePacs", "fetch_studies_dimse", "find_studies", "push_results_dimse", "series_modalities"]

_SERIES_KEYS = ("Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances")


def series_modalities(rules: Any) -> set[str] | None:
    """The Modality values a rule set can take, or None when some selection does not name them
    (then every series is retrieved)."""
    found: set[str] = set()
    for selection in rules.selections:
        for group in selection.groups:
            wanted = group.get("Modality")
            if not isinstance(wanted, (list, tuple)):
                return None
            found.update(str(m) for m in wanted)
    return found or None


def find_studies(
    remote: RemoteAE, studies: Iterable[str], query: Mapping[str, str] | None, *, calling_ae: str
) -> list[str]:
    """``studies`` followed by the Study Instance UIDs a STUDY-level C-FIND with ``query`` finds."""
    found = list(dict.fromkeys(studies))
    if query:
        keys = {**query, "StudyInstanceUID": query.get("StudyInstanceUID", "")}
        for ds in find(remote, "STUDY", keys, calling_ae=calling_ae):
            uid = str(ds.get("StudyInstanceUID", ""))
            if uid and uid not in found:
                found.append(uid)
    return found


def fetch_studies_dimse(
    remote: RemoteAE,
    task: Any,
    out: str | Path,
    *,
    studies: Iterable[str] = (),
    query: Mapping[str, str] | None = None,
    calling_ae: str = "MEDIMG",
    move_port: int | None = None,
) -> FetchReport:
    """Retrieve the series of ``studies`` (and of those ``query`` finds) that ``task``'s rules may
    take into ``OUT/pacs-cache``. A study or series that cannot be delivered is an ``error`` line
    of the report; the others are still retrieved.

    Raises:
        DimseError: the study search itself failed (no association, refused, bad query key).
    """
    from medimg.dicom import load_rules

    rules = load_rules(task.rules)
    modalities = series_modalities(rules)
    cache = SeriesCache(out)
    report = FetchReport(folder=cache.root, studies=find_studies(remote, studies, query, calling_ae=calling_ae))
    cache.root.mkdir(parents=True, exist_ok=True)
    for study in report.studies:
        try:
            keys = {"StudyInstanceUID": study, "SeriesInstanceUID": "", "PatientID": ""} | dict.fromkeys(
                _SERIES_KEYS, ""
            )
            series = find(remote, "SERIES", keys, calling_ae=calling_ae)
        except DimseError as exc:
            report.errors.append(error_line("error", study, "", str(exc)))
            continue
        patient = str(series[0].get("PatientID", "")) if series else ""
        wanted = [s for s in series if modalities is None or str(s.get("Modality", "")) in modalities]
        if not wanted:
            what = "no series" if not series else f"no series of modality {', '.join(sorted(modalities or ()))}"
            kind = "error" if not series else "skipped"
            reason = f"{what} in the study on {remote} (for the {rules.name} rules; not retrieved)"
            report.errors.append(error_line(kind, study, "", reason, patient))
            continue
        for ds in wanted:
            uid = str(ds.SeriesInstanceUID)
            try:
                retrieved = _fetch_series(remote, cache, study, uid, calling_ae=calling_ae, move_port=move_port)
            except DimseError as exc:
                report.errors.append(error_line("error", study, uid, str(exc), patient))
                continue
            (report.retrieved if retrieved else report.cached).append(uid)
    return report


def _fetch_series(
    remote: RemoteAE, cache: SeriesCache, study: str, series: str, *, calling_ae: str, move_port: int | None
) -> bool:
    """Bring one series into the cache; True when retrieved now, False when complete already.

    Raises:
        DimseError: the retrieve failed, or the instances that arrived are not those listed.
    """
    if cache.is_complete(study, series):
        return False
    keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": "", "SOPClassUID": ""}
    instances = find(remote, "IMAGE", keys, calling_ae=calling_ae)
    expected = [str(i.SOPInstanceUID) for i in instances if i.get("SOPInstanceUID")]
    if not expected:
        raise DimseError(f"study {study} series {series}: {remote} lists no instance in it")
    names = {cache.file_name(uid) for uid in expected}
    if not names <= cache.arrived(study, series):
        classes = sorted({str(i.SOPClassUID) for i in instances if i.get("SOPClassUID")})
        result = retrieve_series(
            remote,
            study,
            series,
            cache.incoming,
            sop_classes=classes,
            calling_ae=calling_ae,
            move_port=move_port,
        )
        if result.ignored:
            LOG.warning(
                "study %s series %s: %s sent %d instance(s) of other studies or series; not kept",
                study, series, remote, len(result.ignored),
            )  # fmt: skip
        if result.failures:
            raise DimseError(f"study {study} series {series}: not written: {'; '.join(result.failures)}")
    missing = cache.complete(study, series, expected)
    if missing:
        raise DimseError(
            f"study {study} series {series}: {len(missing)} of {len(expected)} instance(s) listed by {remote} "
            "did not arrive (the rest is kept; rerun to retrieve it)"
        )
    return True


class DimsePacs(DimseDestination):
    """A PACS reached over DIMSE for ``medimg run --from-pacs``: :meth:`fetch` retrieves, and as a
    :class:`medimg.pacs.dimse.DimseDestination` it takes the pushed results (C-STORE)."""

    def __init__(self, remote: RemoteAE, *, calling_ae: str = "MEDIMG", move_port: int | None = None) -> None:
        super().__init__(remote, calling_ae=calling_ae)
        self.move_port = move_port

    def fetch(self, task: Any, out: str | Path, studies: Iterable[str], query: str | None) -> FetchReport:
        """:func:`fetch_studies_dimse` with ``query`` given as ``KEY=VALUE&...`` (C-FIND keys)."""
        from medimg.pacs.dicomweb import parse_query

        keys = parse_query(query) if query else None
        return fetch_studies_dimse(self.remote, task, out, studies=studies, query=keys,
                                   calling_ae=self.calling_ae, move_port=self.move_port)  # fmt: skip


def push_results_dimse(remote: RemoteAE, out: str | Path, *, calling_ae: str = "MEDIMG") -> PushReport:
    """C-STORE each DICOM result of the run in ``out`` not yet recorded for ``remote`` in
    ``OUT/pushed.json`` (destination ``dicom://AE@HOST:PORT``)."""
    return push_results(DimseDestination(remote, calling_ae=calling_ae), out)
