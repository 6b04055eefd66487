"""The pneumonia pipeline on PNG/JPEG chest X-rays: run, train, evaluate and saliency audit on
NIH ChestX-ray14-style folders (generated), the real NIH PNGs, and CheXpert-style tables."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from checkpoints import untrained_checkpoint
from PIL import Image
from real_data import real_path
from typer.testing import CliRunner

from medimg.cli import app
from medimg.safepath import safe_name
from medimg.synth.cxr_png import generate_cxr_png
from pipelines import DatasetError, get_pipeline

runner = CliRunner()
SAMPLE_CXR = Path(__file__).resolve().parents[2] / "sample_data" / "cxr"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def nih(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("png") / "cxr-png"
    generate_cxr_png(root, seed=2, count=16)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("w") / "w.pt", "pneumonia", size=(48, 48))


def test_run_on_the_real_nih_pngs(weights: Path, tmp_path: Path) -> None:
    folder = real_path("cxr", "png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "pneumonia", str(folder), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 0, result.output
    rows = _rows(out / "results.csv")
    names = sorted(p.name for p in folder.glob("*.png"))
    assert [r["SOPInstanceUID"] for r in rows] == names and {r["selection"] for r in rows} == {"image file"}
    for row in rows:
        assert 0.0 <= float(row["probability"]) <= 1.0 and row["StudyInstanceUID"] == row["SOPInstanceUID"]
        assert (out / "studies" / safe_name(row["SOPInstanceUID"]) / row["overlay"]).is_file()
    with Image.open(out / "studies" / safe_name(names[0]) / rows[0]["overlay"]) as overlay:
        assert overlay.size == (512, 512)  # on the source pixel grid
    assert [r["patientId"] for r in _rows(out / "submission.csv")] == names


def test_run_on_a_generated_set_with_a_broken_file_and_resume(nih: Path, weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(nih, folder)
    (folder / "images_001" / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "images_001" / "images" / "a b&c.png").write_bytes(
        (folder / "images_001/images/00000001_000.png").read_bytes()
    )
    out = tmp_path / "out"
    args = ["run", "pneumonia", str(folder), "-o", str(out), "--weights", str(weights), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # the broken file is an error; the others are done
    rows = _rows(out / "results.csv")
    assert len(rows) == 17
    errors = [e for e in _rows(out / "errors.csv") if e["kind"] == "error"]
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.png") and "not a readable" in errors[0]["reason"]
    table = {r["Image Index"]: r for r in _rows(folder / "Data_Entry_2017.csv")}
    by_file = {r["SOPInstanceUID"]: r for r in rows}
    assert "images_001/images/00000002_001.jpg" in by_file  # JPEG, 16-bit and RGB PNGs all run
    for rel, row in by_file.items():
        known = table.get(Path(rel).name)
        assert row["PatientID"] == (known["Patient ID"] if known else "")
        assert row["ViewPosition"] == (known["View Position"] if known else "")
    folders = json.loads((out / "run.json").read_text())["folders"]
    assert folders["images_001/images/a b&c.png"].startswith("studies/images_001_images_a_b_c.png_")  # made safe
    assert all(f.count("/") == 1 and (out / f / "study.json").is_file() for f in folders.values())
    again = runner.invoke(app, args)
    assert json.loads((out / "run.json").read_text())["counts"]["studies_resumed"] == 17, again.output


def test_8_bit_16_bit_and_rgb_copies_of_an_image_give_the_same_result(weights: Path, tmp_path: Path) -> None:
    from medimg.synth.cxr import render_cxr

    image, _ = render_cxr(np.random.default_rng(1), 128, label_class="Lung Opacity")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(image).save(folder / "grey8.png")
    Image.fromarray(image.astype(np.uint16) * 257).save(folder / "grey16.png")
    Image.fromarray(np.dstack([image] * 3), mode="RGB").save(folder / "rgb.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "pneumonia", str(folder), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 0, result.output
    prob = {r["SOPInstanceUID"]: float(r["probability"]) for r in _rows(out / "results.csv")}
    assert set(prob) == {"grey8.png", "grey16.png", "rgb.png"}
    assert np.allclose(list(prob.values()), prob["grey8.png"], atol=1e-5), prob


def test_dicom_folders_are_still_scanned(nih: Path, tmp_path: Path) -> None:
    pipeline = get_pipeline("pneumonia")
    assert pipeline.plan_files(SAMPLE_CXR, tmp_path, False, None) is None  # DICOM (and a CSV): the DICOM scan
    mixed = tmp_path / "mixed"
    shutil.copytree(SAMPLE_CXR / "stage_2_train_images", mixed)
    shutil.copy(next(nih.rglob("*.png")), mixed / "preview.png")
    assert pipeline.plan_files(mixed, tmp_path, False, None) is None
    assert pipeline.load_dataset(SAMPLE_CXR)[0]["image"].endswith(".dcm")


def test_load_dataset_lists_missing_images_and_refuses_bad_tables(nih: Path, tmp_path: Path) -> None:
    folder = tmp_path / "nih"
    shutil.copytree(nih, folder)
    gone = sorted((folder / "images_001" / "images").iterdir())[0]
    gone.unlink()
    pipeline = get_pipeline("pneumonia")
    with pytest.warns(UserWarning, match=f"(?s)1 image.*left out.*{gone.name} is listed but not found"):
        items = pipeline.load_dataset(folder)
    assert len(items) == 15 and len(pipeline.dataset_problems) == 1
    (folder / "Data_Entry_2017.csv").write_text("Image Index,Patient ID\n")
    with pytest.raises(DatasetError, match=r"Data_Entry_2017.csv: missing column\(s\) \['Finding Labels'"):
        pipeline.load_dataset(folder)
    with pytest.raises(DatasetError, match="no Data_Entry_2017.csv"):
        pipeline.load_dataset(tmp_path / "nothing")


def test_chexpert_policy_reaches_the_pipeline(weights: Path, tmp_path: Path) -> None:
    from medimg.image_datasets import LabelPolicy
    from pipelines.pneumonia import PneumoniaPipeline

    root = tmp_path / "CheXpert-v1.0-small"
    lines = ["Path,Sex,Age,Frontal/Lateral,AP/PA,Pneumonia"]
    for k, value in enumerate(["1.0", "0.0", "-1.0", "", "-1.0"], start=1):
        rel = f"valid/patient{k:05d}/study1/view1_frontal.png"
        (root / rel).parent.mkdir(parents=True)
        Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16) // k).save(root / rel)
        lines.append(f"CheXpert-v1.0-small/{rel},Male,60,Frontal,PA,{value}")
    (root / "valid.csv").write_text("\n".join(lines) + "\n")
    pipeline = PneumoniaPipeline()
    assert [i["label"] for i in pipeline.load_dataset(root)] == [1, 0, 0]  # U-Ignore, blank negative
    pipeline.label_policy = LabelPolicy(uncertain="ones")
    assert [i["label"] for i in pipeline.load_dataset(root)] == [1, 0, 1, 0, 1]
    for option, count in (("ignore", 3), ("ones", 5)):  # the same through medimg evaluate
        out = tmp_path / option
        args = ["evaluate", "pneumonia", str(root), "--weights", str(weights), "-o", str(out), "--n-boot", "5"]
        result = runner.invoke(app, [*args, "--uncertain-labels", option])
        assert result.exit_code == 0, result.output
        assert len(_rows(out / "predictions.csv")) == count
    bad = runner.invoke(app, ["train", "pneumonia", str(root), "-o", str(tmp_path / "t"), "--uncertain-labels", "x"])
    assert bad.exit_code == 2 and "uncertain label policy" in bad.output


def test_train_evaluate_and_audit_with_the_nih_boxes(nih: Path, tmp_path: Path) -> None:
    from medimg.models import load_checkpoint
    from saliency.criteria import boxes_to_mask

    run = tmp_path / "run"
    train = runner.invoke(
        app, ["train", "pneumonia", str(nih), "-o", str(run), "--architecture", "compact", "--epochs", "1",
              "--batch-size", "4", "--image-size", "48x48", "--seed", "1"],
    )  # fmt: skip
    assert train.exit_code == 0, train.output
    weights = next(run / n for n in ("best.pt", "last.pt") if (run / n).is_file())
    _, meta = load_checkpoint(weights, pipeline="pneumonia")
    assert meta["training"]["n_train"] + meta["training"]["n_val"] == 16
    evaluation = runner.invoke(app, ["evaluate", "pneumonia", str(nih), "--weights", str(weights),
                                     "-o", str(tmp_path / "eval"), "--n-boot", "20"])  # fmt: skip
    assert evaluation.exit_code == 0, evaluation.output
    predictions = _rows(tmp_path / "eval" / "predictions.csv")
    table = {r["Image Index"]: r for r in _rows(nih / "Data_Entry_2017.csv")}
    assert len(predictions) == 16
    for row in predictions:
        positive = "Pneumonia" in table[Path(row["image"]).name]["Finding Labels"].split("|")
        assert row["label"] == ("pneumonia" if positive else "no_pneumonia")
    # The audit's localization ground truth: the BBox_List boxes, scaled from the 1024 grid to the files.
    from pipelines.saliency_audit import load_audit_data

    pipeline = get_pipeline("pneumonia")
    data = load_audit_data(pipeline, nih, meta["preprocessing"])
    boxes = {}
    for row in _rows(nih / "BBox_List_2017.csv"):
        boxes.setdefault(row["Image Index"], []).append([float(row[k]) / 4 for k in ("Bbox [x", "y", "w", "h]")])
    positives = [i for i in pipeline.load_dataset(nih) if i["boxes"]]
    assert data.masks is not None and len(data.masks) == len(positives) == len(boxes)
    for item, mask in zip(positives, data.masks, strict=True):
        expected = boxes_to_mask(boxes[Path(item["image"]).name], (48, 48), source_shape=(256, 256))
        np.testing.assert_array_equal(mask, expected.T)
    out = tmp_path / "audit"
    audit = runner.invoke(
        app, ["saliency", "audit", "pneumonia", str(nih), "--weights", str(weights), "--replica", str(weights),
              "--methods", "gradcam", "--criteria", "localization", "-o", str(out), "-q"],
    )  # fmt: skip
    assert audit.exit_code == 0, audit.output
    localization = [r for r in _rows(out / "localization.csv") if r["source"] == "trained"]
    assert len(localization) == 3 * len(positives)  # Grad-CAM and the two controls
