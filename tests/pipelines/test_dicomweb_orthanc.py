"""``medimg run PIPELINE dicomweb+http://...`` against a real Orthanc (tests/helpers/orthanc.py): the
pneumonia run over DICOMweb (``--study``, ``--query``) gives the results of a folder run of the same
files, ``--push`` stores the DICOM results back once, and the faults (a wrong password, a server
killed in the middle of a retrieve, a study changed between the metadata and the retrieve) are
reported, with a rerun completing from the cache."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from checkpoints import untrained_checkpoint
from orthanc import PASSWORD, USER, OrthancServer
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medimg.cli import app
from medimg.pacs.credentials import Credentials
from medimg.pacs.dicomweb import DicomWebSource

runner = CliRunner()
CXR = Path(__file__).resolve().parents[2] / "sample_data" / "cxr"


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEDIMG_PACS_TOKEN", "MEDIMG_PACS_USER", "MEDIMG_PACS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEDIMG_PACS_USER", USER)
    monkeypatch.setenv("MEDIMG_PACS_PASSWORD", PASSWORD)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("w") / "w.pt", "pneumonia", size=(64, 64))


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc holding sample_data/cxr, for the tests that do not change what it holds."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    try:
        server.upload_folder(CXR)
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_pacs(tmp_path: Path) -> Iterator[OrthancServer]:
    """An Orthanc of the test's own, holding sample_data/cxr (for the tests that change or stop it)."""
    server = OrthancServer(tmp_path / "orthanc")
    try:
        server.upload_folder(CXR)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def folder_rows(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """The rows of a folder run over sample_data/cxr, by SOPInstanceUID."""
    out = tmp_path_factory.mktemp("folder-run")
    result = runner.invoke(app, ["run", "pneumonia", str(CXR), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 0, result.output
    return rows_of(out)


def rows_of(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return {r["SOPInstanceUID"]: r for r in csv.DictReader(fh)}


def errors_of(out: Path) -> list[dict[str, str]]:
    with open(out / "errors.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def study_of_modality(modality: str) -> list[str]:
    found = set()
    for path in CXR.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == modality:
            found.add(str(ds.StudyInstanceUID))
    return sorted(found)


def run_pacs(server: OrthancServer, out: Path, weights: Path, *args: str) -> Any:
    return runner.invoke(
        app, ["run", "pneumonia", "dicomweb+" + server.dicomweb, "-o", str(out), "--weights", str(weights), *args]
    )


def same_results(rows: dict[str, dict[str, str]], expected: dict[str, dict[str, str]]) -> None:
    assert rows, "no results"
    for sop, row in rows.items():
        assert row["probability"] == expected[sop]["probability"], sop
        assert row["StudyInstanceUID"] == expected[sop]["StudyInstanceUID"]


def test_study_and_query_runs_equal_a_folder_run(
    pacs: OrthancServer, weights: Path, folder_rows: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    cr, dx = study_of_modality("CR"), study_of_modality("DX")
    assert cr and dx
    source = DicomWebSource("dicomweb+" + pacs.dicomweb, Credentials("test", USER, PASSWORD))
    assert sorted(source.search_studies("PatientID=*")) == sorted(cr + dx)  # a wildcard reaches Orthanc as *
    assert sorted(source.search_studies("ModalitiesInStudy=DX")) == dx
    by_query = run_pacs(pacs, tmp_path / "q", weights, "--query", "ModalitiesInStudy=CR", "-q")
    assert by_query.exit_code == 0, by_query.output
    rows = rows_of(tmp_path / "q")
    assert {r["StudyInstanceUID"] for r in rows.values()} == set(cr)
    same_results(rows, folder_rows)
    studies = [arg for uid in dx for arg in ("--study", uid)]
    by_study = run_pacs(pacs, tmp_path / "s", weights, *studies, "-q")
    assert by_study.exit_code == 0, by_study.output
    rows = rows_of(tmp_path / "s")
    assert {r["StudyInstanceUID"] for r in rows.values()} == set(dx)
    same_results(rows, folder_rows)
    again = run_pacs(pacs, tmp_path / "s", weights, *studies, "-q")
    assert again.exit_code == 0, again.output
    assert f"0 series retrieved, {len(dx)} already in" in again.output
    assert rows_of(tmp_path / "s") == rows


def test_only_the_selected_series_are_retrieved(own_pacs: OrthancServer, weights: Path, tmp_path: Path) -> None:
    study = study_of_modality("CR")[0]
    source = next(p for p in CXR.rglob("*.dcm") if pydicom.dcmread(p).StudyInstanceUID == study)
    lateral = pydicom.dcmread(source)  # a lateral view in a series of its own: the rules skip it
    lateral.SOPInstanceUID = lateral.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    lateral.SeriesInstanceUID, lateral.ViewPosition, lateral.SeriesDescription = generate_uid(), "LL", "lateral"
    lateral.save_as(tmp_path / "lateral.dcm", enforce_file_format=True)
    own_pacs.upload([tmp_path / "lateral.dcm"])
    result = run_pacs(own_pacs, tmp_path / "o", weights, "--study", study, "-q")
    assert result.exit_code == 0, result.output
    cached = sorted((tmp_path / "o" / "pacs-cache").rglob("*.dcm"))
    assert [(p.parent.parent.name, p.stem) for p in cached] == [(study, str(pydicom.dcmread(source).SOPInstanceUID))]
    assert not list((tmp_path / "o" / "pacs-incoming").rglob("*.dcm"))


def test_a_wrong_password_exits_2_naming_the_host(
    pacs: OrthancServer, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIMG_PACS_PASSWORD", "not-the-password")
    result = run_pacs(pacs, tmp_path / "o", weights, "--query", "ModalitiesInStudy=CR", "-q")
    assert result.exit_code == 2, result.output
    assert "the PACS refused the credentials for 127.0.0.1 (HTTP 401)" in " ".join(result.output.split())
    assert not (tmp_path / "o" / "results.csv").exists()


def test_pacs_options_are_refused_for_a_folder(weights: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "pneumonia", str(CXR), "-o", str(tmp_path), "--study", "1.2.3", "--push"])
    assert result.exit_code == 2
    assert "--study, --push: only for a PACS source" in result.output


def test_a_url_with_a_password_is_refused(weights: Path, tmp_path: Path) -> None:
    url = f"dicomweb+http://{USER}:{PASSWORD}@127.0.0.1:1/dicom-web"
    result = runner.invoke(app, ["run", "pneumonia", url, "-o", str(tmp_path), "--study", "1.2.3", "-q"])
    assert result.exit_code == 2
    assert "the URL holds credentials" in result.output and PASSWORD not in result.output


def result_object(out: Path, source: Path) -> dict[str, str]:
    """A DICOM object of our own (a copy of a retrieved image with new UIDs, Modality OT) written
    under OUT/dicom/ as the run's results are, and its dicom_results entry."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "OT"
    path = out / "dicom" / ds.StudyInstanceUID / f"sc-{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    return {"path": str(path.relative_to(out)), "kind": "sc", **{k: str(ds[k].value) for k in keys}}


def test_push_stores_the_results_once_and_lists_failures(
    own_pacs: OrthancServer, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines import pacs_runs

    out, study = tmp_path / "o", study_of_modality("CR")[0]
    first = run_pacs(own_pacs, out, weights, "--study", study, "-q")
    assert first.exit_code == 0, first.output
    listed = pacs_runs.read_dicom_results(out)
    if not listed:  # the run wrote no DICOM results (--no-dicom-results): push objects of our own
        listed = [result_object(out, next((out / "pacs-cache").rglob("*.dcm"))) for _ in range(2)]
    # the run's results and one listed file that is not there
    entries = [*listed, {**listed[0], "path": "dicom/missing.dcm", "SOPInstanceUID": "1.2.3.4"}]
    monkeypatch.setattr(pacs_runs, "read_dicom_results", lambda _out: list(entries))
    before = len(own_pacs.get("/instances"))
    pushed = run_pacs(own_pacs, out, weights, "--study", study, "--push", "-q")
    assert pushed.exit_code == 1, pushed.output
    assert f"pushed {len(listed)} DICOM result(s)" in pushed.output and "1 failed" in pushed.output
    assert "not pushed: dicom/missing.dcm" in pushed.output
    assert len(own_pacs.get("/instances")) == before + len(listed)
    if any(e["kind"] == "sr" for e in listed):
        assert own_pacs.instances_of_modality("SR")
    record = json.loads((out / "pushed.json").read_text())
    assert set(record) == {e["SOPInstanceUID"] for e in listed}
    assert set(record.values()) == {"dicomweb+" + own_pacs.dicomweb}
    entries = listed
    again = run_pacs(own_pacs, out, weights, "--study", study, "--push", "-q")
    assert again.exit_code == 0, again.output
    assert f"pushed 0 DICOM result(s) to dicomweb+{own_pacs.dicomweb} ({len(listed)} sent before" in " ".join(
        again.output.split()
    )
    assert len(own_pacs.get("/instances")) == before + len(listed)


def test_a_server_killed_mid_retrieve_then_a_rerun_completes_from_the_cache(
    own_pacs: OrthancServer,
    weights: Path,
    folder_rows: dict[str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    studies = study_of_modality("CR")
    args = [a for uid in studies for a in ("--study", uid)]
    original, calls = DicomWebSource.iter_series, []

    def kill_at_the_second_series(self: DicomWebSource, study: str, series: str) -> Iterator[Any]:
        calls.append(series)
        if len(calls) == 2:
            own_pacs.kill()
        return original(self, study, series)

    monkeypatch.setattr(DicomWebSource, "iter_series", kill_at_the_second_series)
    out = tmp_path / "o"
    broken = run_pacs(own_pacs, out, weights, *args, "-q")
    assert broken.exit_code == 1, broken.output
    text = " ".join(broken.output.split())
    assert f"study {studies[1]} series {calls[1]}: retrieving: 127.0.0.1 is unreachable" in text
    assert [p.name for p in (out / "pacs-cache").iterdir()] == [studies[0]]  # nothing else marked complete
    assert {r["StudyInstanceUID"] for r in rows_of(out).values()} == {studies[0]}
    failed = {e["StudyInstanceUID"] for e in errors_of(out) if e["kind"] == "error"}
    assert failed == set(studies[1:])
    monkeypatch.setattr(DicomWebSource, "iter_series", original)
    with OrthancServer(tmp_path / "orthanc") as restarted:
        again = run_pacs(restarted, out, weights, *args, "-q")
    assert again.exit_code == 0, again.output
    assert f"{len(studies) - 1} series retrieved, 1 already in" in again.output
    rows = rows_of(out)
    assert {r["StudyInstanceUID"] for r in rows.values()} == set(studies)
    same_results(rows, folder_rows)


@pytest.mark.parametrize("change", ["removed", "added"])
def test_a_study_changed_between_metadata_and_retrieve_is_reported(
    change: str, own_pacs: OrthancServer, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = study_of_modality("DX")[0]
    source = next(p for p in CXR.rglob("*.dcm") if pydicom.dcmread(p).StudyInstanceUID == study)
    twin = pydicom.dcmread(source)  # a second image in the same series
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    twin.save_as(tmp_path / "twin.dcm", enforce_file_format=True)
    twin_id = own_pacs.upload([tmp_path / "twin.dcm"])[0] if change == "removed" else ""
    original = DicomWebSource.iter_series

    def change_first(self: DicomWebSource, study_uid: str, series: str) -> Iterator[Any]:
        # after the metadata listed the series' instances
        own_pacs.delete(f"/instances/{twin_id}") if twin_id else own_pacs.upload([tmp_path / "twin.dcm"])
        return original(self, study_uid, series)

    monkeypatch.setattr(DicomWebSource, "iter_series", change_first)
    out = tmp_path / "o"
    changed = run_pacs(own_pacs, out, weights, "--study", study, "-q")
    assert changed.exit_code == 1, changed.output
    text = " ".join(changed.output.split())
    assert f"study {study} series {twin.SeriesInstanceUID} changed on the server" in text
    removed, added = "2 instance(s) listed, 1 did not arrive", "1 instance(s) listed, 0 did not arrive, 1 arrived"
    expected = removed if twin_id else added
    assert expected in text
    assert not (out / "pacs-cache" / study).exists()
    assert rows_of(out) == {}
    monkeypatch.setattr(DicomWebSource, "iter_series", original)
    again = run_pacs(own_pacs, out, weights, "--study", study, "-q")
    assert again.exit_code == 0, again.output
    assert {r["StudyInstanceUID"] for r in rows_of(out).values()} == {study}
    assert len(list((out / "pacs-cache" / study).rglob("*.dcm"))) == (1 if twin_id else 2)


def test_density_over_dicomweb_equals_a_folder_run(tmp_path: Path) -> None:
    """The four-view mammography exams (series-level choice of four images per study) the same way."""
    mammo = CXR.parent / "mammo" / "site_c" / "images"
    weights = untrained_checkpoint(tmp_path / "w.pt", "density", size=(64, 64))
    folder = runner.invoke(app, ["run", "density", str(mammo), "-o", str(tmp_path / "f"), "--weights", str(weights)])
    assert folder.exit_code == 0, folder.output
    with OrthancServer(tmp_path / "orthanc") as server:
        server.upload_folder(mammo)
        url = "dicomweb+" + server.dicomweb
        args = ["--query", "ModalitiesInStudy=MG", "--weights", str(weights), "-q"]
        result = runner.invoke(app, ["run", "density", url, "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 0, result.output
    expected, rows = rows_of(tmp_path / "f"), rows_of(tmp_path / "o")
    assert len(rows) == len(expected) == 8  # two exams of four views
    for sop, row in rows.items():
        columns = [c for c in row if c not in ("source_file", "overlay", "image")]
        assert {c: row[c] for c in columns} == {c: expected[sop][c] for c in columns}, sop


class TlsProxy:
    """HTTPS in front of a plain-HTTP server on 127.0.0.1 (Debian's Orthanc 1.10 crashes when it
    serves TLS itself): each connection is decrypted and its bytes pumped both ways."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()  # the client did not trust us
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pump, args=(upstream, secure), daemon=True).start()
        self._pump(secure, upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()

    def close(self) -> None:
        self.listener.close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_is_verified_and_a_ca_bundle_makes_it_trusted(pacs: OrthancServer, weights: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    proxy = TlsProxy(pacs.http_port, cert, key)
    try:
        url = f"dicomweb+https://127.0.0.1:{proxy.port}/dicom-web"
        study = study_of_modality("CR")[0]
        untrusted = runner.invoke(app, ["run", "pneumonia", url, "-o", str(tmp_path / "a"), "--study", study])
        assert untrusted.exit_code == 2, untrusted.output
        assert f"study {study}: reading its metadata: TLS verification failed for 127.0.0.1" in " ".join(
            untrusted.output.split()
        )
        assert not (tmp_path / "a" / "pacs-cache" / study).exists()
        args = ["--study", study, "--ca-bundle", str(cert), "--weights", str(weights), "-q"]
        trusted = runner.invoke(app, ["run", "pneumonia", url, "-o", str(tmp_path / "b"), *args])
    finally:
        proxy.close()
    assert trusted.exit_code == 0, trusted.output
    assert {r["StudyInstanceUID"] for r in rows_of(tmp_path / "b").values()} == {study}


def test_the_cache_completes_a_series_only_with_exactly_the_listed_instances(tmp_path: Path) -> None:
    from medimg.pacs.cache import SeriesCache

    cache, source = SeriesCache(tmp_path), next(CXR.rglob("*.dcm"))
    study, series = "1.2.3", "../4"  # an unsafe UID stays inside OUT
    uids = []
    for _ in range(2):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        cache.write(study, series, ds)
        uids.append(str(ds.SOPInstanceUID))
    assert cache.complete(study, series, [*uids, "1.2.3.9"]) == ["1.2.3.9.dcm"]  # one still missing
    assert not cache.is_complete(study, series)
    assert cache.complete(study, series, uids[:1]) == []  # the other is no longer listed: dropped
    folder = cache.complete_folder(study, series)
    assert cache.is_complete(study, series) and folder.parent.parent == tmp_path / "pacs-cache"
    assert [p.name for p in folder.iterdir()] == [f"{uids[0]}.dcm"]
    assert not (tmp_path / "pacs-incoming" / study).exists()
