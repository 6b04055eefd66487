"""``medimg listen``: receive studies from a PACS or modality (C-STORE), run a pipeline on each one
once it is quiet, and forward the results (C-STORE).

Layout of the output folder OUT:

- ``incoming/<study>/<series>/<SOP>.dcm``: what was received (kept: the run's input);
- ``runs/<study>/``: one complete run per study (``results.csv``, ``run.json``, ``report.html``,
  ``studies/``, ``dicom/``, ``pushed.json``), made by :func:`pipelines.runner.run_pipeline` on that
  study's ``incoming`` folder. When more instances of a study arrive after its run, the study is
  run again from scratch (``overwrite``) over everything received;
- ``listen.json``: one entry per study handed on: its run folder, counts, errors and what was
  forwarded (rewritten after each study).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medimg.pacs.aet import RemoteAE
from medimg.safepath import inside, safe_name
from medimg.writers import write_json
from pipelines.base import Pipeline

__all__ = ["RUNS_FOLDER", "StudyRunner"]

LOG = logging.getLogger("medimg.listen")
RUNS_FOLDER, INCOMING_FOLDER, LOG_FILE = "runs", "incoming", "listen.json"


class StudyRunner:
    """``on_study`` for :class:`medimg.pacs.listener.StoreListener`: runs ``task`` on one received
    study into ``OUT/runs/<study>`` and C-STOREs its DICOM results to ``forward`` (when given)."""

    def __init__(
        self,
        task: Pipeline,
        out: str | Path,
        *,
        weights: str | Path,
        forward: RemoteAE | None = None,
        calling_ae: str = "MEDIMG",
        run_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.task, self.out, self.weights = task, Path(out), weights
        self.forward, self.calling_ae = forward, calling_ae
        self.run_options = dict(run_options or {})
        #: StudyInstanceUID -> what happened to it (also written to ``OUT/listen.json``).
        self.studies: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def run_folder(self, study_uid: str) -> Path:
        """``OUT/runs/<study>``."""
        return inside(self.out, self.out / RUNS_FOLDER / safe_name(study_uid))

    def __call__(self, study_uid: str, folder: Path) -> None:
        from pipelines.runner import run_pipeline

        target = self.run_folder(study_uid)
        again = (target / "run.json").is_file()
        started = time.monotonic()
        entry: dict[str, Any] = {"run": str(target.relative_to(self.out)), "again": again}
        try:
            summary = run_pipeline(self.task, folder, target, weights=self.weights, overwrite=again, **self.run_options)
            entry.update(counts=summary.counts, errors=len(summary.errors), failed=summary.failed)
            LOG.info("study %s: %s image(s), %s error line(s) -> %s", study_uid,
                     summary.counts.get("images", 0), len(summary.errors), target)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the listener keeps listening
            LOG.error("study %s: the run failed: %s", study_uid, exc)
            entry.update(failed=True, error=str(exc))
        else:
            if self.forward is not None:
                entry["forwarded"] = self._forward(study_uid, target)
        entry["seconds"] = round(time.monotonic() - started, 3)
        self._record(study_uid, entry)

    def _forward(self, study_uid: str, target: Path) -> dict[str, Any]:
        from pipelines.dimse_runs import push_results_dimse

        assert self.forward is not None
        report = push_results_dimse(self.forward, target, calling_ae=self.calling_ae)
        for path, reason in report.failed:
            LOG.error("study %s: forwarding %s to %s failed: %s", study_uid, path, self.forward, reason)
        LOG.info("study %s: %d result(s) forwarded to %s", study_uid, len(report.sent), self.forward)
        return {"to": str(self.forward), "sent": report.sent, "earlier": report.earlier, "failed": report.failed}

    def _record(self, study_uid: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self.studies[study_uid] = entry
            write_json(self.out / LOG_FILE, self.studies)
