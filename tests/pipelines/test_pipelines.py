"""Pneumonia and density pipelines: run on DICOM folders (bad input, resume), train, evaluate."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import PYDICOM_TEST_FILES, write_series
from typer.testing import CliRunner

from medimg.cli import app
from medimg.synth import generate_sample_data
from pipelines import DatasetError, get_pipeline
from pipelines.base import patient_split
from pipelines.density import aggregate_exam

runner = CliRunner()


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_sample_data(root, only=["cxr", "mammo"], count={"cxr": 10, "mammo": 1}, seed=5)
    return root


@pytest.fixture
def weights(untrained_weights: dict[str, Path]) -> dict[str, Path]:
    return untrained_weights


def test_pneumonia_run_with_bad_inputs_and_resume(data: Path, weights: dict, tmp_path: Path) -> None:
    folder = tmp_path / "pacs"
    shutil.copytree(data / "cxr" / "stage_2_train_images", folder / "cxr")
    write_series(folder / "ct", n=3, modality="CT", description="CT HEAD")  # another modality: skipped
    shutil.copy(PYDICOM_TEST_FILES / "test-SR.dcm", folder / "report_sr")  # no pixel data: skipped
    good = sorted((folder / "cxr").glob("*.dcm"))
    raw = good[0].read_bytes()
    (folder / "broken.dcm").write_bytes(raw[: len(raw) // 2])  # truncated: an error
    before = _tree_hash(folder)
    out = tmp_path / "out"
    args = ["run", "pneumonia", str(folder), "-o", str(out), "--weights", str(weights["pneumonia"]), "-q"]
    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.output  # the truncated file is an error
    assert _tree_hash(folder) == before  # inputs never modified
    results = _rows(out / "results.csv")
    assert len(results) == len(good)
    assert {r["selection"] for r in results} == {"frontal"}
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in results)
    errors = _rows(out / "errors.csv")
    kinds = {(Path(e["path"]).name, e["kind"]) for e in errors}
    assert ("broken.dcm", "error") in kinds and ("report_sr", "skipped") in kinds
    ct = [e for e in errors if "CT" in e["reason"] and e["kind"] == "skipped"]
    assert ct and "not selected by the chest_xray rules" in ct[0]["reason"]
    submission = _rows(out / "submission.csv")
    assert list(submission[0]) == ["patientId", "PredictionString"] and len(submission) == len(good)
    for row in submission:
        numbers = row["PredictionString"].split()
        assert len(numbers) % 5 == 0
    overlays = list((out / "studies").rglob("*_overlay.png"))
    assert len(overlays) == len(good)
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["images"] == len(good) and len(run["weights"]["sha256"]) == 64
    assert "report.html" in {p.name for p in out.iterdir()}
    assert (out / "report.html").read_text().count("data:image/png") >= len(good)

    again = runner.invoke(app, args)
    assert again.exit_code == 1
    run2 = json.loads((out / "run.json").read_text())
    assert run2["counts"]["studies_resumed"] == len(good) and run2["counts"]["images_processed"] == 0
    assert _rows(out / "results.csv") == results
    redo = runner.invoke(app, [*args, "--overwrite"])
    assert json.loads((out / "run.json").read_text())["counts"]["images_processed"] == len(good), redo.output


def test_clean_folder_exits_zero_and_monochrome1_is_processed(data: Path, weights: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", "density", str(data / "mammo"), "-o", str(out), "--weights", str(weights["density"]), "-q"]
    )
    assert result.exit_code == 0, result.output  # CSV files beside the images are only skipped
    rows = _rows(out / "results.csv")
    assert len(rows) == 12  # 1 exam x 4 views x 3 sites, one site MONOCHROME1
    assert {r["selection"] for r in rows} == {"L-CC", "L-MLO", "R-CC", "R-MLO"}
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in "ABCD"]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5) and row["predicted"] == "ABCD"[int(np.argmax(probs))]
    exams = _rows(out / "exams.csv")
    assert len(exams) == 3 and all(e["n_images"] == "4" for e in exams)


def test_weights_for_another_pipeline_are_refused(data: Path, weights: dict, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["run", "density", str(data / "mammo"), "-o", str(tmp_path / "o"), "--weights", str(weights["pneumonia"])]
    )
    assert result.exit_code == 2
    assert "pneumonia" in result.output and "density" in result.output


def test_exam_aggregation_takes_the_denser_breast() -> None:
    def view(side: str, probs: list[float]) -> dict:
        return {"ImageLaterality": side, **{f"prob_{c}": p for c, p in zip("ABCD", probs, strict=True)}}

    exam = aggregate_exam(
        [
            view("L", [0.1, 0.7, 0.1, 0.1]),
            view("L", [0.1, 0.5, 0.3, 0.1]),
            view("R", [0.0, 0.2, 0.7, 0.1]),
            view("R", [0.1, 0.3, 0.5, 0.1]),
        ]
    )
    assert exam["L_density"] == "B" and exam["R_density"] == "C" and exam["exam_density"] == "C"
    assert exam["prob_C"] == pytest.approx(0.6)


def test_patient_split_is_seeded_and_patient_level() -> None:
    ids = [f"p{i // 2}" for i in range(400)]  # two images per patient
    a = patient_split(ids, seed=1)
    assert np.array_equal(a, patient_split(ids, seed=1)) and not np.array_equal(a, patient_split(ids, seed=2))
    assert all(a[i] == a[i + 1] for i in range(0, 400, 2))
    assert 0.1 < a.mean() < 0.3


def test_dataset_layout_errors(data: Path, tmp_path: Path) -> None:
    pneumonia, density = get_pipeline("pneumonia"), get_pipeline("density")
    with pytest.raises(DatasetError, match="stage_2_train_labels.csv"):
        pneumonia.load_dataset(tmp_path)
    broken = tmp_path / "cxr"
    shutil.copytree(data / "cxr", broken)
    next((broken / "stage_2_train_images").glob("*.dcm")).unlink()
    with pytest.raises(DatasetError, match="no DICOM file"):
        pneumonia.load_dataset(broken)
    with pytest.raises(DatasetError, match="breast-level_annotations.csv"):
        density.load_dataset(tmp_path / "nothing-here")
    items = density.load_dataset(data / "mammo")
    assert len(items) == 12 and {i["label"] for i in items} <= {0, 1, 2, 3}
    assert len({i["patient_id"] for i in items}) == 3


def test_train_then_evaluate(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "pneumonia",
            str(data / "cxr"),
            "-o",
            str(run),
            "--architecture",
            "compact",
            "--epochs",
            "1",
            "--image-size",
            "64x64",
            "--batch-size",
            "4",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (run / "best.pt").is_file() or (run / "last.pt").is_file()
    weights = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
    assert list((run / "cache").iterdir())  # decoded images cached for later epochs
    out = tmp_path / "eval"
    evaluated = runner.invoke(
        app, ["evaluate", "pneumonia", str(data / "cxr"), "--weights", str(weights), "-o", str(out), "--n-boot", "50"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("roc_auc", "pr_auc", "sensitivity", "specificity"):
        assert key in metrics and key in metrics["ci95"]
    assert metrics["n_boot"] == 50  # --n-boot reaches the bootstrap (it was always 1000)
    assert len(_rows(out / "predictions.csv")) == 10
    assert (out / "report.html").is_file()
