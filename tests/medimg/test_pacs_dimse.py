"""DIMSE without a PACS: AE@HOST[:PORT] parsing, and ``medimg listen``'s storage SCP driven by
pynetdicom as the sending modality (allow list, file layout, quiet-study hand-on, clean stop)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import write_image, write_series
from typer.testing import CliRunner

from medimg.cli import app
from medimg.pacs.aet import AllowedPeer, RemoteAE, parse_allowed, parse_remote
from medimg.pacs.dimse import DimseError, echo, instance_path, store_files
from medimg.pacs.listener import StoreListener

runner = CliRunner()


def test_parse_remote_and_allowed() -> None:
    assert parse_remote("ORTHANC@pacs.example.org:4242") == RemoteAE("ORTHANC", "pacs.example.org", 4242)
    assert parse_remote("A@B@[::1]:104") == RemoteAE("A@B", "::1", 104)
    assert parse_allowed("CT01@10.0.0.5") == AllowedPeer("CT01", "10.0.0.5")
    assert parse_allowed("CT01@*") == AllowedPeer("CT01", "*")
    for bad, says in [
        ("ORTHANC@host", "port"),
        ("ORTHANC@host:0", "between 1 and 65535"),
        ("host:104", "not AE@HOST:PORT"),
        ("@host:104", "empty"),
        ("A_VERY_LONG_AE_TITLE_X@h:1", "longer than 16"),
        ("BAD\\AE@h:1", "not allowed"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_remote(bad)
    with pytest.raises(ValueError, match="without a port"):
        parse_allowed("CT01@10.0.0.5:104")


def test_series_modalities_of_the_rules() -> None:
    from medimg.dicom import load_rules
    from pipelines.dimse_runs import series_modalities

    assert series_modalities(load_rules("chest_xray")) == {"CR", "DX"}
    rules = load_rules("chest_xray")
    unnamed = dataclasses.replace(rules.selections[0], groups=({"SeriesDescription": ["x"]},))
    free = dataclasses.replace(rules, selections=(*rules.selections, unnamed))
    assert series_modalities(free) is None  # a selection that does not name modalities: every series


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    paths, _ = write_series(tmp_path_factory.mktemp("study") / "s", n=3, shape=(6, 7))
    return paths


def _listener(tmp_path: Path, allow: list[str], handed: list | None = None, timeout: float = 30.0) -> StoreListener:
    peers = [parse_allowed(a) for a in allow]
    on_study = (lambda uid, folder: handed.append((uid, folder, time.monotonic()))) if handed is not None else None
    return StoreListener(tmp_path / "incoming", port=0, host="127.0.0.1", allow=peers, study_timeout=timeout,
                         on_study=on_study, poll=0.05).start()  # fmt: skip


def _here(listener: StoreListener) -> RemoteAE:
    return RemoteAE("MEDIMG", "127.0.0.1", listener.port)


def test_allowed_peer_stores_and_a_quiet_study_is_handed_on_once(tmp_path: Path, study: list[Path]) -> None:
    handed: list = []
    listener = _listener(tmp_path, ["CT01@127.0.0.1"], handed, timeout=1.5)
    try:
        echo(_here(listener), "CT01")
        sent = time.monotonic()
        assert store_files(_here(listener), study, calling_ae="CT01") == []
        assert handed == [] and len(listener.pending()) == 1  # not before the quiet time
        deadline = time.monotonic() + 10
        while not handed and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.stop()
    first = pydicom.dcmread(study[0])
    ((uid, folder, at),) = handed
    assert uid == first.StudyInstanceUID and at - sent >= 1.5
    assert folder == tmp_path / "incoming" / uid
    assert listener.counts == {"stored": 3, "refused": 0, "failed": 0, "studies": 1}
    for path in study:
        original = pydicom.dcmread(path)
        stored = instance_path(tmp_path / "incoming", uid, original.SeriesInstanceUID, original.SOPInstanceUID)
        copy = pydicom.dcmread(stored)
        assert np.array_equal(copy.pixel_array, original.pixel_array) and copy.PatientID == original.PatientID
    assert not [p for p in (tmp_path / "incoming").rglob(".*")]  # no temporary left


@pytest.mark.parametrize(
    ("allow", "calling", "error"),
    [
        (["CT01@127.0.0.1"], "INTRUDER", "association rejected"),  # title not allowed
        (["CT01@192.0.2.1"], "CT01", None),  # allowed title, another host: C-STORE refused 0x0124
        ([], "CT01", None),  # nothing allowed: everything refused
    ],
)
def test_callers_not_allowed_are_refused_and_logged(
    tmp_path: Path, study: list[Path], allow: list[str], calling: str, error: str | None
) -> None:
    listener = _listener(tmp_path, allow)
    try:
        if error:
            with pytest.raises(DimseError, match=error):
                store_files(_here(listener), study, calling_ae=calling)
        else:
            problems = store_files(_here(listener), study, calling_ae=calling)
            assert len(problems) == 3 and all("0x0124" in p for p in problems)
    finally:
        listener.stop()
    assert not [p for p in (tmp_path / "incoming").rglob("*") if p.is_file()]
    assert listener.counts["stored"] == 0 and listener.counts["refused"] >= 1
    assert f"{calling}@127.0.0.1" in listener.refusals[0]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_any_host_and_hostile_uids_stay_inside(tmp_path: Path) -> None:
    hostile = write_image(tmp_path / "in" / "x.dcm", np.ones((4, 4)), study_uid="../../escape", series_uid="/etc")
    listener = _listener(tmp_path, ["CT01@*"])
    try:
        assert store_files(_here(listener), [hostile], calling_ae="CT01") == []
    finally:
        listener.stop()
    (written,) = [p for p in (tmp_path / "incoming").rglob("*") if p.is_file()]
    assert (tmp_path / "incoming") in written.parents and ".." not in written.parts
    assert pydicom.dcmread(written).StudyInstanceUID == "../../escape"


def test_more_instances_after_the_quiet_time_hand_the_study_on_again(tmp_path: Path, study: list[Path]) -> None:
    handed: list = []
    listener = _listener(tmp_path, ["CT01@127.0.0.1"], handed, timeout=0.3)
    try:
        for path in study[:2]:
            store_files(_here(listener), [path], calling_ae="CT01")
            deadline = time.monotonic() + 10
            while len(handed) < study.index(path) + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        listener.stop()
    assert [h[0] for h in handed] == [pydicom.dcmread(study[0]).StudyInstanceUID] * 2


def test_stop_closes_the_port_and_is_idempotent(tmp_path: Path, study: list[Path]) -> None:
    listener = _listener(tmp_path, ["CT01@127.0.0.1"], [], timeout=60)
    store_files(_here(listener), study[:1], calling_ae="CT01")
    waiter = threading.Thread(target=listener.wait)
    waiter.start()
    listener.request_stop()
    waiter.join(5)
    assert not waiter.is_alive()
    listener.stop()
    listener.stop()
    with pytest.raises(DimseError):
        echo(_here(listener), "CT01", timeout=2)
    assert listener.pending() and listener.counts["studies"] == 0  # quiet time not reached: not run


def test_listen_command_checks_its_options(tmp_path: Path) -> None:
    for args, says in [
        (["--allow", "CT01@h:104"], "without a port"),
        (["--forward", "PACS@host"], "AE@HOST:PORT"),
        (["--ae-title", "X" * 17], "longer than 16"),
    ]:
        result = runner.invoke(app, ["listen", "pneumonia", "-o", str(tmp_path / "o"), "--port", "0", *args])
        assert result.exit_code == 2 and says in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_listen_command_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "medimg.cli", "listen", "pneumonia", "-o", str(tmp_path / "o"), "--port", "0",
               "--bind", "127.0.0.1", "--allow", "CT01@127.0.0.1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "Listening as MEDIMG on 127.0.0.1:" in line, line + (process.stderr.read() if process.stderr else "")
        port = int(line.split("127.0.0.1:")[1].split(";")[0])
        echo(RemoteAE("MEDIMG", "127.0.0.1", port), "CT01")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Stopped: 0 instance(s) stored" in out


def test_listen_log_lines_cannot_be_forged_by_header_values() -> None:
    """A StudyInstanceUID with a newline and an escape sequence stays on its own log line, without the escape."""
    import logging

    from pipelines.commands.listen import log_to_stderr

    log_to_stderr()
    handler = logging.getLogger("medimg.listen").handlers[0]
    uid = "1.2.5\n2026-12-03 07:00:00,000 WARNING FAKE: forged line \x1b[31mred"
    record = logging.LogRecord("medimg.listen", logging.INFO, __file__, 1, "study %s: run", (uid,), None)
    line = handler.format(record)
    assert "\n" not in line and "\x1b" not in line and "1.2.5 2026-12-03 07:00:00,000 WARNING FAKE" in line
