"""A hostile or broken PACS: a series whose UID is a path, and a search answer that is not a list of
DICOM JSON objects. Each is an error line (or a clear exit 2), never a traceback, and the other
studies still run."""

from __future__ import annotations

import csv
import http.server
import json
import threading
from pathlib import Path

import pydicom
import pytest
from orthanc import PASSWORD, USER, OrthancServer, free_port
from typer.testing import CliRunner

from medimg.cli import app

runner = CliRunner()
CXR = Path(__file__).resolve().parents[2] / "sample_data" / "cxr"


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDIMG_PACS_TOKEN", raising=False)
    monkeypatch.setenv("MEDIMG_PACS_USER", USER)
    monkeypatch.setenv("MEDIMG_PACS_PASSWORD", PASSWORD)


def test_a_series_uid_that_is_a_path_is_an_error_line_and_the_other_study_runs(tmp_path: Path) -> None:
    good, bad = sorted(CXR.rglob("*.dcm"))[:2]
    ds = pydicom.dcmread(bad)
    ds.StudyInstanceUID, ds.PatientID = "1.2.3.777", "HOSTILE"
    ds.SeriesInstanceUID = "../../../../tmp/ESCAPE_SERIES"
    ds.save_as(tmp_path / "hostile.dcm")
    good_uid = str(pydicom.dcmread(good, stop_before_pixels=True).StudyInstanceUID)
    server = OrthancServer(tmp_path / "orthanc")
    try:
        server.upload([good, tmp_path / "hostile.dcm"])
        out = tmp_path / "out"
        studies = ["--study", "1.2.3.777", "--study", good_uid]
        result = runner.invoke(app, ["run", "pneumonia", f"dicomweb+{server.dicomweb}", *studies, "-o", str(out), "-q"])
    finally:
        server.stop()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    with open(out / "results.csv", newline="") as fh:
        assert [r["StudyInstanceUID"] for r in csv.DictReader(fh)] == [good_uid]
    with open(out / "errors.csv", newline="") as fh:
        errors = [e for e in csv.DictReader(fh) if e["kind"] == "error"]
    assert len(errors) == 1 and "1.2.3.777" in errors[0]["reason"] and "cannot be retrieved" in errors[0]["reason"]
    assert not list(tmp_path.rglob("ESCAPE_SERIES"))
    # the fetch error counts like the run's own: in run.json and in the summary line
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["errors"] == 1 and "1 error(s)" in result.output


class _Garbage(http.server.BaseHTTPRequestHandler):
    body = b'[{"0020000D": {"vr": "UI", "Value": ["1.2"]}}, 5, "x", {"0020000D": 1}]'

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("body", [b'[5, "x"]', b'{"not": "a list"}', b"<html>no</html>"])
def test_a_search_answer_that_is_not_dicom_json_exits_2_without_a_traceback(tmp_path: Path, body: bytes) -> None:
    handler = type("Handler", (_Garbage,), {"body": body})
    server = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"dicomweb+http://127.0.0.1:{server.server_port}/dicom-web"
        result = runner.invoke(app, ["run", "pneumonia", url, "--query", "PatientID=x", "-o", str(tmp_path / "o")])
    finally:
        server.shutdown()
    assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def test_a_c_get_that_also_sends_another_study_keeps_only_the_study_asked_for(tmp_path: Path) -> None:
    """Orthanc matches a series-level C-GET on the series UID alone: another patient's study that
    shares it arrives too, and must not be kept."""
    first, second = sorted(CXR.rglob("*.dcm"))[:2]
    for n, (path, study, patient) in enumerate(((first, "1.2.3.777", "ASKED"), (second, "1.2.3.666", "OTHER"))):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.PatientID, ds.SeriesInstanceUID = study, patient, "1.2.3.99"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.99.{n}"
        ds.save_as(tmp_path / f"{patient}.dcm")
    server = OrthancServer(tmp_path / "orthanc", modalities={"MEDIMG": ("MEDIMG", "127.0.0.1", 11112)})
    try:
        server.upload([tmp_path / "ASKED.dcm", tmp_path / "OTHER.dcm"])
        out = tmp_path / "out"
        source = f"{server.aet}@127.0.0.1:{server.dicom_port}"
        result = runner.invoke(app, ["run", "pneumonia", "--from-pacs", source, "--study", "1.2.3.777", "-o", str(out)])
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    kept = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.rglob("*.dcm") if "pacs-" in str(p)]
    assert kept and {ds.PatientID for ds in kept} == {"ASKED"}
