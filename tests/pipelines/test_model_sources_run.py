"""``medimg run`` and ``medimg evaluate`` with every kind of ``--weights``: MONAI bundles (folder and
zip, BraTS SegResNet and a DenseNet121 classifier), TorchScript and ``torch.export`` files with their
model cards; untrusted bundle code; broken model files and cards (exit 2, no traceback)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from model_files import (
    classifier_card,
    write_brats_bundle,
    write_card,
    write_classifier_bundle,
    write_exported,
    write_torchscript,
)
from typer.testing import CliRunner

from medimg.cli import app
from medimg.model_sources import load_model, model_sha256
from medimg.synth import generate_sample_data

runner = CliRunner()
#: One sliding window covers the generated 96 x 96 x 64 volumes: a full SegResNet stays fast on a CPU.
ROI = (96, 96, 64)
CASE = "BraTS2021_00000"


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def _run(*args: str) -> object:
    return runner.invoke(app, [*args])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_sample_data(root, only=["cxr", "brain"], count={"cxr": 4, "brain": 1}, seed=5)
    return root


@pytest.fixture(scope="module")
def brats_bundle(tmp_path_factory) -> Path:
    return write_brats_bundle(tmp_path_factory.mktemp("bundles") / "brats_mri_segmentation", roi_size=ROI)


def _labels(out: Path) -> np.ndarray:
    return np.asarray(nib.load(out / CASE / f"{CASE}.nii.gz").dataobj)


def test_brats_bundle_folder_and_zip_run_evaluate_and_rerun(data: Path, brats_bundle: Path, tmp_path: Path) -> None:
    nifti = data / "brain" / "nifti"
    out = tmp_path / "folder"
    result = _run("run", "brats", str(nifti), "-o", str(out), "--weights", str(brats_bundle), "-q")
    assert result.exit_code == 0, result.output
    assert [r["case_id"] for r in _rows(out / "results.csv")] == [CASE]
    run = json.loads((out / "run.json").read_text())
    source = run["weights"]["source"]
    assert source["kind"] == "bundle" and set(source["files"]) >= {"configs/metadata.json", "models/model.pt"}
    assert run["weights"]["sha256"] == model_sha256(brats_bundle) == run["result_settings"]["weights_sha256"]
    # the bundle's sliding window and z-score are what the run used, and say where they came from
    assert run["settings"]["preprocessing"]["roi_size"] == list(ROI)
    assert source["values"]["roi_size"]["from"].endswith("inferer.roi_size")
    assert source["values"]["intensity"]["value"] == {"kind": "zscore"}
    assert source["values"]["channels"]["value"] == ["t1ce", "t1", "t2", "flair"]
    report = (out / "report.html").read_text()
    assert "Source: bundle" in report and "inferer.roi_size" in report

    zipped = shutil.make_archive(str(tmp_path / "bundle"), "zip", brats_bundle.parent, brats_bundle.name)
    out_zip = tmp_path / "zip"
    result = _run("run", "brats", str(nifti), "-o", str(out_zip), "--weights", zipped, "-q")
    assert result.exit_code == 0, result.output
    assert np.array_equal(_labels(out_zip), _labels(out))  # the same network and weights, zipped

    # a rerun resumes with the same bundle, and is refused with other weights
    again = _run("run", "brats", str(nifti), "-o", str(out), "--weights", str(brats_bundle), "-q")
    assert again.exit_code == 0, again.output
    other = write_brats_bundle(tmp_path / "other", seed=1, roi_size=ROI)
    refused = _run("run", "brats", str(nifti), "-o", str(out), "--weights", str(other), "-q")
    assert refused.exit_code == 2 and "weights_sha256" in refused.output

    ev = tmp_path / "eval"
    result = _run("evaluate", "brats", str(nifti), "-o", str(ev), "--weights", zipped)
    assert result.exit_code == 0, result.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_cases"] == 1 and "dice_wt" in metrics
    assert metrics["weights"]["source"]["kind"] == "bundle"
    assert metrics["weights"]["sha256"] == model_sha256(zipped)


def test_brats_bundle_runs_on_dicom(data: Path, brats_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "dicom"
    result = _run("run", "brats", str(data / "brain" / "dicom"), "-o", str(out), "--weights", str(brats_bundle), "-q")
    assert result.exit_code == 0, result.output
    (row,) = _rows(out / "results.csv")
    assert row["source"] == "dicom" and row["seg_file"].endswith("_SEG.dcm")


def _permuted_bundle(original: Path, root: Path, order: list[str]) -> Path:
    """``original`` with its inputs declared in ``order`` and its first convolution's input channels
    permuted to match: the same model, reading the sequences in another order."""
    bundle = Path(shutil.copytree(original, root))
    before = ["T1c", "T1", "T2", "FLAIR"]
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["inputs"]["image"]["channel_def"] = {str(i): n for i, n in enumerate(order)}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    state["convInit.conv.weight"] = state["convInit.conv.weight"][:, [before.index(n) for n in order]].clone()
    torch.save(state, bundle / "models" / "model.pt")
    return bundle


def test_the_bundles_channel_order_reaches_the_loader(data: Path, brats_bundle: Path, tmp_path: Path) -> None:
    from pipelines import get_pipeline
    from pipelines.brats import segment

    pipeline = get_pipeline("brats")
    permuted = _permuted_bundle(brats_bundle, tmp_path / "permuted", ["FLAIR", "T1c", "T1", "T2"])
    sources = {s: str(data / "brain" / "nifti" / CASE / f"{CASE}_{s}.nii.gz") for s in ("t1", "t1ce", "t2", "flair")}
    item = {"case_id": CASE, "sources": sources}
    probabilities = []
    for bundle in (brats_bundle, permuted):
        model, meta = load_model(bundle, pipeline="brats")
        case = pipeline.transforms(meta["preprocessing"], train=False)(item).case
        probabilities.append(segment(model, case, roi_size=meta["preprocessing"]["roi_size"]))
    assert meta["preprocessing"]["channels"] == ["flair", "t1ce", "t1", "t2"]
    assert np.allclose(probabilities[0], probabilities[1], atol=1e-5)
    # the check can fail: the permuted model fed the original order gives other probabilities
    original_order = pipeline.transforms({"channels": ["t1ce", "t1", "t2", "flair"]}, train=False)(item).case
    wrong = segment(model, original_order, roi_size=meta["preprocessing"]["roi_size"])
    assert np.abs(wrong - probabilities[0]).max() > 1e-3


def test_bundle_ensemble_members_load_once_and_must_share_the_channel_order(
    data: Path, brats_bundle: Path, tmp_path: Path
) -> None:
    nifti = str(data / "brain" / "nifti")
    member = write_brats_bundle(tmp_path / "member", seed=1, roi_size=ROI)
    args = ["run", "brats", nifti, "--weights", str(brats_bundle), "--uncertainty", "ensemble", "-q"]
    result = _run(*args, "-o", str(tmp_path / "ok"), "--ensemble-weights", str(member))
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "ok" / "run.json").read_text())
    assert run["result_settings"]["ensemble_weights_sha256"] == [model_sha256(member)]
    assert (tmp_path / "ok" / CASE / f"{CASE}_unc_whole.nii.gz").is_file()
    permuted = _permuted_bundle(member, tmp_path / "permuted", ["FLAIR", "T1c", "T1", "T2"])
    refused = _run(*args, "-o", str(tmp_path / "refused"), "--ensemble-weights", str(permuted))
    assert refused.exit_code == 2 and "reads the channels as" in refused.output and "permuted" in refused.output
    assert not (tmp_path / "refused" / "results.csv").exists()


def test_densenet_bundle_runs_with_heat_maps_and_evaluates(data: Path, tmp_path: Path) -> None:
    bundle = write_classifier_bundle(tmp_path / "cxr_bundle", "pneumonia", image_size=(64, 64))
    out = tmp_path / "run"
    images = data / "cxr" / "stage_2_train_images"
    result = _run("run", "pneumonia", str(images), "-o", str(out), "--weights", str(bundle), "-q")
    assert result.exit_code == 0, result.output
    rows = _rows(out / "results.csv")
    assert len(rows) == 4 and {r["heatmap"] for r in rows} == {"grad-cam"}
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["weights"]["source"]["values"]["intensity"]["from"].endswith("ScaleIntensityd")
    assert run["settings"]["preprocessing"]["image_size"] == [64, 64] and run["notes"] == []
    ev = tmp_path / "eval"
    result = _run("evaluate", "pneumonia", str(data / "cxr"), "-o", str(ev), "--weights", str(bundle), "--n-boot", "5")
    assert result.exit_code == 0, result.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and metrics["weights"]["architecture"] == "monai"
    assert "Source: bundle" in (ev / "report.html").read_text()


def test_torchscript_with_card_runs_without_heat_maps_and_evaluates(data: Path, tmp_path: Path) -> None:
    model = write_torchscript(tmp_path / "cxr.ts", "pneumonia")
    out = tmp_path / "run"
    images = data / "cxr" / "stage_2_train_images"
    result = _run("run", "pneumonia", str(images), "-o", str(out), "--weights", str(model), "-q")
    assert result.exit_code == 0, result.output
    rows = _rows(out / "results.csv")
    assert len(rows) == 4 and {r["heatmap"] for r in rows} == {"none"} and {r["n_boxes"] for r in rows} == {"0"}
    assert all(r["overlay"] and list((out / "studies").glob(f"*/{r['overlay']}")) for r in rows)  # no heat, an image
    run = json.loads((out / "run.json").read_text())
    assert run["weights"]["source"]["kind"] == "torchscript"
    assert run["weights"]["source"]["values"]["classes"]["from"] == "model card cxr.yaml"
    assert len(run["notes"]) == 1 and "torchscript" in run["notes"][0] and "hooks" in run["notes"][0]
    assert "No Grad-CAM heat maps" in (out / "report.html").read_text()
    ev = tmp_path / "eval"
    result = _run("evaluate", "pneumonia", str(data / "cxr"), "-o", str(ev), "--weights", str(model), "--n-boot", "5")
    assert result.exit_code == 0, result.output
    assert json.loads((ev / "metrics.json").read_text())["weights"]["sha256"] == model_sha256(model)
    # the card is part of the model: another threshold in it is another model for a rerun
    write_card(tmp_path / "cxr.yaml", **classifier_card("pneumonia", threshold=0.3))
    refused = _run("run", "pneumonia", str(images), "-o", str(out), "--weights", str(model), "-q")
    assert refused.exit_code == 2 and "weights_sha256" in refused.output


def test_exported_program_runs(data: Path, tmp_path: Path) -> None:
    model = write_exported(tmp_path / "cxr.pt2", "pneumonia")
    out = tmp_path / "run"
    images = data / "cxr" / "stage_2_train_images"
    result = _run("run", "pneumonia", str(images), "-o", str(out), "--weights", str(model), "-q")
    assert result.exit_code == 0, result.output
    assert len(_rows(out / "results.csv")) == 4
    run = json.loads((out / "run.json").read_text())
    assert run["weights"]["architecture"] == "torch.export" and "torch.export" in run["notes"][0]


def test_code_in_a_bundle_needs_trust_model_code(data: Path, tmp_path: Path) -> None:
    from model_files import BRATS_NETWORK_DEF

    bundle = write_brats_bundle(tmp_path / "b", roi_size=ROI, network_def={**BRATS_NETWORK_DEF, "init_filters": "$16"})
    nifti = str(data / "brain" / "nifti")
    out = tmp_path / "out"
    refused = _run("run", "brats", nifti, "-o", str(out), "--weights", str(bundle), "-q")
    assert refused.exit_code == 2, refused.output
    assert "network_def.init_filters" in refused.output and "--trust-model-code" in refused.output
    assert "Traceback" not in refused.output and not (out / "results.csv").exists()
    refused = _run("evaluate", "brats", nifti, "-o", str(tmp_path / "ev"), "--weights", str(bundle))
    assert refused.exit_code == 2 and "network_def.init_filters" in refused.output
    trusted = _run("run", "brats", nifti, "-o", str(out), "--weights", str(bundle), "--trust-model-code", "-q")
    assert trusted.exit_code == 0, trusted.output
    assert json.loads((out / "run.json").read_text())["weights"]["source"]["trust_model_code"] is True


def _truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


@pytest.mark.parametrize("kind", ["checkpoint", "bundle zip", "torchscript", "torch.export", "card"])
def test_broken_models_and_cards_exit_2_naming_the_file(
    kind: str, data: Path, untrained_weights: dict[str, Path], brats_bundle: Path, tmp_path: Path
) -> None:
    if kind == "checkpoint":
        model = _truncate(Path(shutil.copy(untrained_weights["pneumonia"], tmp_path / "broken.pt")))
        named = "broken.pt"
    elif kind == "bundle zip":
        archive = shutil.make_archive(str(tmp_path / "broken"), "zip", brats_bundle.parent, brats_bundle.name)
        model = _truncate(Path(archive))
        named = "broken.zip"
    elif kind == "torchscript":
        model, named = _truncate(write_torchscript(tmp_path / "broken.ts", "pneumonia")), "broken.ts"
    elif kind == "torch.export":
        model, named = _truncate(write_exported(tmp_path / "broken.pt2", "pneumonia")), "broken.pt2"
    else:
        model = write_torchscript(tmp_path / "model.ts", "pneumonia")
        card = classifier_card("pneumonia")
        del card["classes"]
        write_card(tmp_path / "model.yaml", **card)
        named = "'classes'"
    images = str(data / "cxr" / "stage_2_train_images")
    for command in (["run", "pneumonia", images, "-q"], ["evaluate", "pneumonia", str(data / "cxr")]):
        result = _run(*command, "-o", str(tmp_path / command[0]), "--weights", str(model))
        assert result.exit_code == 2, result.output
        assert named in result.output and "Traceback" not in result.output
        assert not (tmp_path / command[0] / "results.csv").exists()
