"""Hostile header values and file names never write outside OUT (issue 17, part 1).

Unit tests of :mod:`medimg.safepath`, then end-to-end probes of ``run pneumonia``, ``convert`` and
``run brats`` with ``..``/absolute-path identifiers, and the collisions the old names allowed.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from checkpoints import untrained_brats_checkpoint, untrained_checkpoint
from dicom_factory import write_series
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medimg.cli import app
from medimg.safepath import UnsafePathError, inside, safe_name

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom: the hostile UIDs are invalid
runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
UID64 = "1.2.826.0.1.3680043.8.498." + "1" * 38
BASE60 = "1.2.826.0.1.3680043.8.498." + "7" * 34


# --- safe_name / inside ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["..", ".", "", "../../evil", "/etc/passwd", "/tmp/abs", "a/b", "a\\b", ".hidden"])
def test_safe_name_is_one_harmless_component(value: str) -> None:
    name = safe_name(value)
    assert name not in ("", ".", "..") and not name.startswith(".")
    assert "/" not in name and "\\" not in name
    assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")
    assert name != value  # changed, so a hash of the original is appended


def test_plain_uids_and_ids_keep_their_names() -> None:
    for value in (UID64, "BraTS2021_00000", "P1", "1.2.3", "a-b+c_d.e"):
        assert safe_name(value) == value


def test_distinct_values_never_share_a_name() -> None:
    a, b = BASE60 + "1234", BASE60 + "5678"
    assert len(a) == len(b) == 64 and safe_name(a) != safe_name(b)
    assert safe_name(a, max_length=40) != safe_name(b, max_length=40)
    assert len(safe_name(a, max_length=40)) <= 40
    assert safe_name("a b") != safe_name("a/b") != safe_name("a_b")
    assert safe_name("..") != safe_name(".")


def test_long_values_are_bounded_and_absurd_ones_refused() -> None:
    long = "1." * 2000
    assert len(safe_name(long)) <= 128
    with pytest.raises(UnsafePathError, match="longer than"):
        safe_name("1" * 10_000)
    with pytest.raises(UnsafePathError, match="NUL") as caught:
        safe_name("a\x00b")
    assert isinstance(caught.value, ValueError) and caught.value.value == "a\x00b"


def test_inside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert inside(out, out / "a" / "b.nii.gz") == out / "a" / "b.nii.gz"
    for bad in (out / ".." / "x", Path("/etc/passwd"), out / "a" / ".." / ".." / "x"):
        with pytest.raises(UnsafePathError, match="outside"):
            inside(out, bad)
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):
        inside(out, out / "link" / "x")


# --- end to end -----------------------------------------------------------------------------


def _snapshot(tmp_path: Path, out: Path) -> set[Path]:
    """Every path under tmp_path's parent (which holds tmp_path), OUT excluded."""
    return {p for p in tmp_path.parent.rglob("*") if out not in p.parents and p != out}


def _cxr_copy(folder: Path, name: str, **tags: str) -> Path:
    """A copy of a sample chest X-ray with the given header values (new SOP/series UIDs by default)."""
    ds = pydicom.dcmread(sorted((SAMPLE / "cxr" / "stage_2_train_images").glob("*.dcm"))[0])
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / name)
    return folder / name


def _assert_clean(result, before: set[Path], tmp_path: Path, out: Path) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert _snapshot(tmp_path, out) == before, _snapshot(tmp_path, out) - before
    for path in out.rglob("*"):
        assert out.resolve() in path.resolve().parents


def test_run_pneumonia_with_hostile_uids_writes_only_inside_out(tmp_path: Path) -> None:
    dicom, out = tmp_path / "dicom", tmp_path / "out"
    escape = "../../../../evil"
    _cxr_copy(dicom, "a.dcm", SOPInstanceUID=escape, StudyInstanceUID="..", PatientID="../../evil")
    _cxr_copy(dicom, "b.dcm", SOPInstanceUID=str(tmp_path / "abs"), StudyInstanceUID="/tmp/abs", PatientID="/tmp/abs")
    weights = untrained_checkpoint(tmp_path / "w" / "pneumonia.pt", "pneumonia")
    before = _snapshot(tmp_path, out)
    result = runner.invoke(app, ["run", "pneumonia", str(dicom), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 0, result.output
    _assert_clean(result, before, tmp_path, out)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["SOPInstanceUID"] for r in rows) == sorted([escape, str(tmp_path / "abs")])
    assert len(list(out.rglob("*_overlay.png"))) == 2 and len(list(out.rglob("study.json"))) == 2


def test_convert_with_hostile_ids_writes_only_inside_out(tmp_path: Path) -> None:
    dicom, out = tmp_path / "dicom", tmp_path / "out"
    _cxr_copy(dicom, "a.dcm", PatientID="..", StudyInstanceUID="..", SOPInstanceUID="../../../evil")
    _cxr_copy(dicom, "b.dcm", PatientID="/tmp/abs", StudyInstanceUID=str(tmp_path / "abs"))
    before = _snapshot(tmp_path, out)
    result = runner.invoke(app, ["convert", str(dicom), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    _assert_clean(result, before, tmp_path, out)
    assert len(list(out.rglob("*.nii.gz"))) == 2


def test_convert_keeps_studies_with_a_shared_uid_prefix_apart(tmp_path: Path) -> None:
    dicom, out = tmp_path / "dicom", tmp_path / "out"
    first, second = BASE60 + "1234", BASE60 + "5678"
    write_series(dicom / "a", n=3, study_uid=first)
    write_series(dicom / "b", n=3, study_uid=second)
    result = runner.invoke(app, ["convert", str(dicom), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "0 already there" in result.output
    assert sorted(p.name for p in (out / "P1").iterdir()) == [first, second]  # plain UIDs keep their names


def _brats_weights(folder: Path) -> Path:
    return untrained_brats_checkpoint(folder / "brats.pt")


def test_run_brats_nifti_case_named_dotdot_stays_inside_out(tmp_path: Path) -> None:
    data, out = tmp_path / "nifti", tmp_path / "out"
    data.mkdir()
    source = SAMPLE / "brain" / "nifti" / "BraTS2021_00000"
    for seq in ("t1", "t1ce", "t2", "flair"):
        shutil.copy(source / f"BraTS2021_00000_{seq}.nii.gz", data / f".._{seq}.nii.gz")
    weights = _brats_weights(tmp_path)
    before = _snapshot(tmp_path, out)
    result = runner.invoke(app, ["run", "brats", str(data), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 0, result.output
    _assert_clean(result, before, tmp_path, out)
    (row,) = csv.DictReader(open(out / "results.csv"))
    assert row["case_id"] == ".." and (out / safe_name("..") / row["labels_file"]).is_file()


def _copy_study(source: Path, target: Path, study_uid: str) -> None:
    """A copy of a DICOM study with a new StudyInstanceUID (and new series/SOP UIDs)."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        series_uid = generate_uid()
        (target / folder.name).mkdir(parents=True)
        for path in sorted(folder.iterdir()):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(target / folder.name / path.name)


@pytest.mark.slow
def test_run_brats_keeps_two_studies_of_one_patient_apart(tmp_path: Path) -> None:
    dicom, out = tmp_path / "dicom", tmp_path / "out"
    source = SAMPLE / "brain" / "dicom" / "BraTS2021_00000"
    _copy_study(source, dicom / "s1", generate_uid())
    _copy_study(source, dicom / "s2", generate_uid())
    weights = _brats_weights(tmp_path)
    result = runner.invoke(app, ["run", "brats", str(dicom), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["PatientID"] for r in rows] == ["BraTS2021_00000"] * 2
    assert len({r["StudyInstanceUID"] for r in rows}) == 2
    folders = sorted(p.parent for p in out.rglob("study.json"))
    assert len(folders) == 2 and all(f.name.startswith("BraTS2021_00000_") for f in folders)
    for folder in folders:
        labels = nib.load(folder / "BraTS2021_00000.nii.gz")
        assert np.asarray(labels.dataobj).ndim == 3
