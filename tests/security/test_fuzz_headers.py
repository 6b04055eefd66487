"""Fuzzed PatientID / StudyInstanceUID / SOPInstanceUID: ``scan``, ``convert`` and ``run`` never write
outside OUT, never crash with a traceback, and exit 0 or 1."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import write_image
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medimg.cli import app

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom: the fuzzed UIDs are invalid
runner = CliRunner()
_counter = itertools.count()

_unicode = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
_pathlike = st.lists(st.sampled_from(["..", ".", "/", "evil", "\\", "tmp", " ", "-"]), max_size=12).map("".join)
_long = st.text(st.sampled_from("./1a_"), min_size=100, max_size=600)
_fixed = st.sampled_from(["..", "/etc/passwd", "../../evil", ".", ""])
#: PatientID (LO, written as UTF-8) takes any NUL-free text; UIDs only what pydicom can write (Latin-1).
patient_ids = st.one_of(st.text(_unicode, max_size=80), _pathlike, _long, _fixed)
_latin1 = st.characters(max_codepoint=255, blacklist_characters="\x00")
uids = st.one_of(st.text(_latin1, max_size=80), _pathlike, _long, _fixed)


def _files(root: Path, out: Path) -> set[Path]:
    return {p for p in root.rglob("*") if out not in p.parents and p != out}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patient=patient_ids, study=uids, sop=uids)
@example(patient="..", study="..", sop="../../evil")
def test_fuzzed_headers_stay_inside_out(tmp_path: Path, patient: str, study: str, sop: str) -> None:
    case = tmp_path / f"case{next(_counter)}"
    dicom, out = case / "dicom", case / "out"
    dicom.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_image(
            dicom / "x.dcm",
            np.arange(16, dtype=np.uint16).reshape(4, 4),
            study_uid=study,
            series_uid=generate_uid(),
            patient_id=patient,
            extra={"SOPInstanceUID": sop, "SpecificCharacterSet": "ISO_IR 192"},
        )
    before = _files(tmp_path, out)
    scanned = runner.invoke(app, ["scan", str(dicom), "--workers", "1", "-q"])
    converted = runner.invoke(app, ["convert", str(dicom), "-o", str(out), "-q"])
    for result in (scanned, converted):
        assert result.exit_code in (0, 1), (result.output, repr(result.exception))
        assert "Traceback" not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert _files(tmp_path, out) == before
    for path in out.rglob("*"):
        assert out.resolve() in path.resolve().parents


_RADIOGRAPH = next((Path(__file__).resolve().parents[2] / "sample_data" / "cxr").rglob("*.dcm"))


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patient=patient_ids, study=uids, sop=uids)
@example(patient="..", study="/tmp/abs", sop="../../evil")
def test_fuzzed_headers_of_a_radiograph_stay_inside_out_of_run(
    tmp_path: Path, untrained_weights: dict[str, Path], patient: str, study: str, sop: str
) -> None:
    """``medimg run pneumonia`` on a sample radiograph whose identifiers are fuzzed."""
    import pydicom

    case = tmp_path / f"run{next(_counter)}"
    dicom, out = case / "dicom", case / "out"
    dicom.mkdir(parents=True)
    ds = pydicom.dcmread(_RADIOGRAPH)
    ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID = patient, study, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SpecificCharacterSet = "ISO_IR 192"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(dicom / "x.dcm")
    before = _files(tmp_path, out)
    weights = str(untrained_weights["pneumonia"])
    result = runner.invoke(app, ["run", "pneumonia", str(dicom), "-o", str(out), "--weights", weights, "-q"])
    assert result.exit_code in (0, 1), (result.output, repr(result.exception))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert _files(tmp_path, out) == before
    assert (out / "results.csv").is_file() and (out / "errors.csv").is_file()
    for path in out.rglob("*"):
        assert out.resolve() in path.resolve().parents
