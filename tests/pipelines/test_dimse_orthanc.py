"""DIMSE against a real PACS (Orthanc on loopback): Orthanc C-STOREs a study to ``medimg listen``,
which runs pneumonia after the quiet time and forwards the results; a caller not allowed is
refused; ``--from-pacs`` (C-FIND, C-GET, and C-MOVE when C-GET is refused) gives the results of a
folder run; results are C-STOREd into Orthanc once."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_factory import write_series
from orthanc import PASSWORD, USER, OrthancServer, free_port
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medimg.cli import app
from medimg.pacs.aet import RemoteAE, parse_allowed
from medimg.pacs.listener import StoreListener
from pipelines import get_pipeline
from pipelines.dimse_runs import fetch_studies_dimse, push_results_dimse
from pipelines.listen import StudyRunner
from pipelines.pacs_runs import read_dicom_results
from pipelines.runner import default_weights, run_pipeline

CXR = Path(__file__).resolve().parents[2] / "sample_data" / "cxr"


def _post(server: OrthancServer, path: str, body: bytes) -> Any:
    request = urllib.request.Request(server.url + path, data=body, method="POST")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["SOPInstanceUID"]: row for row in csv.DictReader(fh)}


def _same_results(got: dict[str, dict[str, str]], want: dict[str, dict[str, str]]) -> None:
    assert got and set(got) <= set(want)
    for sop, row in got.items():
        assert float(row["probability"]) == pytest.approx(float(want[sop]["probability"]), abs=1e-6)
        assert (row["predicted"], row["n_boxes"]) == (want[sop]["predicted"], want[sop]["n_boxes"])


@pytest.fixture(scope="module")
def listen_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, listen_port: int):
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc"), modalities={"MEDIMG": ("MEDIMG", "127.0.0.1", listen_port)}
    )
    try:
        server.upload_folder(CXR)
        mr, _ = write_series(tmp_path_factory.mktemp("mr") / "s", n=2, study_uid="2.25.1")  # no series for pneumonia
        server.upload(mr)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    out = tmp_path_factory.mktemp("folder-run")
    run_pipeline(get_pipeline("pneumonia"), CXR, out, weights=default_weights("pneumonia"), write_report=False)
    return _rows(out / "results.csv")


def _remote(server: OrthancServer) -> RemoteAE:
    return RemoteAE(server.aet, "127.0.0.1", server.dicom_port)


def _orthanc_study(server: OrthancServer, index: int = 0) -> tuple[str, str]:
    """(Orthanc ID, StudyInstanceUID) of one CXR study, in a stable order."""
    studies = sorted(server.studies(), key=lambda s: s["MainDicomTags"]["StudyInstanceUID"])
    studies = [s for s in studies if s["MainDicomTags"]["StudyInstanceUID"] != "2.25.1"]
    return studies[index]["ID"], studies[index]["MainDicomTags"]["StudyInstanceUID"]


def test_orthanc_sends_a_study_and_listen_runs_it_after_the_quiet_time(
    tmp_path: Path, pacs: OrthancServer, listen_port: int, folder_run: dict
) -> None:
    orthanc_id, study_uid = _orthanc_study(pacs)
    runner = StudyRunner(get_pipeline("pneumonia"), tmp_path, weights=default_weights("pneumonia"),
                         forward=_remote(pacs), run_options={"write_report": False})  # fmt: skip
    listener = StoreListener(tmp_path / "incoming", port=listen_port, host="127.0.0.1", study_timeout=1.0,
                             allow=[parse_allowed("ORTHANC@127.0.0.1")], on_study=runner, poll=0.05)  # fmt: skip
    with listener:
        _post(pacs, "/modalities/MEDIMG/store", orthanc_id.encode())  # returns once Orthanc has sent it
        deadline = time.monotonic() + 60
        while study_uid not in runner.studies and time.monotonic() < deadline:
            time.sleep(0.1)
    entry = runner.studies[study_uid]
    assert entry["failed"] is False and entry["counts"]["images"] == 1
    got = _rows(runner.run_folder(study_uid) / "results.csv")
    _same_results(got, folder_run)
    assert json.loads((tmp_path / "listen.json").read_text())[study_uid]["run"] == f"runs/{study_uid}"
    listed = [r["SOPInstanceUID"] for r in read_dicom_results(runner.run_folder(study_uid))]
    assert sorted(entry["forwarded"]["sent"]) == sorted(listed) and entry["forwarded"]["failed"] == []
    for sop in listed:  # the run's DICOM results (once the run writes them) are now in Orthanc
        assert _post(pacs, "/tools/lookup", sop.encode()), sop


def test_a_caller_not_allowed_is_refused(tmp_path: Path, pacs: OrthancServer, listen_port: int) -> None:
    orthanc_id, _ = _orthanc_study(pacs, 1)
    listener = StoreListener(tmp_path / "incoming", port=listen_port, host="127.0.0.1", study_timeout=1.0,
                             allow=[parse_allowed("CT01@127.0.0.1")])  # fmt: skip
    with listener, pytest.raises(urllib.error.HTTPError):
        _post(pacs, "/modalities/MEDIMG/store", orthanc_id.encode())
    assert listener.counts["stored"] == 0 and "ORTHANC@127.0.0.1" in listener.refusals[0]
    assert not [p for p in (tmp_path / "incoming").rglob("*") if p.is_file()]


def test_from_pacs_retrieves_and_runs_like_a_folder_run(tmp_path: Path, pacs: OrthancServer, folder_run: dict) -> None:
    task = get_pipeline("pneumonia")
    report = fetch_studies_dimse(_remote(pacs), task, tmp_path, query={"PatientID": "*"})
    assert len(report.studies) == 9 and len(report.retrieved) == 8
    ((skipped,),) = [report.errors]  # the MR study: no CR/DX series, nothing retrieved
    assert skipped["kind"] == "skipped" and skipped["StudyInstanceUID"] == "2.25.1" and "CR, DX" in skipped["reason"]
    assert not (tmp_path / "pacs-cache" / "2.25.1").exists()
    syntax = {str(ds.SOPInstanceUID): ds.file_meta.TransferSyntaxUID for ds in map(pydicom.dcmread, CXR.rglob("*.dcm"))}
    cached = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "pacs-cache").rglob("*.dcm")]
    assert len(cached) == 8 and all(ds.file_meta.TransferSyntaxUID == syntax[ds.SOPInstanceUID] for ds in cached)
    assert "1.2.840.10008.1.2.4.50" in {ds.file_meta.TransferSyntaxUID for ds in cached}  # JPEG not transcoded
    run_pipeline(task, tmp_path / "pacs-cache", tmp_path, weights=default_weights("pneumonia"), write_report=False)
    got = _rows(tmp_path / "results.csv")
    assert set(got) == set(folder_run)
    _same_results(got, folder_run)
    again = fetch_studies_dimse(_remote(pacs), task, tmp_path, studies=report.studies[:2])
    assert again.cached == report.retrieved[:2] and again.retrieved == []


def test_c_move_when_c_get_is_refused(tmp_path: Path) -> None:
    port = free_port()
    medimg = {"AET": "MEDIMG", "Host": "127.0.0.1", "Port": port, "AllowGet": False}
    with OrthancServer(tmp_path / "orthanc", config={"DicomModalities": {"MEDIMG": medimg}}) as server:
        server.upload([next(CXR.rglob("*.dcm"))])
        (_, study_uid), task = _orthanc_study(server), get_pipeline("pneumonia")
        refused = fetch_studies_dimse(_remote(server), task, tmp_path / "a", studies=[study_uid])
        moved = fetch_studies_dimse(_remote(server), task, tmp_path / "b", studies=[study_uid], move_port=port)
    ((line,),) = [refused.errors]
    assert "C-GET" in line["reason"] and not refused.retrieved
    assert len(moved.retrieved) == 1 and not moved.errors
    (copy,) = (tmp_path / "b" / "pacs-cache").rglob("*.dcm")
    assert pydicom.dcmread(copy).StudyInstanceUID == study_uid


def _fake_run(out: Path) -> list[str]:
    """A run folder whose run.json lists two DICOM results (copies of a CXR with new UIDs)."""
    entries, sops = [], []
    for index, source in enumerate(sorted(CXR.rglob("*.dcm"))[:2]):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        rel = f"dicom/{index}/sc-{ds.SOPInstanceUID}.dcm"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out / rel)
        keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        entries.append({"path": rel, "kind": "sc", **{k: str(ds[k].value) for k in keys}})
        sops.append(str(ds.SOPInstanceUID))
    (out / "run.json").write_text(json.dumps({"dicom_results": entries}))
    return sops


def test_push_stores_the_results_in_orthanc_once(tmp_path: Path, pacs: OrthancServer) -> None:
    sops = _fake_run(tmp_path)
    first = push_results_dimse(_remote(pacs), tmp_path)
    assert sorted(first.sent) == sorted(sops) and not first.failed
    for sop in sops:
        assert _post(pacs, "/tools/lookup", sop.encode())[0]["Type"] == "Instance"
    pushed = json.loads((tmp_path / "pushed.json").read_text())
    assert pushed == dict.fromkeys(sops, f"dicom://ORTHANC@127.0.0.1:{pacs.dicom_port}")
    second = push_results_dimse(_remote(pacs), tmp_path)
    assert second.sent == [] and sorted(second.earlier) == sorted(sops)
    shutil.copy(tmp_path / "pushed.json", tmp_path / "pushed.before")
    nowhere = push_results_dimse(RemoteAE("ORTHANC", "127.0.0.1", free_port()), tmp_path)
    assert nowhere.sent == [] and len(nowhere.failed) == 2 and "no association" in nowhere.failed[0][1]
    assert (tmp_path / "pushed.json").read_text() == (tmp_path / "pushed.before").read_text()


def test_run_from_pacs_command_runs_and_pushes(tmp_path: Path, pacs: OrthancServer, folder_run: dict) -> None:
    studies = [_orthanc_study(pacs, i)[1] for i in (2, 3)]
    source = f"ORTHANC@127.0.0.1:{pacs.dicom_port}"
    args = ["run", "pneumonia", "--from-pacs", source, "-o", str(tmp_path), "-q", "--push"]
    result = CliRunner().invoke(app, [*args, "--study", studies[0], "--study", studies[1]])
    assert result.exit_code == 0, result.output
    assert "2 stud(ies) from dicom://ORTHANC@127.0.0.1" in result.output and "pushed " in result.output
    got = _rows(tmp_path / "results.csv")
    assert {r["StudyInstanceUID"] for r in got.values()} == set(studies)
    _same_results(got, folder_run)
    results = read_dicom_results(tmp_path)
    assert results and set(json.loads((tmp_path / "pushed.json").read_text())) == {r["SOPInstanceUID"] for r in results}
    for entry in results:
        assert _post(pacs, "/tools/lookup", entry["SOPInstanceUID"].encode())[0]["Type"] == "Instance"
    for bad, says in [
        (["some/folder"], "takes no SOURCE"),
        ([], "needs --study"),
        (["--study", "1.2", "--netrc", "x"], "only for a DICOMweb source"),
        (["--study", "1.2", "--calling-ae", "BAD\\AE"], "not allowed"),
    ]:
        result = CliRunner().invoke(app, ["run", "pneumonia", "--from-pacs", source, "-o", str(tmp_path / "x"), *bad])
        assert result.exit_code == 2 and says in result.output, result.output
    result = CliRunner().invoke(app, ["run", "pneumonia", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "or --from-pacs" in result.output
    nobody = f"ORTHANC@127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app, ["run", "pneumonia", "--from-pacs", nobody, "-o", str(tmp_path / "y"), "--query", "PatientID=*"]
    )
    assert result.exit_code == 2 and f"C-FIND with {nobody}: no association" in result.output, result.output
