"""MONAI bundles (the Model Zoo's format) as medimg reads them: a folder or zip holding
``configs/metadata.json``, ``configs/inference.json`` (or ``.yaml``) and ``models/model.pt``
(a state dict) or ``models/model.ts`` (TorchScript).

What medimg takes from a bundle, never running its code (:func:`stated_values`):

- ``metadata.json`` ``network_data_format``: the input channels (``channel_def``, repeated when
  one grey channel is declared for several inputs) and the output classes or regions;
- the inference config, read as data: ``preprocessing`` (``ScaleIntensityd`` -> min-max,
  ``ScaleIntensityRangePercentilesd`` -> percentiles, ``NormalizeIntensityd`` with ``nonzero``
  and ``channel_wise`` -> z-score, ``Resized`` -> image size, ``Spacingd`` -> spacing), the
  ``inferer`` (``SlidingWindowInferer`` roi size and overlap) and ``postprocessing``
  (``Activationsd`` -> activation, ``AsDiscreted`` threshold). Steps medimg does not mirror are
  listed (``ignored_steps``) so that a run can say so;
- ``network_def``, built by :func:`medimg.model_sources.monai_config.build_monai_network` (MONAI
  network classes only, unless trusted).
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BundleError", "BundleFiles", "is_bundle", "read_bundle", "stated_values"]

#: Largest single bundle member read (bytes): a config is small; weights may be large.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_WEIGHTS_BYTES = 4 * 1024**3
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHT_NAMES = ("model.pt", "model.ts")
#: Preprocessing steps that need no counterpart: medimg's loader already does them.
_HARMLESS = {
    "LoadImaged",
    "LoadImage",
    "EnsureChannelFirstd",
    "EnsureChannelFirst",
    "AddChanneld",
    "EnsureTyped",
    "EnsureType",
    "ToTensord",
    "ToTensor",
    "CastToTyped",
    "Orientationd",
    "Compose",
}


class BundleError(ValueError):
    """A MONAI bundle is incomplete, unreadable or states something medimg cannot honour."""


@dataclass
class BundleFiles:
    """The parts of a bundle medimg reads, with their SHA-256 for ``run.json``."""

    path: Path
    metadata: dict[str, Any]
    config: dict[str, Any]
    config_name: str
    weights_name: str
    weights: bytes = field(repr=False)
    sha256: dict[str, str] = field(default_factory=dict)


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """A folder with ``configs/``, or a ``.zip`` file."""
    path = Path(path)
    return (path.is_dir() and (path / "configs").is_dir()) or (path.is_file() and path.suffix.lower() == ".zip")


def _parse(name: str, data: bytes, where: str) -> dict[str, Any]:
    import yaml

    try:
        text = data.decode("utf-8")
        parsed = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise BundleError(f"{where}: not valid {name.rsplit('.', 1)[-1].upper()} ({detail})") from exc
    if not isinstance(parsed, dict):
        raise BundleError(f"{where}: expected a mapping at the top, got {type(parsed).__name__}")
    return parsed


def _members(path: Path) -> dict[str, tuple[int, Any]]:
    """Relative name -> (size, reader) of the bundle's files (a zip's single top folder dropped)."""
    if path.is_dir():
        return {
            p.relative_to(path).as_posix(): (p.stat().st_size, p.read_bytes)
            for p in path.rglob("*")
            if p.is_file() and not p.is_symlink()
        }
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"bundle {path}: not a readable zip file ({exc})") from exc
    infos = [i for i in archive.infolist() if not i.is_dir()]
    tops = {i.filename.split("/", 1)[0] for i in infos}
    strip = len(tops) == 1 and all("/" in i.filename for i in infos)

    def reader(info: zipfile.ZipInfo) -> Any:
        return lambda: archive.read(info)

    return {(i.filename.split("/", 1)[1] if strip else i.filename): (i.file_size, reader(i)) for i in infos}


def _read(members: Mapping[str, tuple[int, Any]], name: str, limit: int, where: str) -> bytes:
    size, reader = members[name]
    if size > limit:
        raise BundleError(f"{where}: {name} is {size} bytes, more than the {limit} medimg reads")
    try:
        return bytes(reader())
    except (OSError, zipfile.BadZipFile, EOFError) as exc:  # a truncated zip member, an unreadable file
        raise BundleError(f"{where}: {name} could not be read ({exc})") from exc


def read_bundle(path: str | os.PathLike[str]) -> BundleFiles:
    """Read a bundle's metadata, inference config and weights (nothing is run).

    Raises:
        BundleError: a missing part (named), an unreadable file, bad JSON/YAML, too large.
    """
    import hashlib

    path = Path(path)
    where = f"bundle {path}"
    members = _members(path)
    config_name = next((f"configs/{n}" for n in CONFIG_NAMES if f"configs/{n}" in members), None)
    weights_name = next((f"models/{n}" for n in WEIGHT_NAMES if f"models/{n}" in members), None)
    missing = [
        what
        for what, found in (
            ("configs/metadata.json", "configs/metadata.json" in members),
            ("configs/inference.json (or .yaml)", config_name),
            ("models/model.pt (or model.ts)", weights_name),
        )
        if not found
    ]
    if missing:
        raise BundleError(f"{where}: not a complete MONAI bundle, missing {', '.join(missing)}")
    assert config_name is not None and weights_name is not None
    raw = {
        "configs/metadata.json": _read(members, "configs/metadata.json", MAX_CONFIG_BYTES, where),
        config_name: _read(members, config_name, MAX_CONFIG_BYTES, where),
        weights_name: _read(members, weights_name, MAX_WEIGHTS_BYTES, where),
    }
    return BundleFiles(
        path=path,
        metadata=_parse("metadata.json", raw["configs/metadata.json"], f"{where}: configs/metadata.json"),
        config=_parse(config_name, raw[config_name], f"{where}: {config_name}"),
        config_name=config_name,
        weights_name=weights_name,
        weights=raw[weights_name],
        sha256={name: hashlib.sha256(data).hexdigest() for name, data in raw.items()},
    )


def _literal(value: Any) -> bool:
    """A value written out in the config (not a ``$`` expression or an ``@``/``%`` reference)."""
    return not (isinstance(value, str) and value[:1] in ("$", "@", "%"))


def _transforms(config: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """The steps of a ``Compose`` (or a list) at ``config[key]``, as mappings."""
    item = config.get(key)
    if isinstance(item, Mapping):
        item = item.get("transforms", [item])
    return [t for t in item if isinstance(t, Mapping)] if isinstance(item, list) else []


def _short(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1]


def _channel_names(entry: Mapping[str, Any]) -> list[str] | None:
    """``channel_def`` in index order, a single name repeated for ``num_channels`` inputs."""
    definition = entry.get("channel_def")
    if not isinstance(definition, Mapping) or not definition:
        return None
    try:
        names = [str(definition[k]) for k in sorted(definition, key=lambda k: int(k))]
    except (TypeError, ValueError):
        return None
    count = entry.get("num_channels")
    if isinstance(count, int) and len(names) == 1 and count > 1:
        names = names * count
    return names


def _from_metadata(files: BundleFiles, stated: dict[str, tuple[Any, str]]) -> None:
    fmt = files.metadata.get("network_data_format")
    if not isinstance(fmt, Mapping):
        return
    where = "configs/metadata.json: network_data_format"
    inputs = fmt.get("inputs", {})
    image = inputs.get("image") if isinstance(inputs, Mapping) else None
    if isinstance(image, Mapping) and (names := _channel_names(image)):
        stated["channels"] = (names, f"{where}.inputs.image.channel_def")
    outputs = fmt.get("outputs", {})
    pred = outputs.get("pred") if isinstance(outputs, Mapping) else None
    if isinstance(pred, Mapping) and (names := _channel_names(pred)):
        stated["outputs"] = (names, f"{where}.outputs.pred.channel_def")


def _from_preprocessing(files: BundleFiles, stated: dict[str, tuple[Any, str]], ignored: list[str]) -> None:
    where = f"{files.config_name}: preprocessing"
    for step in _transforms(files.config, "preprocessing"):
        name = _short(step.get("_target_"))
        args = {k: v for k, v in step.items() if not k.startswith("_")}
        if not all(_literal(v) for v in args.values()):
            ignored.append(f"{name} (computed arguments)")
        elif name in ("ScaleIntensityd", "ScaleIntensity"):
            low, high = args.get("minv", 0.0), args.get("maxv", 1.0)
            stated["intensity"] = ({"kind": "minmax", "range": [low, high]}, f"{where}: {name}")
        elif name in ("ScaleIntensityRangePercentilesd", "ScaleIntensityRangePercentiles"):
            value = {"kind": "percentile", "lower": args.get("lower"), "upper": args.get("upper")}
            value["range"] = [args.get("b_min", 0.0), args.get("b_max", 1.0)]
            stated["intensity"] = (value, f"{where}: {name}")
        elif name in ("NormalizeIntensityd", "NormalizeIntensity") and args.get("nonzero") and args.get("channel_wise"):
            stated["intensity"] = ({"kind": "zscore"}, f"{where}: {name}")
        elif name in ("Resized", "Resize") and isinstance(args.get("spatial_size"), list):
            key = "image_size" if len(args["spatial_size"]) == 2 else "roi_size"
            stated[key] = (args["spatial_size"], f"{where}: {name}.spatial_size")
        elif name in ("Spacingd", "Spacing") and isinstance(args.get("pixdim"), list):
            stated["spacing"] = (args["pixdim"], f"{where}: {name}.pixdim")
        elif name not in _HARMLESS:
            ignored.append(name)


def _from_inference(files: BundleFiles, stated: dict[str, tuple[Any, str]]) -> None:
    inferer = files.config.get("inferer")
    if isinstance(inferer, Mapping) and _short(inferer.get("_target_")) == "SlidingWindowInferer":
        where = f"{files.config_name}: inferer"
        if isinstance(inferer.get("roi_size"), list):
            stated["roi_size"] = (inferer["roi_size"], f"{where}.roi_size")
        if isinstance(inferer.get("overlap"), (int, float)):
            stated["overlap"] = (inferer["overlap"], f"{where}.overlap")
    for step in _transforms(files.config, "postprocessing"):
        name = _short(step.get("_target_"))
        where = f"{files.config_name}: postprocessing: {name}"
        if name in ("Activationsd", "Activations"):
            if step.get("sigmoid") is True:
                stated["activation"] = ("sigmoid", where)
            elif step.get("softmax") is True:
                stated["activation"] = ("softmax", where)
        elif name in ("AsDiscreted", "AsDiscrete") and isinstance(step.get("threshold"), (int, float)):
            stated["threshold"] = (float(step["threshold"]), f"{where}.threshold")


def stated_values(files: BundleFiles) -> tuple[dict[str, tuple[Any, str]], list[str]]:
    """``(field -> (raw value, where it is stated), ignored preprocessing steps)``; the raw values
    still go through :func:`medimg.model_sources.card.check_field`. ``outputs`` (the output
    channel names) becomes ``classes`` or ``regions`` once the task is known."""
    stated: dict[str, tuple[Any, str]] = {}
    ignored: list[str] = []
    _from_metadata(files, stated)
    _from_preprocessing(files, stated, ignored)
    _from_inference(files, stated)
    return stated, ignored


def load_bundle_weights(files: BundleFiles, network: Any | None, *, map_location: Any = "cpu") -> Any:
    """The network with the bundle's weights (``model.pt``: a state dict, possibly under
    ``"model"``), or the TorchScript module of ``model.ts``.

    Raises:
        BundleError: unreadable weights (corrupt, truncated, pickled objects), or weights that
            do not fit ``network`` (the message names the file).
    """
    import torch

    from medimg.models import load_error_detail

    where = f"bundle {files.path}: {files.weights_name}"
    if files.weights_name.endswith(".ts"):
        try:
            with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(io.BytesIO(files.weights), map_location=map_location)
        except Exception as exc:  # torch raises RuntimeError and others for a bad archive
            raise BundleError(f"{where} is not a readable TorchScript file: {load_error_detail(exc)}") from exc
    try:
        state = torch.load(io.BytesIO(files.weights), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise BundleError(f"{where} could not be read (corrupt, truncated, or pickled objects): "
                          f"{load_error_detail(exc)}") from exc  # fmt: skip
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"{where}: not a state dict of tensors")
    assert network is not None
    try:
        network.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:500]
        raise BundleError(f"{where}: the weights do not fit the network of network_def: {detail}") from exc
    return network
