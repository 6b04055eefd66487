"""The trainable attention gate through the pipelines: train --attention (with box supervision), run, audit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medimg.cli import app
from medimg.models import load_checkpoint
from pipelines import get_pipeline
from pipelines.training import box_supervised_patients

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
CXR = SAMPLE / "cxr"
runner = CliRunner()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("att") / "run"
    result = runner.invoke(
        app,
        [
            "train", "pneumonia", str(CXR), "-o", str(run), "--architecture", "compact", "--epochs", "2",
            "--batch-size", "4", "--image-size", "64x64", "--attention", "--box-fraction", "1.0",
            "--attention-regularizer", "tv", "--attention-regularizer-weight", "0.1", "-q",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return run / "best.pt"


def test_checkpoint_records_the_gate_and_reloads(gated: Path) -> None:
    model, meta = load_checkpoint(gated, pipeline="pneumonia")
    assert meta["network"]["wrapper"]["name"] == "attention"
    settings = meta["training"]["attention"]
    assert settings["box_fraction"] == 1.0 and settings["regularizer"] == "tv"
    assert settings["box_supervised_images"] >= 1
    logits, maps = model.attention(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 2) and maps.shape == (2, 1, 64, 64)


def test_run_writes_attention_maps_instead_of_gradcam(gated: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "pneumonia", str(CXR), "--weights", str(gated), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "results.csv")
    assert rows and {r["heatmap"] for r in rows} == {"attention"}
    assert (tmp_path / "submission.csv").is_file()


@pytest.mark.slow
def test_audit_scores_attention_as_a_ninth_method(gated: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "saliency", "audit", "pneumonia", str(CXR), "--weights", str(gated), "--methods", "attention,gradcam",
            "--criteria", "localization,randomization", "-o", str(tmp_path), "-q",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stages = {r["stage"] for r in _rows(tmp_path / "randomization.csv") if r["method"] == "attention"}
    assert {"logits", "gate"} <= stages and "stem" not in stages  # the paper never randomizes the stem
    summary = _rows(tmp_path / "summary.csv")
    assert {r["method"] for r in summary} == {"attention", "gradcam", "edge_control", "image_control"}  # + controls
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert "read-out" in settings["methods"]["attention"]
    assert "Attention (trainable)" in (tmp_path / "report.html").read_text()


def test_box_supervised_patients_is_a_seeded_fraction_of_the_positives() -> None:
    items = get_pipeline("pneumonia").load_dataset(CXR)
    positives = {i["patient_id"] for i in items if i["boxes"]}
    assert box_supervised_patients(items, 0.0, 0) == set()
    assert box_supervised_patients(items, 1.0, 0) == positives
    some = box_supervised_patients(items, 0.1, 0)
    assert len(some) == 1 and some <= positives
    assert box_supervised_patients(items, 0.1, 0) == some
    assert np.unique([len(box_supervised_patients(items, 0.5, s)) for s in range(4)]).size == 1


def test_attention_is_refused_for_segmentation_and_bad_settings(tmp_path: Path) -> None:
    from pipelines.training import TrainPipelineConfig, train_pipeline

    with pytest.raises(ValueError, match="segmentation"):
        train_pipeline(get_pipeline("brats"), CXR, tmp_path / "b", TrainPipelineConfig(attention={}))
    with pytest.raises(ValueError, match="unknown attention setting"):
        train_pipeline(get_pipeline("pneumonia"), CXR, tmp_path / "p", TrainPipelineConfig(attention={"color": "blue"}))


def test_density_trains_with_the_gate_and_writes_attention_overlays(tmp_path: Path) -> None:
    mammo = SAMPLE / "mammo"
    train = runner.invoke(
        app,
        [
            "train", "density", str(mammo), "-o", str(tmp_path / "run"), "--architecture", "compact", "--epochs", "1",
            "--batch-size", "8", "--image-size", "64x64", "--attention", "--attention-activation", "softmax",
            "--attention-heads", "2", "-q",
        ],
    )  # fmt: skip
    assert train.exit_code == 0, train.output
    # one epoch on 24 images may leave no finite validation kappa, hence no best.pt: use the last weights
    weights = tmp_path / "run" / ("best.pt" if (tmp_path / "run" / "best.pt").is_file() else "last.pt")
    _, meta = load_checkpoint(weights, pipeline="density")
    assert meta["network"]["wrapper"] == {"name": "attention", "heads": 2, "activation": "softmax"}
    run = runner.invoke(app, ["run", "density", str(mammo), "--weights", str(weights), "-o", str(tmp_path / "o")])
    assert run.exit_code == 0, run.output
    rows = _rows(tmp_path / "o" / "results.csv")
    assert rows and all(r["overlay"].endswith("_attention.png") for r in rows)
    assert len(list((tmp_path / "o").rglob("*_attention.png"))) == len(rows)
