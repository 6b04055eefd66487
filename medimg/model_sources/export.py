"""Export a model for use outside medimg: a MONAI bundle, or TorchScript with a model card.

:func:`export_model` reads the model as every command does (:func:`~medimg.model_sources.load_model`:
a medimg checkpoint, or a bundle, TorchScript or ``torch.export`` file), writes the export into a
temporary folder beside ``out``, loads it back with ``load_model`` and compares its outputs with
the source model's (softmax probabilities for the classifiers, sigmoid outputs for brats) on a
seeded random input. Only when they agree within :data:`TOLERANCE` is the folder renamed to ``out``.

- ``bundle``: ``configs/metadata.json`` (``network_data_format``: input channels, output classes or
  regions), ``configs/inference.json`` (``network_def``, ``preprocessing``, ``inferer``,
  ``postprocessing``, all plain data: no ``$`` expressions) and ``models/model.pt`` (the state
  dict). Every preprocessing step written is one that :mod:`medimg.model_sources.bundle` reads
  back. Only a network that is one MONAI class can be a bundle without custom code; others
  (``inception_v3``, the attention gate, TorchScript programs) are refused.
- ``torchscript``: ``model.ts`` (``torch.jit.script``, or ``torch.jit.trace`` where scripting
  fails) of the bare network, and ``model.yaml``, its model card (:mod:`medimg.model_sources.card`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medimg import __version__
from medimg.model_sources.adapters import ModelAdapter
from medimg.model_sources.loader import ModelSourceError, load_model, model_kind, model_sha256
from medimg.models import CheckpointError, model_gradcam_layer, monai_network_def, read_checkpoint

__all__ = ["FORMATS", "TOLERANCE", "ExportError", "ExportResult", "ExportSource", "export_model", "read_source"]

FORMATS = ("bundle", "torchscript")
#: Largest difference of the outputs (probabilities) the round trip may show.
TOLERANCE = 1e-5
#: The names a bundle's ``channel_def`` gives the BraTS sequences and regions.
BRATS_CHANNEL_NAMES = {"t1ce": "T1c", "t1": "T1", "t2": "T2", "flair": "FLAIR"}
REGION_NAMES = {"TC": "Tumor core", "WT": "Whole tumor", "ET": "Enhancing tumor"}
_TASKS = {
    "pneumonia": ("Pneumonia classification of chest radiographs", "xray"),
    "density": ("Breast density (BI-RADS A-D) classification of mammograms", "mammography"),
    "brats": ("Brain tumour segmentation (BraTS regions) of T1c, T1, T2 and FLAIR MRI", "MR"),
}
#: The metadata schema the Model Zoo's bundles name.
_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
#: Largest side of the random volume the check feeds a brats model (a whole ROI may be large).
_CHECK_SIDE = 64


class ExportError(ValueError):
    """A model cannot be exported in the format asked for, or the output folder is not usable."""


@dataclass
class ExportSource:
    """A loaded model and what an export needs to say about it."""

    pipeline: str
    model: torch.nn.Module = field(repr=False)  # as load_model gives it: the reference outputs
    meta: dict[str, Any] = field(repr=False)
    network: torch.nn.Module = field(repr=False)  # the bare network that is exported
    network_def: dict[str, Any] | None  # None: not one MONAI class (see why_not_bundle)
    why_not_bundle: str
    channels: list[str]  # the network's input channels, in order
    outputs: list[str]  # the network's output channels (classes or regions), in order
    activation: str  # softmax, sigmoid or probabilities, on the network's outputs
    name: str  # the source's file or folder name
    sha256: str


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how the round trip compared."""

    path: Path
    format: str
    files: list[str]
    max_difference: float
    how: str  # "state dict", "scripted" or "traced"


def read_source(
    path: str | os.PathLike[str],
    *,
    pipeline: str | None = None,
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
) -> ExportSource:
    """The model at ``path`` (any kind ``load_model`` reads) with what an export states about it.

    Args:
        pipeline: the model's task; a medimg checkpoint says it itself (a different one is an
            error), other kinds need it.

    Raises:
        ExportError: no pipeline for a foreign model; a :class:`~medimg.model_sources.ModelSourceError`
            (a ValueError) when the model cannot be read.
    """
    path = Path(path)
    if model_kind(path) == "checkpoint":
        stated = _checkpoint_meta(path)["pipeline"]
        if pipeline is not None and pipeline != stated:
            raise ExportError(f"checkpoint {path} was trained for pipeline {stated!r}, not {pipeline!r}")
        pipeline = str(stated)
    elif pipeline is None:
        raise ExportError(f"model {path}: say which pipeline it serves (--pipeline pneumonia, density or brats)")
    model, meta = load_model(path, pipeline=pipeline, trust_code=trust_code, card=card)
    return _describe(model, dict(meta), pipeline, path, model_sha256(path, card))


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    try:
        return dict(read_checkpoint(path)["meta"])
    except CheckpointError as exc:
        raise ModelSourceError(str(exc)) from exc


def _example(meta: Mapping[str, Any], pipeline: str, batch: int, seed: int = 0) -> torch.Tensor:
    """A seeded random input of the loaded model: grey images in [0, 1], or z-scored brain volumes."""
    generator = torch.Generator().manual_seed(seed)
    pre = meta["preprocessing"]
    if pipeline == "brats":
        side = [min(int(s), _CHECK_SIDE) for s in pre["roi_size"]]
        return torch.randn(batch, len(pre["channels"]), *side, generator=generator)
    channels = int(meta["network"].get("in_channels", 1))
    return torch.rand(batch, channels, *[int(s) for s in pre["image_size"]], generator=generator)


def _network_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the bare network receives when ``model`` gets ``x`` (an adapter repeats grey channels)."""
    if isinstance(model, ModelAdapter) and model.repeat_channels > 1 and x.shape[1] == 1:
        return x.expand(-1, model.repeat_channels, *x.shape[2:])
    return x


def _describe(model: torch.nn.Module, meta: dict[str, Any], pipeline: str, path: Path, sha256: str) -> ExportSource:
    labels = [str(v) for v in meta["labels"]]
    if isinstance(model, ModelAdapter):
        network, activation, order = model.network, model.activation, model.output_order
        network_def = meta["network"].get("config")
        why = f"its network is a {meta['architecture']} program, not a MONAI network class"
    else:
        network, activation, order = model, ("sigmoid" if pipeline == "brats" else "softmax"), None
        network_def = monai_network_def(str(meta["architecture"]), meta["network"])
        why = _why_not_bundle(meta)
    if pipeline == "brats":
        channels = [BRATS_CHANNEL_NAMES.get(str(c), str(c)) for c in meta["preprocessing"]["channels"]]
        outputs = list(labels)
        if order is not None:  # the network gives region i at position order[i]
            for region, position in zip(labels, order, strict=True):
                outputs[position] = region
    else:
        with torch.no_grad():
            count = int(_output(network(_network_input(model, _example(meta, pipeline, 1)))).shape[1])
        if isinstance(model, ModelAdapter):
            channels = ["image"] * max(1, model.repeat_channels)
        else:
            channels = ["image"] * int(meta["network"].get("in_channels", 1))
        outputs = [labels[-1]] if count == 1 and len(labels) == 2 else labels
    return ExportSource(
        pipeline=pipeline,
        model=model,
        meta=meta,
        network=network,
        network_def=dict(network_def) if isinstance(network_def, Mapping) else None,
        why_not_bundle=why,
        channels=channels,
        outputs=outputs,
        activation=activation,
        name=path.name,
        sha256=sha256,
    )


def _why_not_bundle(meta: Mapping[str, Any]) -> str:
    wrapper = meta["network"].get("wrapper")
    kind = f"{meta['architecture']!r} in the {wrapper.get('name')} wrapper" if isinstance(wrapper, Mapping) else None
    return f"its network ({kind or repr(meta['architecture'])}) is not one MONAI network class"


def _not_a_bundle(name: str, why: str) -> ExportError:
    return ExportError(f"model {name} cannot be a MONAI bundle without custom code: {why}; use --format torchscript")


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


# --- what the export states ------------------------------------------------------------------


def _intensity_card(intensity: Mapping[str, Any]) -> dict[str, Any]:
    """medimg's intensity setting as a card states it (percentiles 0 and 100 are min-max)."""
    low, high = (float(v) for v in intensity["range"])
    lower, upper = float(intensity["lower_percentile"]), float(intensity["upper_percentile"])
    if lower == 0.0 and upper == 100.0:
        return {"kind": "minmax", "range": [low, high]}
    return {"kind": "percentile", "lower": lower, "upper": upper, "range": [low, high]}


def _threshold(source: ExportSource) -> float | None:
    """The pneumonia operating threshold the source states (None: none, or not one a card takes)."""
    value = source.meta.get("training", {}).get("operating_threshold") if source.pipeline == "pneumonia" else None
    return float(value) if isinstance(value, (int, float)) and 0 < value < 1 else None


def _check_preprocessing(source: ExportSource) -> None:
    voi = source.meta["preprocessing"].get("voi")
    if source.pipeline != "brats" and voi not in (None, "none"):
        raise ExportError(
            f"model {source.name}: its preprocessing applies the DICOM VOI setting {voi!r}, which neither a "
            "bundle nor a model card can state"
        )


def _intended_use(source: ExportSource) -> str:
    note = str(source.meta.get("training", {}).get("note", ""))
    if "synthetic phantom" in note.lower():
        return (
            "Demo weights trained on medimg's synthetic phantoms: valid for synthetic phantoms only, never for "
            "real images. Not for clinical use."
        )
    return "Research use only; not for clinical use."


def _preprocessing_steps(source: ExportSource) -> list[dict[str, Any]]:
    pre = source.meta["preprocessing"]
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
    ]
    if source.pipeline == "brats":
        steps.append({"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"})
        if pre.get("spacing"):
            steps.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(pre["spacing"]), "mode": "bilinear"})
        steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True})
        return steps
    intensity = _intensity_card(pre["intensity"])
    low, high = intensity["range"]
    if intensity["kind"] == "minmax":
        steps.append({"_target_": "ScaleIntensityd", "keys": "image", "minv": low, "maxv": high})
    else:
        steps.append({
            "_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": intensity["lower"],
            "upper": intensity["upper"], "b_min": low, "b_max": high, "clip": True,
        })  # fmt: skip
    steps.append({"_target_": "Resized", "keys": "image", "spatial_size": list(pre["image_size"]), "mode": "area"})
    return steps


def _inference_config(source: ExportSource) -> dict[str, Any]:
    pre = source.meta["preprocessing"]
    if source.activation not in ("softmax", "sigmoid"):
        raise ExportError(
            f"model {source.name}: a bundle cannot state that the network already outputs probabilities; "
            "use --format torchscript (its model card says activation: probabilities)"
        )
    post: list[dict[str, Any]] = [{"_target_": "Activationsd", "keys": "pred", source.activation: True}]
    if source.pipeline == "brats":
        inferer = {
            "_target_": "SlidingWindowInferer", "roi_size": list(pre["roi_size"]), "sw_batch_size": 1,
            "overlap": float(pre.get("overlap", 0.5)), "mode": "gaussian",
        }  # fmt: skip
        post.append({"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5})
    else:
        inferer = {"_target_": "SimpleInferer"}
        if (threshold := _threshold(source)) is not None:
            post.append({"_target_": "AsDiscreted", "keys": "pred", "threshold": threshold})
    return {
        "bundle_root": ".",
        "network_def": source.network_def,
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing_steps(source)},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }


def _data_format(source: ExportSource) -> dict[str, Any]:
    pre = source.meta["preprocessing"]
    task, modality = _TASKS[source.pipeline]
    brats = source.pipeline == "brats"
    shape = list(pre["roi_size"] if brats else pre["image_size"])
    channel_def = source.channels if brats else source.channels[:1]
    inputs = {
        "type": "image", "format": "magnitude", "modality": modality, "num_channels": len(source.channels),
        "spatial_shape": shape, "dtype": "float32", "value_range": [] if brats else list(pre["intensity"]["range"]),
        "is_patch_data": brats, "channel_def": {str(i): name for i, name in enumerate(channel_def)},
    }  # fmt: skip
    names = [REGION_NAMES.get(n, n) for n in source.outputs] if brats else source.outputs
    outputs = {
        "type": "image" if brats else "probabilities", "format": "segmentation" if brats else "classes",
        "num_channels": len(names), "spatial_shape": shape if brats else [len(names)], "dtype": "float32",
        "value_range": [0, 1], "is_onehot": False, "channel_def": {str(i): n for i, n in enumerate(names)},
    }  # fmt: skip
    return {"inputs": {"image": inputs}, "outputs": {"pred": outputs}}


def _metadata(source: ExportSource) -> dict[str, Any]:
    import monai
    import numpy

    task, _ = _TASKS[source.pipeline]
    note = str(source.meta.get("training", {}).get("note", ""))
    return {
        "schema": _SCHEMA,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by medimg {__version__} from {source.name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {},
        "name": f"medimg {source.pipeline} ({source.meta['architecture']})",
        "task": task,
        "description": f"A medimg {source.pipeline} model ({source.meta['architecture']})."
        + (f" Training note: {note}" if note else ""),
        "authors": "exported with medimg export",
        "copyright": "the model's authors",
        "intended_use": _intended_use(source),
        "network_data_format": _data_format(source),
        "medimg": {
            "exported_from": source.name,
            "sha256": source.sha256,
            "architecture": source.meta["architecture"],
            "medimg_version": __version__,
        },
    }


def _bundle_files(source: ExportSource) -> dict[str, bytes]:
    if source.network_def is None:
        raise _not_a_bundle(source.name, source.why_not_bundle)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in source.network.state_dict().items()}, buffer)
    return {
        "configs/metadata.json": (json.dumps(_metadata(source), indent=2) + "\n").encode(),
        "configs/inference.json": (json.dumps(_inference_config(source), indent=2) + "\n").encode(),
        "models/model.pt": buffer.getvalue(),
    }


def _card(source: ExportSource) -> dict[str, Any]:
    """The model card of the exported TorchScript network (fields of :mod:`medimg.model_sources.card`)."""
    pre = source.meta["preprocessing"]
    card: dict[str, Any] = {"task": source.pipeline}
    if source.pipeline == "brats":
        card["channels"] = list(source.channels)
        card["roi_size"] = [int(v) for v in pre["roi_size"]]
        card["overlap"] = float(pre.get("overlap", 0.5))
        card["spacing"] = [float(v) for v in pre["spacing"]] if pre.get("spacing") else None
        card["intensity"] = {"kind": "zscore"}
        card["regions"] = list(source.outputs)
    else:
        card["channels"] = ["grey"] * len(source.channels)
        card["image_size"] = [int(v) for v in pre["image_size"]]
        card["intensity"] = _intensity_card(pre["intensity"])
        card["classes"] = list(source.outputs)
    card["activation"] = source.activation
    if (threshold := _threshold(source)) is not None:
        card["threshold"] = threshold
    layer = model_gradcam_layer(source.meta)
    if layer and isinstance(source.model, ModelAdapter):
        layer = layer.removeprefix("network.")
    if layer:
        card["gradcam_layer"] = layer
    return card


def _torchscript_files(source: ExportSource) -> tuple[dict[str, bytes], str]:
    import yaml

    network = source.network
    example = _network_input(source.model, _example(source.meta, source.pipeline, 2))
    if isinstance(network, torch.jit.ScriptModule):
        scripted, how = network, "scripted"
    else:
        try:
            scripted, how = torch.jit.script(network), "scripted"
        except Exception:  # noqa: BLE001 - scripting fails in many ways on dynamic Python; tracing follows
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer warnings on shapes: the round trip checks the result
                    scripted, how = torch.jit.trace(network, example, check_trace=False), "traced"
            except Exception as exc:  # noqa: BLE001
                detail = " ".join(str(exc).split())[:300]
                raise ExportError(f"model {source.name}: neither scripting nor tracing works ({detail})") from exc
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    header = (
        f"# medimg model card of model.ts, exported by medimg {__version__} from {source.name}\n"
        f"# ({how}). {_intended_use(source)}\n"
    )
    card = header + yaml.safe_dump(_card(source), sort_keys=False)
    return {"model.ts": buffer.getvalue(), "model.yaml": card.encode()}, how


# --- writing and checking --------------------------------------------------------------------


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"output {out} exists and is not empty; pass --overwrite to replace it")


def _probabilities(model: torch.nn.Module, x: torch.Tensor, pipeline: str) -> torch.Tensor:
    with torch.no_grad():
        out = _output(model(x))
    return torch.sigmoid(out) if pipeline == "brats" else torch.softmax(out, dim=1)


def _settings(meta: Mapping[str, Any], pipeline: str) -> dict[str, Any]:
    """What the pipelines take from a model's meta besides the network: preprocessing, labels, threshold."""
    pre = meta["preprocessing"]
    keys = ("channels", "roi_size", "overlap", "spacing") if pipeline == "brats" else ("image_size", "intensity")
    settings = {key: pre.get(key) for key in keys} | {"labels": list(meta["labels"])}
    if pipeline == "pneumonia":
        settings["operating_threshold"] = meta.get("training", {}).get("operating_threshold", 0.5)
    return json.loads(json.dumps(settings))


def _round_trip(source: ExportSource, exported: Path, trust_code: bool) -> float:
    """Load the export as the commands would and compare it with the source (settings and outputs).

    Raises:
        ExportError: a setting that does not come back, or outputs further apart than TOLERANCE.
    """
    model, meta = load_model(exported, pipeline=source.pipeline, trust_code=trust_code)
    before, after = _settings(source.meta, source.pipeline), _settings(meta, source.pipeline)
    changed = [key for key in before if before[key] != after[key]]
    if changed:
        detail = "; ".join(f"{key}: {before[key]!r} became {after[key]!r}" for key in changed)
        raise ExportError(f"model {source.name}: the export does not state the same settings ({detail})")
    ignored = meta.get("source", {}).get("ignored_steps")
    if ignored:
        raise ExportError(f"model {source.name}: medimg does not read the exported steps {', '.join(ignored)}")
    x = _example(source.meta, source.pipeline, batch=3, seed=1)
    difference = (_probabilities(source.model, x, source.pipeline) - _probabilities(model, x, source.pipeline)).abs()
    largest = float(difference.max())
    if not largest <= TOLERANCE:
        raise ExportError(
            f"model {source.name}: the exported model's outputs differ from the source's by up to {largest:.3g} "
            f"(more than {TOLERANCE:g}); nothing was written"
        )
    return largest


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out`` (an existing ``out`` is replaced only after)."""
    if not out.is_dir() or not any(out.iterdir()):
        os.replace(tmp, out)  # an empty folder is replaced in one step
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_model(
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    fmt: str,
    pipeline: str | None = None,
    overwrite: bool = False,
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Export the model at ``weights`` as a MONAI bundle folder or a TorchScript file with its card.

    Args:
        weights: any model :func:`~medimg.model_sources.load_model` reads.
        out: the folder to write (created; replaced only with ``overwrite``).
        fmt: ``"bundle"`` or ``"torchscript"``.
        pipeline: the model's task (a medimg checkpoint states it itself).
        trust_code, card: as for ``load_model``.

    Returns:
        What was written and the largest output difference of the round trip.

    Raises:
        ExportError: a format the model cannot take, an ``out`` that exists, or a round trip that
            does not give the same settings and outputs (nothing is written then);
            :class:`~medimg.model_sources.ModelSourceError`: the model cannot be read.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    weights, out = Path(weights), Path(out)
    _check_out(out, overwrite)
    if fmt == "bundle" and model_kind(weights) == "checkpoint":
        meta = _checkpoint_meta(weights)
        if meta["architecture"] != "monai" and monai_network_def(meta["architecture"], meta["network"]) is None:
            raise _not_a_bundle(weights.name, _why_not_bundle(meta))
    source = read_source(weights, pipeline=pipeline, trust_code=trust_code, card=card)
    _check_preprocessing(source)
    files, how = (_bundle_files(source), "state dict") if fmt == "bundle" else _torchscript_files(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        largest = _round_trip(source, tmp / "model.ts" if fmt == "torchscript" else tmp, trust_code)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(path=out, format=fmt, files=sorted(files), max_difference=largest, how=how)
