"""The one model loader: MONAI bundles (Model Zoo structure), TorchScript and torch.export files
with model cards, the adapters, and the refusals (code in configs, missing or contradicted card
fields, corrupt files)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from model_files import (
    BRATS_NETWORK_DEF,
    classifier_card,
    write_brats_bundle,
    write_card,
    write_classifier_bundle,
    write_exported,
    write_torchscript,
)

from medimg.model_sources import ModelAdapter, ModelSourceError, load_model, model_kind, model_sha256
from medimg.model_sources.monai_config import UntrustedConfigError, build_monai_network, check_network_config
from medimg.models import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def brats_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_brats_bundle(tmp_path_factory.mktemp("b") / "brats_mri_segmentation")


def test_the_model_zoo_brats_bundle_is_read_as_it_states(brats_bundle: Path) -> None:
    model, meta = load_model(brats_bundle, pipeline="brats")
    assert meta["architecture"] == "monai" and meta["labels"] == ["TC", "WT", "ET"]
    assert meta["preprocessing"]["channels"] == ["t1ce", "t1", "t2", "flair"]
    assert meta["preprocessing"]["roi_size"] == [32, 32, 32] and meta["preprocessing"]["overlap"] == 0.5
    values = meta["source"]["values"]
    assert values["channels"]["from"].endswith("inputs.image.channel_def")
    assert values["activation"] == {"value": "sigmoid", "from": "configs/inference.json: postprocessing: Activationsd"}
    assert set(meta["source"]["files"]) == {"configs/metadata.json", "configs/inference.json", "models/model.pt"}
    # The network is the bundle's own, with its weights: same output as SegResNet loaded by hand.
    from monai.networks.nets import SegResNet

    reference = SegResNet(**{k: v for k, v in BRATS_NETWORK_DEF.items() if k != "_target_"}).eval()
    reference.load_state_dict(torch.load(brats_bundle / "models" / "model.pt", weights_only=True))
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_a_zipped_bundle_equals_the_folder(brats_bundle: Path, tmp_path: Path) -> None:
    archive = write_brats_bundle(tmp_path / "brats_mri_segmentation", zipped=True)
    assert archive.suffix == ".zip" and model_kind(archive) == "bundle"
    (a, meta_a), (b, meta_b) = load_model(archive, pipeline="brats"), load_model(brats_bundle, pipeline="brats")
    assert meta_a["source"]["files"] == meta_b["source"]["files"]  # same seed: same bytes
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_regions_in_another_order_are_put_in_tc_wt_et_order(tmp_path: Path) -> None:
    bundle = write_brats_bundle(tmp_path / "b")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    pred = metadata["network_data_format"]["outputs"]["pred"]
    pred["channel_def"] = {"0": "Enhancing tumor", "1": "Tumor core", "2": "Whole tumor"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    model, _ = load_model(bundle, pipeline="brats")
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        raw = model.network(x)
        assert torch.equal(model(x), raw[:, [1, 2, 0]])


def test_a_classifier_bundle_gives_its_own_sigmoid_probabilities(tmp_path: Path) -> None:
    bundle = write_classifier_bundle(tmp_path / "density", "density", image_size=(32, 32))
    model, meta = load_model(bundle, pipeline="density")
    assert meta["labels"] == ["A", "B", "C", "D"] and meta["preprocessing"]["image_size"] == [32, 32]
    assert meta["preprocessing"]["intensity"] == {"lower_percentile": 0.0, "upper_percentile": 100.0, "range": [0, 1]}
    assert meta["gradcam_layer"] == "network.class_layers.relu"
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        sig = torch.sigmoid(model.network(x.expand(-1, 3, -1, -1)))
        assert torch.allclose(torch.softmax(model(x), 1), sig / sig.sum(1, keepdim=True), atol=1e-6)


def test_adapter_single_logit_and_probabilities() -> None:
    z = torch.tensor([[0.3], [-2.0]])
    single = ModelAdapter(torch.nn.Identity(), activation="sigmoid")
    assert torch.allclose(torch.softmax(single(z), 1)[:, 1], torch.sigmoid(z[:, 0]))
    p = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert torch.allclose(torch.softmax(ModelAdapter(torch.nn.Identity(), activation="probabilities")(p), 1), p)
    with pytest.raises(ValueError, match="sigmoid logit per region"):
        ModelAdapter(torch.nn.Identity(), activation="softmax", task="segmentation")


@pytest.mark.parametrize(
    ("network_def", "key"),
    [
        ({**BRATS_NETWORK_DEF, "act": "$__import__('os').system('true')"}, "network_def.act"),
        ({"_target_": "monai.networks.utils.save_state", "src": {}, "path": "x"}, "network_def._target_"),
        ({"_target_": "os.system", "command": "true"}, "network_def._target_"),
        ({**BRATS_NETWORK_DEF, "_mode_": "callable"}, "network_def._mode_"),
        ({**BRATS_NETWORK_DEF, "init_filters": "%other.json#x"}, "network_def.init_filters"),
    ],
)
def test_code_in_a_bundle_is_refused_naming_the_key(tmp_path: Path, network_def: dict, key: str) -> None:
    bundle = write_brats_bundle(tmp_path / "b", network_def=network_def)
    with pytest.raises(ModelSourceError, match=f"{key}: .*--trust-model-code"):
        load_model(bundle, pipeline="brats")


def test_trust_lets_an_expression_run(tmp_path: Path) -> None:
    bundle = write_brats_bundle(tmp_path / "b", network_def={**BRATS_NETWORK_DEF, "init_filters": "$8 * 2"})
    model, meta = load_model(bundle, pipeline="brats", trust_code=True)
    assert meta["source"]["trust_model_code"] is True and isinstance(model, ModelAdapter)


def test_references_inside_the_config_are_followed_and_checked() -> None:
    root = {"filters": 16, "evil": "$print(1)", "network_def": {**BRATS_NETWORK_DEF, "init_filters": "@filters"}}
    assert build_monai_network(root) is not None
    root["network_def"]["init_filters"] = "@evil"
    with pytest.raises(UntrustedConfigError, match="evil: a Python expression"):
        check_network_config(root["network_def"], root=root)


def test_a_card_fills_gaps_but_may_not_contradict(tmp_path: Path) -> None:
    bundle = write_classifier_bundle(tmp_path / "pn", "pneumonia", image_size=(32, 32))
    write_card(tmp_path / "card.yaml", threshold=0.3, gradcam_layer="features.denseblock4")
    _, meta = load_model(bundle, pipeline="pneumonia", card=tmp_path / "card.yaml")
    assert meta["training"]["operating_threshold"] == 0.3 and meta["gradcam_layer"] == "network.features.denseblock4"
    assert meta["source"]["values"]["threshold"]["from"] == "model card card.yaml"
    write_card(tmp_path / "bad.yaml", image_size=[64, 64])
    with pytest.raises(ModelSourceError, match=r"bad.yaml: 'image_size' is \[64, 64\] but .*Resized.* says \[32, 32\]"):
        load_model(bundle, pipeline="pneumonia", card=tmp_path / "bad.yaml")


def test_torchscript_and_export_run_with_their_cards(tmp_path: Path) -> None:
    for path in (write_torchscript(tmp_path / "m.ts", "pneumonia"), write_exported(tmp_path / "m.pt2", "pneumonia")):
        model, meta = load_model(path, pipeline="pneumonia")
        assert meta["architecture"] == model_kind(path) and meta["labels"] == ["no_pneumonia", "pneumonia"]
        assert set(meta["source"]["files"]) == {path.name, "m.yaml"}
        x = torch.rand(3, 1, 64, 64)
        with torch.no_grad():
            assert torch.allclose(model(x), model.network(x))  # softmax outputs pass through
    assert model_sha256(tmp_path / "m.ts") != model_sha256(tmp_path / "m.ts", card=tmp_path / "m.pt2")


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ({"task": "pneumonia", "channels": ["grey"]}, "missing 'image_size', 'intensity', 'classes', 'activation'"),
        (
            {**classifier_card("pneumonia"), "classes": ["a", "b", "c"]},
            "'classes' has 3 names; a pneumonia model has 2",
        ),
        ({**classifier_card("pneumonia"), "activation": "relu"}, "'activation' must be one of"),
        ({**classifier_card("pneumonia"), "task": "density"}, "for task 'density', not 'pneumonia'"),
        ({**classifier_card("pneumonia"), "colour": "blue"}, "unknown field 'colour'"),
    ],
)
def test_card_errors_name_the_field_and_the_file(tmp_path: Path, card: dict, message: str) -> None:
    path = write_torchscript(tmp_path / "m.ts", "pneumonia", card=False)
    write_card(tmp_path / "m.yaml", **card)
    with pytest.raises(ModelSourceError, match="m.yaml") as info:
        load_model(path, pipeline="pneumonia")
    assert message in str(info.value)


def test_a_model_file_without_a_card_says_which_fields_it_needs(tmp_path: Path) -> None:
    path = write_torchscript(tmp_path / "m.ts", "density", card=False)
    with pytest.raises(ModelSourceError, match=r"m.ts \(no model card found beside it\): missing 'channels'"):
        load_model(path, pipeline="density")


def _corrupt(tmp_path: Path) -> dict[str, Path]:
    ts = write_torchscript(tmp_path / "m.ts", "pneumonia")
    ts.write_bytes(ts.read_bytes()[:200])  # truncated
    pt2 = write_exported(tmp_path / "e.pt2", "pneumonia")
    pt2.write_bytes(b"not a zip at all")
    archive = write_brats_bundle(tmp_path / "z", zipped=True)
    archive.write_bytes(archive.read_bytes()[:-300])  # truncated zip
    folder = write_brats_bundle(tmp_path / "f")
    weights = folder / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    missing = write_brats_bundle(tmp_path / "m")
    (missing / "configs" / "metadata.json").unlink()
    checkpoint = tmp_path / "c.pt"
    checkpoint.write_bytes(b"\x80\x04garbage")
    return {"ts": ts, "pt2": pt2, "zip": archive, "weights": folder, "missing": missing, "checkpoint": checkpoint}


def test_corrupt_or_truncated_files_give_a_clear_error(tmp_path: Path) -> None:
    files = _corrupt(tmp_path)
    expected = {
        "ts": "could not be read as a torchscript file",
        "pt2": "could not be read as a torch.export file",
        "zip": "not a readable zip file",
        "weights": "models/model.pt could not be read",
        "missing": "missing configs/metadata.json",
        "checkpoint": "could not be read as a torch file",
    }
    for name, path in files.items():
        pipeline = "brats" if name in ("zip", "weights", "missing") else "pneumonia"
        with pytest.raises(ModelSourceError) as info:
            load_model(path, pipeline=pipeline)
        assert str(path) in str(info.value) and expected[name] in str(info.value), (name, str(info.value))


def test_a_zip_member_that_is_cut_short_is_an_error(tmp_path: Path) -> None:
    archive = write_brats_bundle(tmp_path / "z", zipped=True)
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tmp_path / "bad.zip", "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data[: len(data) // 2] if info.filename.endswith("model.pt") else data)
    with pytest.raises(ModelSourceError, match="bad.zip: models/model.pt could not be read"):
        load_model(tmp_path / "bad.zip", pipeline="brats")


def test_a_bundle_model_saved_as_a_medimg_checkpoint_rebuilds(brats_bundle: Path, tmp_path: Path) -> None:
    model, meta = load_model(brats_bundle, pipeline="brats")
    meta = {k: v for k, v in meta.items() if k in ("pipeline", "architecture", "network", "labels", "preprocessing")}
    path = save_checkpoint(tmp_path / "expanded.pt", model, {**meta, "training": {}})
    again, again_meta = load_checkpoint(path, pipeline="brats")
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert again_meta["network"]["config"]["_target_"] == "SegResNet"


def test_the_readme_card_is_a_valid_card(tmp_path: Path) -> None:
    from medimg.model_sources.card import read_card

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    card = read_card(_text(tmp_path / "cxr.yaml", block))
    assert card["task"] == "pneumonia" and card["channels"] == ["grey"] and card["image_size"] == [224, 224]
    assert card["gradcam_layer"] == "features.denseblock4"


def _text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_folder_that_is_not_a_bundle_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="is a folder but not a MONAI bundle"):
        load_model(tmp_path, pipeline="pneumonia")
