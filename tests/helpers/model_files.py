"""Model files as users bring them, built in the tests with random weights: MONAI bundles with the
Model Zoo's published structure (``brats_mri_segmentation``: SegResNet ``blocks_down (1, 2, 2, 4)``,
``blocks_up (1, 1, 1)``, ``init_filters 16``, 4 in / 3 out; a DenseNet121 classifier), TorchScript
and ``torch.export`` files with their model cards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

#: The network_def of MONAI's brats_mri_segmentation bundle.
BRATS_NETWORK_DEF: dict[str, Any] = {
    "_target_": "SegResNet",
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "init_filters": 16,
    "in_channels": 4,
    "out_channels": 3,
    "dropout_prob": 0.2,
}
CLASSES = {"pneumonia": ["no_pneumonia", "pneumonia"], "density": ["A", "B", "C", "D"]}


def _write(root: Path, metadata: dict, inference: dict, state: dict[str, torch.Tensor], zipped: bool) -> Path:
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    torch.save(state, root / "models" / "model.pt")
    if not zipped:
        return root
    archive = shutil.make_archive(str(root), "zip", root.parent, root.name)  # one top folder, as the Zoo ships
    shutil.rmtree(root)
    return Path(archive)


def _format(inputs: dict, outputs: dict) -> dict:
    return {"inputs": {"image": inputs}, "outputs": {"pred": outputs}}


def write_brats_bundle(root: Path, *, seed: int = 0, zipped: bool = False, roi_size=(32, 32, 32), **extra) -> Path:
    """The Model Zoo BraTS bundle's structure (channels T1c, T1, T2, FLAIR -> TC, WT, ET, sigmoid),
    random weights. ``extra`` entries replace top-level inference config keys (e.g. a ``$``
    expression in ``network_def``)."""
    from monai.networks.nets import SegResNet

    torch.manual_seed(seed)
    kwargs = {k: v for k, v in BRATS_NETWORK_DEF.items() if k != "_target_"}
    state = SegResNet(**kwargs).state_dict()
    channels = {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}
    regions = {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}
    metadata = {
        "version": "0.3.0",
        "task": "Multimodal Brain Tumor segmentation",
        "network_data_format": _format(
            {"type": "image", "num_channels": 4, "channel_def": channels},
            {"type": "image", "format": "segmentation", "num_channels": 3, "channel_def": regions},
        ),
    }
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": dict(BRATS_NETWORK_DEF),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi_size), "sw_batch_size": 1, "overlap": 0.5},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            ],
        },
        **extra,
    }
    return _write(Path(root), metadata, inference, state, zipped)


def write_classifier_bundle(
    root: Path,
    pipeline: str,
    *,
    seed: int = 0,
    image_size=(64, 64),
    in_channels: int = 3,
    zipped: bool = False,
    **extra,
) -> Path:
    """A DenseNet121 classification bundle as the Zoo's breast density bundle is laid out: grey
    copied to ``in_channels`` channels, min-max scaling to [0, 1], ``Resized``, sigmoid outputs."""
    from monai.networks.nets import DenseNet121

    torch.manual_seed(seed)
    classes = CLASSES[pipeline]
    network_def = {
        "_target_": "DenseNet121",
        "spatial_dims": 2,
        "in_channels": in_channels,
        "out_channels": len(classes),
    }
    state = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=len(classes)).state_dict()
    metadata = {
        "version": "0.1.0",
        "network_data_format": _format(
            {"type": "image", "num_channels": in_channels, "channel_def": {"0": "image"}},
            {
                "type": "image",
                "format": "labels",
                "num_channels": len(classes),
                "channel_def": {str(i): c for i, c in enumerate(classes)},
            },
        ),  # fmt: skip
    }
    inference = {
        "network_def": network_def,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
                {"_target_": "Resized", "keys": "image", "spatial_size": list(image_size)},
            ],
        },
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}],
        },
        **extra,
    }
    return _write(Path(root), metadata, inference, state, zipped)


def write_card(path: Path, **fields: Any) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def classifier_card(pipeline: str, *, image_size=(64, 64), **overrides: Any) -> dict[str, Any]:
    """A complete card for a one-channel softmax classifier (the fields a user writes)."""
    card = {
        "task": pipeline,
        "channels": ["grey"],
        "image_size": list(image_size),
        "intensity": {"kind": "percentile", "lower": 0.5, "upper": 99.5, "range": [0.0, 1.0]},
        "classes": CLASSES[pipeline],
        "activation": "softmax",
        "gradcam_layer": "class_layers.relu",
        **({"threshold": 0.5} if pipeline == "pneumonia" else {}),
    }
    card.update(overrides)
    return card


def write_torchscript(path: Path, pipeline: str, *, seed: int = 0, image_size=(64, 64), card: bool = True) -> Path:
    """A scripted MONAI DenseNet (compact) classifier and, with ``card``, its model card beside it."""
    from monai.networks.nets import DenseNet

    torch.manual_seed(seed)
    network = DenseNet(
        spatial_dims=2, in_channels=1, out_channels=len(CLASSES[pipeline]),
        init_features=8, growth_rate=4, block_config=(2, 2), bn_size=2,
    ).eval()  # fmt: skip
    torch.jit.save(torch.jit.script(network), str(path))
    if card:
        write_card(path.with_suffix(".yaml"), **classifier_card(pipeline, image_size=image_size))
    return path


def write_exported(path: Path, pipeline: str, *, seed: int = 0, image_size=(64, 64)) -> Path:
    """The same classifier as a ``torch.export`` program (``.pt2``) with its card."""
    from monai.networks.nets import DenseNet

    torch.manual_seed(seed)
    network = DenseNet(
        spatial_dims=2, in_channels=1, out_channels=len(CLASSES[pipeline]),
        init_features=8, growth_rate=4, block_config=(2, 2), bn_size=2,
    ).eval()  # fmt: skip
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(network, (torch.rand(2, 1, *image_size),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    write_card(path.with_suffix(".yaml"), **classifier_card(pipeline, image_size=image_size))
    return path
