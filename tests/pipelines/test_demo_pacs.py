"""The demo's PACS step: Orthanc holds the sample study, pneumonia pulls it over DICOMweb and
pushes its SR back; without Orthanc the step says it is skipping and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from orthanc import orthanc_or_skip
from rich.console import Console

import medimg.pacs.local_orthanc as local_orthanc
from pipelines.demo_pacs import pacs_step

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


def test_the_step_pulls_runs_and_pushes_back(tmp_path: Path) -> None:
    orthanc_or_skip()
    console = Console(record=True, width=400)
    assert pacs_step(SAMPLE, tmp_path, console) is True
    text = console.export_text()
    assert "pulled over DICOMweb: 1 series" in text and "Orthanc now has 1 SR" in text
    assert (tmp_path / "pacs" / "run" / "pushed.json").is_file()


def test_without_orthanc_the_step_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_orthanc, "orthanc_missing", lambda: "Orthanc is not installed (test)")
    console = Console(record=True, width=400)
    assert pacs_step(SAMPLE, tmp_path, console) is True
    assert "skipping: Orthanc is not installed (test)" in console.export_text()
    assert not (tmp_path / "pacs").exists()
