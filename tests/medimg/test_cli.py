"""The medimg command: version, fast help, scan, convert (exit codes and output)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from dicom_factory import write_series
from typer.testing import CliRunner

from medimg import __version__
from medimg.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_does_not_import_torch_or_monai() -> None:
    code = (
        "import sys; from medimg.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0\n"
        "heavy = [m for m in ('torch', 'monai', 'pydicom', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_scan_json_lists_every_file_once(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=3, description="T1")
    (tmp_path / "notes.txt").write_text("hello")
    result = runner.invoke(app, ["scan", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (study,) = data["studies"]
    assert set(study) >= {"StudyInstanceUID", "PatientID", "series"}
    (series,) = study["series"]
    assert set(series) >= {"SeriesInstanceUID", "Modality", "SeriesDescription", "files"}
    assert len(series["files"]) == 3
    assert data["quarantine"] == [{"path": str(tmp_path / "notes.txt"), "reason": data["quarantine"][0]["reason"]}]
    assert data["quarantine"][0]["reason"].startswith("not DICOM")


def test_scan_table(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=3, description="AX FLAIR")
    result = runner.invoke(app, ["scan", str(tmp_path), "--quiet"])
    assert result.exit_code == 0
    assert "AX FLAIR" in result.output and "1 patient(s), 1 study(ies), 1 series" in result.output


def test_convert_exit_codes(tmp_path: Path) -> None:
    write_series(tmp_path / "dicom" / "good", n=3)
    ok = runner.invoke(app, ["convert", str(tmp_path / "dicom"), "-o", str(tmp_path / "out"), "-q"])
    assert ok.exit_code == 0, ok.output
    assert len(list((tmp_path / "out").rglob("*.nii.gz"))) == 1
    write_series(tmp_path / "dicom" / "bad", n=4, skip=[1], patient_id="P9")
    bad = runner.invoke(app, ["convert", str(tmp_path / "dicom"), "-o", str(tmp_path / "out"), "-q"])
    assert bad.exit_code == 1
    assert "missing slices" in bad.output
    rules = runner.invoke(app, ["convert", str(tmp_path / "dicom"), "-o", str(tmp_path / "o2"), "--rules", "nope.yaml"])
    assert rules.exit_code == 2


def test_sample_data_counts_and_bad_count(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sample-data", str(tmp_path / "d"), "--only", "cxr", "--count", "3"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "d" / "cxr" / "stage_2_train_images").glob("*.dcm"))) == 3
    assert not (tmp_path / "d" / "brain").exists()
    per = runner.invoke(app, ["sample-data", str(tmp_path / "e"), "--count", "cxr=2,mammo=1,brain=0"])
    assert per.exit_code == 0, per.output
    assert len(list((tmp_path / "e" / "cxr" / "stage_2_train_images").glob("*.dcm"))) == 2
    assert len(list((tmp_path / "e" / "mammo").rglob("*.dicom"))) == 12  # 1 exam x 4 views x 3 sites
    bad = runner.invoke(app, ["sample-data", str(tmp_path / "f"), "--count", "lungs=3"])
    assert bad.exit_code == 2 and "unknown dataset" in bad.output


def test_demo_generates_missing_data_and_checks_conversion(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "brain" / "nifti").is_dir()
    assert "1/1 studies have every required selection" in result.output  # the brain study
    assert not re.search(r"│ NO +│", result.output)  # the conversion check's "matches" column
    assert len(list((tmp_path / "out" / "brain_nifti").rglob("*.nii.gz"))) == 4
