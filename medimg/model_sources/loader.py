"""One model loader for every command: ``--weights`` may be a medimg checkpoint, a MONAI bundle
(folder or zip), a TorchScript file (``.ts``) or a ``torch.export`` program (``.pt2``).

:func:`load_model` returns ``(model, meta)`` in the medimg checkpoint's shape whatever the source,
so the pipelines do not care where a model came from: ``meta`` holds ``pipeline``,
``architecture`` (``"monai"``, ``"torchscript"``, ``"torch.export"`` for foreign models),
``network``, ``labels``, ``preprocessing``, ``training`` (the operating threshold), and
``source``: the kind, the SHA-256 of every file read, and each value taken from the bundle or the
card with where it came from. Foreign models are wrapped in a
:class:`~medimg.model_sources.adapters.ModelAdapter` so that they take medimg's inputs and give
medimg's outputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medimg.model_sources.adapters import ModelAdapter
from medimg.model_sources.bundle import BundleError, is_bundle, load_bundle_weights, read_bundle, stated_values
from medimg.model_sources.card import Described, ModelCardError, check_field, describe, read_card
from medimg.model_sources.monai_config import UntrustedConfigError, build_monai_network, resolved_config
from medimg.model_sources.scripted import SCRIPTED_SUFFIXES, ScriptedModelError, card_path_for, load_scripted
from medimg.models import CheckpointError, file_sha256, load_checkpoint

__all__ = ["ModelSourceError", "load_model", "model_kind", "model_sha256"]

#: The pipelines' own class names, used when a model gives a single sigmoid logit.
_DEFAULT_LABELS = {"pneumonia": ["no_pneumonia", "pneumonia"], "density": ["A", "B", "C", "D"]}
_REGIONS = ("TC", "WT", "ET")


class ModelSourceError(CheckpointError):
    """A model file, bundle or card cannot be used (the message names the file and the problem)."""


def model_kind(path: str | os.PathLike[str]) -> str:
    """``"bundle"``, ``"torchscript"``, ``"torch.export"`` or ``"checkpoint"`` for ``--weights``."""
    path = Path(path)
    if is_bundle(path):
        return "bundle"
    return SCRIPTED_SUFFIXES.get(path.suffix.lower(), "checkpoint")


def model_sha256(path: str | os.PathLike[str], card: str | os.PathLike[str] | None = None) -> str:
    """One SHA-256 for ``--weights`` (what a rerun compares): a file's own, or for a bundle folder
    the digest of its files' relative names and digests; a model card (given, or found beside a
    TorchScript/exported file) counts too."""
    import hashlib

    path = Path(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
            digest.update(f"{item.relative_to(path).as_posix()}\0{file_sha256(item)}\n".encode())
        own = digest.hexdigest()
    else:
        own = file_sha256(path)
    found = Path(card) if card is not None else (card_path_for(path) if model_kind(path) != "checkpoint" else None)
    if found is None or not found.is_file():
        return own
    return hashlib.sha256(f"{own}\0{file_sha256(found)}".encode()).hexdigest()


def load_model(
    path: str | os.PathLike[str],
    *,
    pipeline: str,
    map_location: Any = "cpu",
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The model at ``path`` for ``pipeline``, in eval mode on ``map_location``, and its meta.

    Args:
        path: a medimg checkpoint, a MONAI bundle folder or zip, a ``.ts`` or ``.pt2`` file.
        pipeline: the pipeline that will run it (``pneumonia``, ``density``, ``brats``).
        trust_code: let a bundle's config run code (``$`` expressions, any ``_target_``).
        card: a model card YAML; default: the one beside the file (bundles: optional).

    Raises:
        ModelSourceError: the message names the file (or card) and what is wrong.
    """
    kind = model_kind(path)
    try:
        if kind == "checkpoint" and Path(path).is_dir():
            raise ModelSourceError(
                f"model {path} is a folder but not a MONAI bundle (no configs/ folder with metadata.json and "
                "inference.json); --weights takes a checkpoint file, a bundle folder or zip, or a .ts/.pt2 file"
            )
        if kind == "checkpoint":
            model, meta = load_checkpoint(path, pipeline=pipeline, map_location=map_location, trust_code=trust_code)
            meta = dict(meta)
            meta.setdefault("source", {"kind": "checkpoint", "files": {Path(path).name: file_sha256(path)}})
            return model, meta
        if kind == "bundle":
            return _load_bundle(Path(path), pipeline, map_location, trust_code, card)
        return _load_scripted(Path(path), pipeline, map_location, card)
    except ModelSourceError:
        raise
    except (BundleError, ModelCardError, ScriptedModelError, UntrustedConfigError, CheckpointError) as exc:
        raise ModelSourceError(str(exc)) from exc
    except ValueError as exc:  # a network_def that does not build
        raise ModelSourceError(f"model {path}: {exc}") from exc


def _card(path: Path, card: str | os.PathLike[str] | None) -> tuple[dict[str, Any] | None, Path | None]:
    found = Path(card) if card is not None else card_path_for(path)
    if card is not None and not Path(card).is_file():
        raise ModelCardError(f"model card {card} does not exist")
    return (read_card(found), found) if found is not None else (None, None)


def _checked(stated: Mapping[str, tuple[Any, str]], pipeline: str, where: str) -> dict[str, tuple[Any, str]]:
    """Stated raw values through the card checks; ``outputs`` becomes ``classes`` or ``regions``."""
    out = {}
    for field, (value, source) in stated.items():
        if field == "outputs":
            field = "regions" if pipeline == "brats" else "classes"
        out[field] = (check_field(field, value, f"{where}: {source}"), source)
    return out


def _load_bundle(
    path: Path, pipeline: str, map_location: Any, trust_code: bool, card: str | os.PathLike[str] | None
) -> tuple[Any, dict[str, Any]]:
    files = read_bundle(path)
    raw, ignored = stated_values(files)
    card_values, card_path = _card(path, card)
    described = describe(
        _checked(raw, pipeline, f"bundle {path}"), card_values, card_path, pipeline=pipeline, model_path=path
    )
    network_def = None
    if files.weights_name.endswith(".ts"):
        network = load_bundle_weights(files, None, map_location=map_location)
    else:
        where = f"bundle {path}: {files.config_name}: network_def"
        network = build_monai_network(files.config, trust=trust_code, where=where)
        network = load_bundle_weights(files, network, map_location=map_location)
        network_def = resolved_config(files.config)
    source = {
        "kind": "bundle",
        "path": str(path),
        "files": dict(files.sha256) | ({card_path.name: file_sha256(card_path)} if card_path else {}),
        "ignored_steps": ignored,
        "trust_model_code": trust_code,
        "bundle_version": files.metadata.get("version"),
    }
    architecture = "monai" if network_def is not None else "torchscript"
    return _finish(network, described, pipeline, architecture, network_def, source, map_location)


def _load_scripted(
    path: Path, pipeline: str, map_location: Any, card: str | os.PathLike[str] | None
) -> tuple[Any, dict[str, Any]]:
    module, kind = load_scripted(path, map_location=map_location)
    card_values, card_path = _card(path, card)
    described = describe({}, card_values, card_path, pipeline=pipeline, model_path=path)
    files = {path.name: file_sha256(path)} | ({card_path.name: file_sha256(card_path)} if card_path else {})
    source = {"kind": kind, "path": str(path), "files": files, "ignored_steps": []}
    return _finish(module, described, pipeline, kind, None, source, map_location)


def _finish(
    network: Any,
    described: Described,
    pipeline: str,
    architecture: str,
    network_def: dict[str, Any] | None,
    source: dict[str, Any],
    map_location: Any,
) -> tuple[Any, dict[str, Any]]:
    """Wrap the network in its adapter and write the medimg meta."""
    values = described.values
    segmentation = pipeline == "brats"
    adapter = {
        "activation": values["activation"],
        "repeat_channels": 0 if segmentation else len(values["channels"]),
        "task": "segmentation" if segmentation else "classification",
        "output_order": [values["regions"].index(r) for r in _REGIONS] if segmentation else None,
    }
    model = ModelAdapter(network, **adapter)
    model.to(map_location)
    if architecture != "torch.export":  # exported programs refuse train()/eval(); they are exported in eval
        model.eval()
    source["values"] = {f: {"value": v, "from": described.sources.get(f, "")} for f, v in sorted(values.items())}
    labels = list(_REGIONS) if segmentation else values["classes"]
    if not segmentation and len(labels) == 1:
        labels = _DEFAULT_LABELS[pipeline]
    meta = {
        "pipeline": pipeline,
        "architecture": architecture,
        "network": {
            "spatial_dims": 3 if segmentation else 2,
            "in_channels": 4 if segmentation else 1,
            "out_channels": len(labels),
            "adapter": adapter,
            **({"config": network_def} if network_def is not None else {}),
        },
        "labels": labels,
        "preprocessing": _preprocessing(values, segmentation),
        "training": {"operating_threshold": values.get("threshold", 0.5)} if pipeline == "pneumonia" else {},
        "gradcam_layer": _gradcam_layer(values.get("gradcam_layer"), network_def),
        "source": source,
    }
    return model, meta


def _preprocessing(values: Mapping[str, Any], segmentation: bool) -> dict[str, Any]:
    if segmentation:
        return {
            "channels": list(values["channels"]),
            "labels": "brats2020",
            "spacing": values.get("spacing"),
            "roi_size": list(values["roi_size"]),
            "overlap": values.get("overlap", 0.5),
            "intensity": "per-channel z-score over non-zero voxels",
        }
    return {"image_size": list(values["image_size"]), "intensity": dict(values["intensity"]), "voi": None}


def _gradcam_layer(stated: str | None, network_def: Mapping[str, Any] | None) -> str | None:
    """The adapter-relative Grad-CAM layer: the card's, else the known one of a MONAI DenseNet/ResNet."""
    if stated:
        return f"network.{stated}"
    target = str((network_def or {}).get("_target_", "")).rsplit(".", 1)[-1]
    known = {"DenseNet121": "class_layers.relu", "DenseNet": "class_layers.relu", "DenseNet169": "class_layers.relu"}
    known |= {"ResNet": "layer4", "resnet18": "layer4", "resnet34": "layer4", "resnet50": "layer4"}
    return f"network.{known[target]}" if target in known else None
