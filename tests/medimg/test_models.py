"""Network factory and checkpoints: shapes, Grad-CAM layers, round trips, refusals with clear messages."""

from __future__ import annotations

import hashlib
import io
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.visualize import GradCAM

from medimg import __version__
from medimg.models import (
    ARCHITECTURES,
    COMPACT_MAX_STATE_BYTES,
    SEGMENTATION_ARCHITECTURES,
    CheckpointError,
    build_network,
    file_sha256,
    gradcam_layer,
    load_checkpoint,
    save_checkpoint,
)


def meta(architecture: str = "compact", pipeline: str = "density", **network) -> dict:
    return {
        "pipeline": pipeline,
        "architecture": architecture,
        "network": {"spatial_dims": 2, "in_channels": 1, "out_channels": 4, **network},
        "labels": ["A", "B", "C", "D"],
        "preprocessing": {"size": [64, 64], "window": None},
        "training": {"epochs": 3, "lr": 1e-3},
    }


def state_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


# "monai" is a bundle's network, rebuilt from the config its checkpoint stores (tests/medimg/test_model_sources.py).
CLASSIFIERS = [a for a in ARCHITECTURES if a not in SEGMENTATION_ARCHITECTURES and a != "monai"]


@pytest.mark.parametrize("architecture", CLASSIFIERS)
def test_each_architecture_classifies_and_has_its_gradcam_layer(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_network(architecture, spatial_dims=2, in_channels=1, out_channels=3).eval()
    size = 80 if architecture == "inception_v3" else 64  # InceptionV3 needs at least 75 pixels
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    layer = gradcam_layer(architecture)
    assert layer in dict(model.named_modules())
    cam = GradCAM(nn_module=model, target_layers=layer)(x)  # MONAI's Grad-CAM hooks that layer
    assert cam.shape == (2, 1, size, size)
    assert torch.isfinite(cam).all() and cam.max() > 0


def test_compact_network_is_small_and_works_in_3d() -> None:
    model = build_network("compact", out_channels=2)
    assert state_bytes(model) < COMPACT_MAX_STATE_BYTES
    assert sum(p.numel() for p in model.parameters()) < 30_000
    # the documented bound also holds for the largest documented configuration
    assert state_bytes(build_network("compact", in_channels=4, out_channels=16)) < COMPACT_MAX_STATE_BYTES
    volume_model = build_network("compact", spatial_dims=3, out_channels=2).eval()
    with torch.no_grad():
        assert volume_model(torch.randn(1, 1, 24, 24, 24)).shape == (1, 2)
    # keyword arguments override the compact settings
    wider = build_network("compact", out_channels=2, init_features=24)
    assert wider.features.conv0.out_channels == 24


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'vit'; known: densenet121, compact, resnet18"):
        build_network("vit", out_channels=2)
    with pytest.raises(ValueError, match="known: densenet121"):
        gradcam_layer("vit")


def test_checkpoint_round_trip_keeps_weights_and_meta(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_network("compact", out_channels=4, block_config=(2, 3))
    with torch.no_grad():  # make the batch-norm buffers non-default too
        model.train()(torch.randn(4, 1, 32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = meta(block_config=(2, 3))
    started = datetime.now(timezone.utc).replace(microsecond=0)
    path = save_checkpoint(tmp_path / "sub" / "w.pt", model, info, extra={"note": "hello", "step": torch.tensor(5)})
    assert path == tmp_path / "sub" / "w.pt" and sorted(p.name for p in path.parent.iterdir()) == ["w.pt"]

    loaded, loaded_meta = load_checkpoint(path, pipeline="density", architecture="compact")
    assert not loaded.training
    after = loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert loaded_meta["network"] == {"spatial_dims": 2, "in_channels": 1, "out_channels": 4, "block_config": [2, 3]}
    for key in ("pipeline", "architecture", "labels", "preprocessing", "training"):
        assert loaded_meta[key] == info[key]
    assert loaded_meta["medimg_version"] == __version__
    created = datetime.fromisoformat(loaded_meta["created"])
    assert created.tzinfo is not None and created.utcoffset() == timedelta(0)
    assert started <= created <= datetime.now(timezone.utc)

    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "medimg-checkpoint" and raw["version"] == 1
    assert raw["note"] == "hello" and int(raw["step"]) == 5


def test_load_refuses_other_pipeline_and_architecture(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "density.pt", build_network("compact", out_channels=4), meta())
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path, pipeline="pneumonia")
    assert str(excinfo.value) == f"checkpoint {path} was trained for pipeline 'density', not 'pneumonia'"
    with pytest.raises(
        CheckpointError, match=re.escape(f"checkpoint {path} holds a 'compact' network, not 'resnet18'")
    ):
        load_checkpoint(path, architecture="resnet18")
    assert isinstance(excinfo.value, ValueError)


def test_load_refuses_files_that_are_not_medimg_checkpoints(tmp_path: Path) -> None:
    model = build_network("compact", out_channels=4)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {bare} is not a medimg checkpoint")):
        load_checkpoint(bare)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {garbage} could not be read")):
        load_checkpoint(garbage)

    pickled_module = tmp_path / "module.pt"
    torch.save(model, pickled_module)  # a whole pickled nn.Module: refused by weights_only
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {pickled_module} could not be read")):
        load_checkpoint(pickled_module)

    good = save_checkpoint(tmp_path / "good.pt", model, meta())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {truncated} could not be read")):
        load_checkpoint(truncated)

    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path / 'missing.pt'} does not exist")):
        load_checkpoint(tmp_path / "missing.pt")

    newer = tmp_path / "newer.pt"
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "version": 2}, newer)
    with pytest.raises(CheckpointError, match="format version 2"):
        load_checkpoint(newer)


def test_load_refuses_weights_that_do_not_fit_the_meta(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "w.pt", build_network("compact", out_channels=4), meta())
    payload = torch.load(path, weights_only=True)
    payload["meta"]["network"]["out_channels"] = 2  # meta now describes another head
    tampered = tmp_path / "tampered.pt"
    torch.save(payload, tampered)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tampered}: its weights do not fit")) as excinfo:
        load_checkpoint(tampered)
    assert "class_layers.out.weight" in str(excinfo.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["training"].update(lr=np.float32(1e-3)), "meta['training']['lr'] is not JSON-able"),
        (lambda m: m["preprocessing"].update(atlas=Path("/x")), "meta['preprocessing']['atlas'] is not JSON-able"),
        (lambda m: m["training"].update({1: "a"}), "meta['training'][1] is not a string"),
        (lambda m: m.pop("labels"), "lacks required key(s): labels"),
        (lambda m: m["network"].pop("out_channels"), "meta['network'] lacks out_channels"),
        (lambda m: m.update(labels=[0, 1]), "meta['labels'] must be a list of class names"),
    ],
)
def test_save_rejects_bad_meta(tmp_path: Path, change, message: str) -> None:
    info = meta()
    change(info)
    with pytest.raises(ValueError, match=re.escape(message)):
        save_checkpoint(tmp_path / "w.pt", build_network("compact", out_channels=4), info)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_save_rejects_reserved_extra_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved key"):
        save_checkpoint(tmp_path / "w.pt", build_network("compact", out_channels=4), meta(), extra={"meta": {}})


def test_file_sha256_streams(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3_000_001)
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == expected
    assert file_sha256(path, chunk_bytes=4096) == expected


@pytest.mark.parametrize("architecture", SEGMENTATION_ARCHITECTURES)
def test_segmentation_networks_are_dense_and_have_no_gradcam_layer(architecture: str) -> None:
    model = build_network(architecture, spatial_dims=3, in_channels=4, out_channels=3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 4, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)
    with pytest.raises(ValueError, match="segmentation network"):
        gradcam_layer(architecture)


def test_wrapper_registry_builds_and_loads_wrapped_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medimg.models as models

    monkeypatch.setattr(models, "_WRAPPERS", {})  # isolated from wrappers other modules registered
    received: list[dict] = []

    def builder(network: dict) -> torch.nn.Module:
        received.append(network)
        kwargs = {k: v for k, v in network.items() if k not in ("architecture", "wrapper")}
        return torch.nn.Sequential(build_network(network["architecture"], **kwargs))

    wrapper = {"name": "demo", "scale": 2}
    info = meta(wrapper=wrapper)
    with pytest.raises(ValueError, match=r"unknown network wrapper 'demo'.*import"):
        build_network("compact", **info["network"])
    path = save_checkpoint(tmp_path / "w.pt", torch.nn.Sequential(build_network("compact", out_channels=4)), info)
    with pytest.raises(CheckpointError, match="import"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"'attention'.*import saliency\.attention"):
        build_network("compact", out_channels=2, wrapper={"name": "attention"})

    models.register_wrapper("demo", builder)
    assert models.registered_wrappers() == ("demo",)
    model = build_network("compact", **info["network"])
    assert isinstance(model, torch.nn.Sequential)
    assert received[-1] == {
        "architecture": "compact",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 4,
        "wrapper": wrapper,
    }
    loaded, loaded_meta = load_checkpoint(path, architecture="compact")
    assert isinstance(loaded, torch.nn.Sequential) and loaded_meta["network"]["wrapper"] == wrapper
    assert not isinstance(build_network("compact", out_channels=2, wrapper=None), torch.nn.Sequential)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("nope", out_channels=2, wrapper=wrapper)
    with pytest.raises(ValueError, match="'name'"):
        build_network("compact", out_channels=2, wrapper={"heads": 1})
    with pytest.raises(TypeError, match="callable"):
        models.register_wrapper("bad", None)
