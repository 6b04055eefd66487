"""The demo's PACS step: a local Orthanc (when installed) holding the sample chest X-ray study,
the pneumonia pipeline pulling it over DICOMweb, and its DICOM results pushed back.

It says it is skipping, and why, where Orthanc or its DICOMweb plugin is not installed
(``make demo`` installs both as root on Debian). The server listens on 127.0.0.1 only, with a
random password, and stops at the end of the step (with ``keep``, after Ctrl-C).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from medimg.untrusted import terminal_text

__all__ = ["pacs_step"]


def _first_study(cxr: Path) -> tuple[Path, str]:
    """The first sample radiograph and its StudyInstanceUID."""
    import pydicom

    first = next(p for p in sorted(cxr.rglob("*.dcm")))
    return first, str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def pacs_step(data: Path, out: Path, console: Console, *, keep: bool = False) -> bool:
    """Run the step; False when a check fails (a skip for a missing Orthanc is not a failure)."""
    from medimg.pacs.credentials import Credentials
    from medimg.pacs.dicomweb import DicomWebSource, PacsError
    from medimg.pacs.local_orthanc import LocalOrthanc, orthanc_missing
    from pipelines import get_pipeline
    from pipelines.pacs_runs import fetch_studies, push_results
    from pipelines.runner import default_weights, run_pipeline

    missing = orthanc_missing()
    if missing:
        console.print(f"  [yellow]skipping:[/yellow] {missing}; `make demo` installs it as root on Debian")
        return True
    task, weights = get_pipeline("pneumonia"), default_weights("pneumonia")
    if weights is None:
        console.print("  [red]the demo weights sample_data/weights/pneumonia.pt are missing[/red]")
        return False
    first, study_uid = _first_study(Path(data) / "cxr")
    out = Path(out) / "pacs"
    shutil.rmtree(out / "orthanc", ignore_errors=True)  # a fresh PACS each time (inside the demo's OUT)
    server = LocalOrthanc(out / "orthanc")
    try:
        server.upload([first])
        source = DicomWebSource(
            f"dicomweb+{server.dicomweb}", Credentials("demo", user=server.user, password=server.password)
        )
        fetched = fetch_studies(source, task, out / "run", studies=[study_uid])
        summary = run_pipeline(task, fetched.folder, out / "run", weights=weights, overwrite=False)
        pushed = push_results(source, out / "run")
        results = server.instances_of_modality("SR")
        ok = not fetched.failed and not summary.failed and not pushed.failed and len(results) >= 1
        console.print(
            f"  Orthanc (local, 127.0.0.1) holds study {terminal_text(study_uid)}; pulled over DICOMweb: "
            f"{len(fetched.retrieved) + len(fetched.cached)} series; pneumonia on {len(summary.rows)} image(s); "
            f"pushed {len(pushed.sent)} DICOM result(s) (SR + overlay) back: Orthanc now has {len(results)} SR"
        )
        where = server.study_url(study_uid)
        if keep:
            console.print(f"  see it at {where} (user {server.user}, password {server.password}); Ctrl-C stops it")
            _wait_for_interrupt()
        else:
            console.print(f"  (while it runs, Orthanc shows it at {where}; `medimg demo --keep-pacs` keeps it running)")
        return ok
    except (PacsError, OSError, RuntimeError) as exc:
        console.print(f"  [red]PACS step failed: {terminal_text(exc)}[/red]")
        return False
    finally:
        server.stop()


def _wait_for_interrupt() -> None:
    import time

    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return
