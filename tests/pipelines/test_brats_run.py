"""medimg run/train/evaluate brats: NIfTI and DICOM inputs, SEG, uncertainty hand-off, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from checkpoints import untrained_brats_checkpoint
from typer.testing import CliRunner

from medimg.cli import app
from medimg.dicom import load_series
from medimg.dicom.seg import read_seg
from medimg.synth import generate_sample_data
from pipelines import get_pipeline

runner = CliRunner()
CASE = "BraTS2021_00000"


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


@pytest.fixture(scope="module")
def brain(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brain")
    generate_sample_data(root, only=["brain"], count=2, seed=8)
    return root / "brain"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    # a bias towards "tumour" so that the label volumes are not empty
    return untrained_brats_checkpoint(tmp_path_factory.mktemp("w") / "brats.pt", tumour_bias=0.5)


@pytest.mark.slow
def test_nifti_run_with_uncertainty_is_a_qubrats_submission(brain: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "run",
        "brats",
        str(brain / "nifti"),
        "-o",
        str(out),
        "--weights",
        str(weights),
        "--uncertainty",
        "tta",
        "--samples",
        "2",
        "-q",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = _rows(out / "results.csv")
    assert [r["case_id"] for r in rows] == [CASE, "BraTS2021_00001"]
    for row in rows:
        case = out / row["case_id"]
        labels = nib.load(case / f"{row['case_id']}.nii.gz")
        source = nib.load(brain / "nifti" / row["case_id"] / f"{row['case_id']}_t1ce.nii.gz")
        assert labels.shape == source.shape and np.allclose(labels.affine, source.affine)
        values = np.asarray(labels.dataobj)
        assert set(np.unique(values).tolist()) <= {0, 1, 2, 4}
        voxel_ml = abs(np.linalg.det(labels.affine[:3, :3])) / 1000
        assert float(row["WT_ml"]) == pytest.approx((values > 0).sum() * voxel_ml)
        for suffix in ("whole", "core", "enhance"):
            unc = np.asarray(nib.load(case / f"{row['case_id']}_unc_{suffix}.nii.gz").dataobj)
            assert unc.dtype == np.uint8 and unc.max() <= 100
    scored = runner.invoke(
        app,
        ["uncertainty", "score", str(out), "--truth", str(brain / "nifti"), "-o", str(tmp_path / "scores.csv"), "-q"],
    )
    assert scored.exit_code == 0, scored.output
    assert len(_rows(tmp_path / "scores.csv")) == 6
    again = runner.invoke(app, args)
    assert json.loads((out / "run.json").read_text())["counts"]["studies_resumed"] == 2, again.output


@pytest.mark.slow
def test_dicom_run_writes_a_seg_that_reads_back_exactly(brain: Path, weights: Path, tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    shutil.copytree(brain / "dicom" / CASE, dicom / CASE)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "brats", str(dicom), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 0, result.output
    (row,) = _rows(out / "results.csv")
    assert row["source"] == "dicom" and row["seg_file"] == f"{CASE}_SEG.dcm"
    folder = out / get_pipeline("brats").output_folder(row["StudyInstanceUID"], row)  # {CASE}_{study hash}
    assert folder.name.startswith(f"{CASE}_") and row["labels_file"] == f"{CASE}.nii.gz"
    labels = np.asarray(nib.load(folder / row["labels_file"]).dataobj)
    t1ce = load_series(sorted(str(p) for p in Path(row["source_file"]).iterdir()))
    recovered = read_seg(folder / row["seg_file"], t1ce.meta["source_files"])
    np.testing.assert_array_equal(recovered, labels)


def test_bad_cases_are_reported_and_the_others_processed(brain: Path, weights: Path, tmp_path: Path) -> None:
    data = tmp_path / "nifti"
    shutil.copytree(brain / "nifti", data)
    (data / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz").unlink()  # a missing sequence
    broken = data / "BraTS2021_00009"
    broken.mkdir()
    for seq in ("t1", "t1ce", "t2", "flair"):
        shutil.copy(data / CASE / f"{CASE}_{seq}.nii.gz", broken / f"BraTS2021_00009_{seq}.nii.gz")
    (broken / "BraTS2021_00009_t2.nii.gz").write_bytes(b"\x00" * 400)  # a broken header
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "brats", str(data), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 1
    assert [r["case_id"] for r in _rows(out / "results.csv")] == [CASE]
    errors = {e["PatientID"]: e["reason"] for e in _rows(out / "errors.csv")}
    assert "missing sequence(s): BraTS2021_00001_flair.nii.gz" in errors["BraTS2021_00001"]
    assert "cannot read NIfTI" in errors["BraTS2021_00009"]
    assert not (out / "BraTS2021_00009" / "study.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_dicom_series_with_a_missing_slice(brain: Path, weights: Path, tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    shutil.copytree(brain / "dicom" / CASE, dicom / CASE)
    flair = next(p for p in (dicom / CASE).iterdir() if p.name.endswith("flair"))
    files = sorted(flair.iterdir(), key=lambda p: int(p.stem[2:]))
    files[len(files) // 2].unlink()
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "brats", str(dicom), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 1
    (error,) = [e for e in _rows(out / "errors.csv") if e["kind"] == "error"]
    assert error["PatientID"] == CASE
    assert "missing required series: flair" in error["reason"] and "missing slices" in error["reason"]


def test_other_pipelines_weights_are_refused(brain: Path, tmp_path: Path) -> None:
    from pipelines.runner import default_weights

    pneumonia = default_weights("pneumonia")
    if pneumonia is None:
        pytest.skip("no demo weights")
    result = runner.invoke(
        app, ["run", "brats", str(brain / "nifti"), "-o", str(tmp_path), "--weights", str(pneumonia)]
    )
    assert result.exit_code == 2 and "pneumonia" in result.output


@pytest.mark.slow
def test_train_and_evaluate_brats(brain: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "brats",
            str(brain / "nifti"),
            "-o",
            str(run),
            "--architecture",
            "segresnet-compact",
            "--epochs",
            "1",
            "--image-size",
            "32x32x32",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (run / "metrics.csv").is_file() and list((run / "cache").iterdir())
    weights = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
    out = tmp_path / "eval"
    evaluated = runner.invoke(
        app, ["evaluate", "brats", str(brain / "nifti"), "--weights", str(weights), "-o", str(out)]
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et"):
        assert key in metrics
    assert metrics["n_cases"] == 2 and len(_rows(out / "cases.csv")) == 2
