"""``medimg.model_sources.export``: the demo models as MONAI bundles and TorchScript files, read
back by ``monai.bundle`` and by medimg's own loader with the same outputs (within 1e-5); what
cannot be a bundle is refused; the output folder is written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoints import untrained_checkpoint
from model_files import write_brats_bundle, write_torchscript

from medimg.model_sources import ModelSourceError, load_model
from medimg.model_sources.bundle import read_bundle, stated_values
from medimg.model_sources.export import TOLERANCE, ExportError, export_model
from medimg.models import build_network, load_checkpoint, save_checkpoint

WEIGHTS = Path(__file__).resolve().parents[2] / "sample_data" / "weights"
DEMO = ("pneumonia", "density", "brats")


def _input(meta: dict, batch: int = 2, seed: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    pre = meta["preprocessing"]
    if meta["pipeline"] == "brats":
        return torch.randn(batch, 4, *pre["roi_size"], generator=generator)
    return torch.rand(batch, 1, *pre["image_size"], generator=generator)


def _probabilities(model: torch.nn.Module, x: torch.Tensor, pipeline: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return torch.sigmoid(out) if pipeline == "brats" else torch.softmax(out, dim=1)


def _largest_difference(a: Path, b: Path, pipeline: str) -> float:
    model_a, meta = load_model(a, pipeline=pipeline)
    model_b, _ = load_model(b, pipeline=pipeline)
    x = _input(meta)
    return float((_probabilities(model_a, x, pipeline) - _probabilities(model_b, x, pipeline)).abs().max())


@pytest.mark.parametrize("pipeline", DEMO)
def test_demo_models_round_trip_through_both_formats(tmp_path: Path, pipeline: str) -> None:
    source = WEIGHTS / f"{pipeline}.pt"
    bundle = export_model(source, tmp_path / "bundle", fmt="bundle")
    scripted = export_model(source, tmp_path / "ts", fmt="torchscript")
    assert sorted(p.relative_to(bundle.path).as_posix() for p in bundle.path.rglob("*") if p.is_file()) == [
        "configs/inference.json",
        "configs/metadata.json",
        "models/model.pt",
    ]
    assert sorted(p.name for p in scripted.path.iterdir()) == ["model.ts", "model.yaml"]
    for exported in (bundle.path, scripted.path / "model.ts"):
        assert _largest_difference(source, exported, pipeline) <= TOLERANCE
        _, meta = load_model(exported, pipeline=pipeline)
        _, original = load_checkpoint(source)
        assert meta["labels"] == original["labels"]
        assert meta["source"]["ignored_steps"] == []
        if pipeline == "pneumonia":
            assert meta["training"]["operating_threshold"] == original["training"]["operating_threshold"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "ts"]  # no temporary folder left


def test_the_comparison_fails_on_one_changed_weight(tmp_path: Path) -> None:
    source = WEIGHTS / "pneumonia.pt"
    bundle = export_model(source, tmp_path / "bundle", fmt="bundle").path
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    name = next(k for k in state if k.endswith("class_layers.out.weight"))
    state[name][1, 0] += 0.05
    torch.save(state, bundle / "models" / "model.pt")
    assert _largest_difference(source, bundle, "pneumonia") > TOLERANCE


@pytest.mark.parametrize("pipeline", ["pneumonia", "brats"])
def test_the_bundle_runs_with_monai_bundle(tmp_path: Path, pipeline: str) -> None:
    from monai.bundle import ConfigParser
    from monai.inferers import SimpleInferer, SlidingWindowInferer
    from monai.transforms import Compose

    source = WEIGHTS / f"{pipeline}.pt"
    bundle = export_model(source, tmp_path / "bundle", fmt="bundle").path
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    original, meta = load_checkpoint(source)
    x = _input(meta)
    assert (
        float((_probabilities(original, x, pipeline) - _probabilities(network, x, pipeline)).abs().max()) <= TOLERANCE
    )
    assert isinstance(parser.get_parsed_content("preprocessing"), Compose)
    assert isinstance(parser.get_parsed_content("postprocessing"), Compose)
    inferer = parser.get_parsed_content("inferer")
    fmt = parser.get_parsed_content("_meta_#network_data_format")
    if pipeline == "brats":
        assert isinstance(inferer, SlidingWindowInferer)
        assert list(inferer.roi_size) == meta["preprocessing"]["roi_size"]
        assert fmt["inputs"]["image"]["channel_def"] == {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}
        assert list(fmt["outputs"]["pred"]["channel_def"].values()) == ["Tumor core", "Whole tumor", "Enhancing tumor"]
    else:
        assert isinstance(inferer, SimpleInferer)
        assert fmt["inputs"]["image"]["channel_def"] == {"0": "image"}
        assert fmt["outputs"]["pred"]["channel_def"] == {"0": "no_pneumonia", "1": "pneumonia"}
        assert "synthetic phantoms only" in parser.get_parsed_content("_meta_#intended_use")


@pytest.mark.parametrize("pipeline", DEMO)
def test_every_exported_step_is_one_medimg_reads(tmp_path: Path, pipeline: str) -> None:
    bundle = export_model(WEIGHTS / f"{pipeline}.pt", tmp_path / "bundle", fmt="bundle").path
    stated, ignored = stated_values(read_bundle(bundle))
    assert ignored == []
    expected = {"channels", "outputs", "intensity", "activation"}
    expected |= {"roi_size", "overlap", "threshold"} if pipeline == "brats" else {"image_size"}
    expected |= {"threshold"} if pipeline == "pneumonia" else set()
    assert set(stated) == expected
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["monai_version"] and metadata["pytorch_version"] and metadata["version"]


def _tiny_checkpoint(path: Path, architecture: str, network: dict) -> Path:
    meta = {
        "pipeline": "pneumonia",
        "architecture": architecture,
        "network": network,
        "labels": ["no_pneumonia", "pneumonia"],
        "preprocessing": {"image_size": [80, 80], "intensity": {"lower_percentile": 0.5, "upper_percentile": 99.5,
                                                                "range": [0.0, 1.0]}, "voi": None},
        "training": {},
    }  # fmt: skip
    return save_checkpoint(path, build_network(architecture, **network), meta)


def test_networks_that_are_no_monai_class_are_refused_as_bundles(tmp_path: Path) -> None:
    network = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
    inception = _tiny_checkpoint(tmp_path / "inception.pt", "inception_v3", network)
    with pytest.raises(ExportError, match=r"inception_v3.*not one MONAI network class.*--format torchscript"):
        export_model(inception, tmp_path / "out", fmt="bundle")
    # the attention wrapper is refused from the checkpoint's meta, before its wrapper is needed
    gated = dict(network, wrapper={"name": "attention"})
    payload = torch.load(WEIGHTS / "pneumonia.pt", weights_only=True)
    payload["meta"]["network"] = gated
    torch.save(payload, tmp_path / "gated.pt")
    with pytest.raises(ExportError, match=r"attention wrapper.*--format torchscript"):
        export_model(tmp_path / "gated.pt", tmp_path / "out", fmt="bundle")
    script = write_torchscript(tmp_path / "m.ts", "pneumonia", image_size=(32, 32))
    with pytest.raises(ExportError, match="torchscript program"):
        export_model(script, tmp_path / "out", fmt="bundle", pipeline="pneumonia")
    assert not (tmp_path / "out").exists()
    # the same inception network does export as TorchScript (traced), and round trips
    result = export_model(inception, tmp_path / "inception", fmt="torchscript")
    assert result.how == "traced" and result.max_difference <= TOLERANCE


def test_foreign_models_re_export(tmp_path: Path) -> None:
    """A Model Zoo bundle whose regions come as ET, TC, WT re-exports in both formats (the region
    order survives); a bundle-derived checkpoint ("monai") and a TorchScript file too."""
    bundle = write_brats_bundle(tmp_path / "zoo", roi_size=(16, 16, 16))
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    pred = metadata["network_data_format"]["outputs"]["pred"]
    pred["channel_def"] = {"0": "Enhancing tumor", "1": "Tumor core", "2": "Whole tumor"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    for fmt in ("bundle", "torchscript"):
        out = export_model(bundle, tmp_path / f"zoo-{fmt}", fmt=fmt, pipeline="brats").path
        exported = out if fmt == "bundle" else out / "model.ts"
        assert _largest_difference(bundle, exported, "brats") <= TOLERANCE
        _, meta = load_model(exported, pipeline="brats")
        assert meta["network"]["adapter"]["output_order"] == [1, 2, 0]
    model, meta = load_model(bundle, pipeline="brats")
    save_checkpoint(tmp_path / "derived.pt", model, meta)
    out = export_model(tmp_path / "derived.pt", tmp_path / "derived", fmt="bundle").path
    assert _largest_difference(bundle, out, "brats") <= TOLERANCE
    script = write_torchscript(tmp_path / "m.ts", "density", image_size=(32, 32))
    out = export_model(script, tmp_path / "ts", fmt="torchscript", pipeline="density").path
    assert _largest_difference(script, out / "model.ts", "density") <= TOLERANCE


def test_the_output_folder_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    source = untrained_checkpoint(tmp_path / "w.pt", "density", size=(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; pass --overwrite"):
        export_model(source, out, fmt="bundle")
    assert (out / "keep.txt").read_text() == "mine"
    export_model(source, out, fmt="torchscript", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.ts", "model.yaml"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        export_model(source, tmp_path / "file", fmt="bundle", overwrite=True)
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(source, tmp_path / "new", fmt="onnx")
    with pytest.raises(ExportError, match="not 'pneumonia'"):
        export_model(source, tmp_path / "new", fmt="bundle", pipeline="pneumonia")
    with pytest.raises(ExportError, match="--pipeline"):
        export_model(out / "model.ts", tmp_path / "new", fmt="bundle")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelSourceError, match="bad.pt"):
        export_model(tmp_path / "bad.pt", tmp_path / "new", fmt="bundle")
    # nothing half-written beside OUT: only what the test made, and the finished export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "file", "out", "w.pt"]
