"""``medimg export`` end to end: the demo models exported to both formats give the same
probabilities as the checkpoints on the sample data, through each pipeline's own preprocessing
(the 2-D transforms; the brain case through ``pipelines.brats.segment``), and the command's errors
exit 2 with one line, no traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medimg.cli import app
from medimg.model_sources import load_model
from medimg.model_sources.export import TOLERANCE, export_model
from pipelines import get_pipeline

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
runner = CliRunner()


def _exports(tmp_path: Path, weights: Path) -> list[Path]:
    bundle = export_model(weights, tmp_path / "bundle", fmt="bundle").path
    scripted = export_model(weights, tmp_path / "ts", fmt="torchscript").path
    return [bundle, scripted / "model.ts"]


def _probabilities(weights: Path, pipeline: str, items: list[dict]) -> np.ndarray:
    """Softmax probabilities of the model at ``weights`` on ``items``, through its own preprocessing."""
    task = get_pipeline(pipeline)
    model, meta = load_model(weights, pipeline=pipeline)
    transform = task.transforms(meta["preprocessing"], train=False)
    batch = torch.stack([torch.as_tensor(task.load(item, transform)) for item in items])
    with torch.no_grad():
        return torch.softmax(model(batch), dim=1).numpy()


@pytest.mark.parametrize(("pipeline", "data"), [("pneumonia", "cxr"), ("density", "mammo/site_a")])
def test_exports_give_the_same_probabilities_on_the_sample_images(tmp_path: Path, pipeline: str, data: str) -> None:
    weights = SAMPLE / "weights" / f"{pipeline}.pt"
    items = get_pipeline(pipeline).load_dataset(SAMPLE / data)[:4]
    expected = _probabilities(weights, pipeline, items)
    assert expected.shape == (4, 2 if pipeline == "pneumonia" else 4)
    _, meta = load_model(weights, pipeline=pipeline)
    for exported in _exports(tmp_path, weights):
        assert np.abs(_probabilities(exported, pipeline, items) - expected).max() <= TOLERANCE
        assert load_model(exported, pipeline=pipeline)[1]["preprocessing"] == meta["preprocessing"]


def test_exports_give_the_same_tumour_probabilities_on_the_sample_case(tmp_path: Path) -> None:
    import nibabel as nib
    from monai.transforms import SpatialCrop

    from pipelines.brats import segment
    from pipelines.brats_inputs import find_nifti_cases, load_case

    weights = SAMPLE / "weights" / "brats.pt"
    cases, errors = find_nifti_cases(SAMPLE / "brain" / "nifti")
    assert not errors and len(cases) == 1
    case_id, sources = next(iter(cases.items()))
    # a crop around the tumour keeps it fast: 3 windows of the demo's 48^3 ROI (at overlap 0.5; 2 at
    # 0.25, so the overlap matters) instead of the 18 that cover the whole case
    tumour = np.argwhere(np.asarray(nib.load(sources["seg"]).dataobj) > 0).mean(axis=0).round().astype(int)
    crop = SpatialCrop(roi_center=tumour.tolist(), roi_size=(80, 48, 48))

    def probabilities(path: Path) -> np.ndarray:
        model, meta = load_model(path, pipeline="brats")
        pre = meta["preprocessing"]
        case = crop(load_case(case_id, sources, channels=pre["channels"]))
        return segment(model, case, roi_size=pre["roi_size"], spacing=pre["spacing"], overlap=pre["overlap"])

    expected = probabilities(weights)
    assert expected.shape == (3, 80, 48, 48) and expected.max() > 0.5  # the demo model finds the phantom's tumour
    for exported in _exports(tmp_path, weights):
        assert np.abs(probabilities(exported) - expected).max() <= TOLERANCE


def test_the_attention_model_exports_as_torchscript_only(tmp_path: Path) -> None:
    weights = SAMPLE / "weights" / "pneumonia_attention.pt"
    refused = runner.invoke(app, ["export", "--weights", str(weights), "--format", "bundle", "-o", str(tmp_path / "b")])
    assert refused.exit_code == 2
    assert "attention wrapper" in refused.output and "--format torchscript" in refused.output
    assert not (tmp_path / "b").exists()
    done = runner.invoke(
        app, ["export", "--weights", str(weights), "--format", "torchscript", "-o", str(tmp_path / "t")]
    )
    assert done.exit_code == 0, done.output
    assert "traced" in done.output and "largest output difference" in done.output
    items = get_pipeline("pneumonia").load_dataset(SAMPLE / "cxr")[:3]
    expected = _probabilities(weights, "pneumonia", items)
    assert np.abs(_probabilities(tmp_path / "t" / "model.ts", "pneumonia", items) - expected).max() <= TOLERANCE


@pytest.mark.parametrize(
    ("make", "arguments", "message"),
    [
        (lambda p: p.write_bytes(b"garbage"), [], "could not be read"),
        (lambda p: None, [], "does not exist"),
        (lambda p: p.write_bytes(b"garbage"), ["--format", "onnx"], "unknown export format"),
        (lambda p: p.write_bytes(b"x"), ["--pipeline", "brats"], "could not be read"),
    ],
)
def test_bad_input_exits_2_without_a_traceback(tmp_path: Path, make, arguments: list[str], message: str) -> None:
    weights = tmp_path / "model.pt"
    make(weights)
    result = runner.invoke(app, ["export", "--weights", str(weights), "-o", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out").exists()


def test_an_existing_output_needs_overwrite(tmp_path: Path) -> None:
    weights = SAMPLE / "weights" / "density.pt"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    command = ["export", "--weights", str(weights), "--format", "bundle", "-o", str(tmp_path / "out")]
    refused = runner.invoke(app, command)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    done = runner.invoke(app, [*command, "--overwrite"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["configs", "models"]
