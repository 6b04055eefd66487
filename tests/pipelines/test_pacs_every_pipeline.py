"""Every pipeline from a real PACS and back: brain tumour over DICOMweb, density over DIMSE
(C-FIND + C-GET), each with ``--push``; the result objects are then queried from Orthanc and
their values compared with the run's CSVs. (Pneumonia over both routes: test_dicomweb_orthanc.py,
test_dimse_orthanc.py.)"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pydicom
import pytest
from checkpoints import untrained_brats_checkpoint
from orthanc import PASSWORD, USER, OrthancServer
from typer.testing import CliRunner

from medimg.cli import app
from medimg.dicom.results import read_report

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
VOLUME = ("SCT", "118565006")
COMPOSITION = ("SCT", "129715009")
CODES = {"129716005": "A", "129717001": "B", "129718006": "C", "129719003": "D"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _reports_in_orthanc(server: OrthancServer, tmp_path: Path) -> list[tuple]:
    """Each SR Orthanc holds, read back with medimg's reader from the bytes Orthanc serves."""
    out = []
    for n, orthanc_id in enumerate(server.instances_of_modality("SR")):
        path = tmp_path / f"from-orthanc-{n}.dcm"
        path.write_bytes(server.instance_file(orthanc_id))
        out.append(read_report(path))
    return out


@pytest.fixture
def pacs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("MEDIMG_PACS_TOKEN", "MEDIMG_PACS_USER", "MEDIMG_PACS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEDIMG_PACS_USER", USER)
    monkeypatch.setenv("MEDIMG_PACS_PASSWORD", PASSWORD)
    # A PACS answers only AE titles it knows: medimg's (the default --calling-ae) is registered.
    server = OrthancServer(tmp_path / "orthanc", modalities={"MEDIMG": ("MEDIMG", "127.0.0.1", 11112)})
    try:
        yield server
    finally:
        server.stop()


def test_brain_tumour_over_dicomweb_puts_the_seg_and_the_volumes_back(pacs: OrthancServer, tmp_path: Path) -> None:
    pacs.upload_folder(SAMPLE / "brain" / "dicom")
    (study,) = pacs.studies()
    uid = study["MainDicomTags"]["StudyInstanceUID"]
    weights = untrained_brats_checkpoint(tmp_path / "brats.pt", tumour_bias=3.0, roi_size=(32, 32, 32))
    out = tmp_path / "out"
    args = ["run", "brats", f"dicomweb+{pacs.dicomweb}", "--study", uid, "-o", str(out), "--weights", str(weights)]
    result = runner.invoke(app, [*args, "--push", "-q"])
    assert result.exit_code == 0, result.output
    (row,) = _rows(out / "results.csv")
    assert len(pacs.instances_of_modality("SEG")) == 1
    ((sr, groups, _),) = _reports_in_orthanc(pacs, tmp_path)
    assert sr.StudyInstanceUID == uid == row["StudyInstanceUID"]
    volumes = [g.measurements[VOLUME][0] for g in groups]
    assert max(volumes) > 0  # the biased net labels tumour, so the comparison below has something to compare
    assert volumes == pytest.approx([float(row[f"{r}_ml"]) for r in ("WT", "TC", "ET")], rel=1e-12, abs=1e-9)
    seg = pydicom.dcmread(io.BytesIO(pacs.instance_file(pacs.instances_of_modality("SEG")[0])))
    assert all(g.source_images == [seg.SOPInstanceUID] for g in groups)  # the SR points at the SEG Orthanc holds


def test_density_over_dimse_puts_one_report_per_exam_back(pacs: OrthancServer, tmp_path: Path) -> None:
    site = SAMPLE / "mammo" / "site_a"
    pacs.upload_folder(site)
    uids = [s["MainDicomTags"]["StudyInstanceUID"] for s in pacs.studies()][:2]
    out = tmp_path / "out"
    source = f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"
    studies = [a for uid in uids for a in ("--study", uid)]
    result = runner.invoke(app, ["run", "density", "--from-pacs", source, *studies, "-o", str(out), "--push", "-q"])
    assert result.exit_code == 0, result.output
    exams = {e["StudyInstanceUID"]: e for e in _rows(out / "exams.csv")}
    assert set(exams) == set(uids)
    reports = _reports_in_orthanc(pacs, tmp_path)
    assert len(reports) == len(uids)
    for sr, groups, notes in reports:
        exam = exams[sr.StudyInstanceUID]
        by_label = {g.label: g for g in groups}
        assert CODES[by_label["exam"].evaluations[COMPOSITION][1]] == exam["exam_density"]
        assert any("NOT FOR CLINICAL USE" in note for note in notes)  # the demo weights
