"""Model cards: what a model file does not say about itself, in a small YAML beside it.

A TorchScript or ``torch.export`` file holds a computation, not how to feed it: which channels in
which order, what size, what intensity scaling, which classes come out and through which
activation. A MONAI bundle states some of this in ``metadata.json`` and its inference config; a
card fills in the rest. The fields (see ``docs/models.md`` for examples)::

    task: pneumonia | density | brats          # the medimg pipeline the model serves
    channels: [grey]                           # input channels in order (2-D: grey copies;
                                               # brats: t1ce, t1, t2, flair in the model's order)
    image_size: [columns, rows]                # 2-D: the network grid
    roi_size: [x, y, z]                        # brats: the sliding window
    overlap: 0.5                               # brats: window overlap (default 0.5)
    spacing: [1.0, 1.0, 1.0]                   # brats: resample to this spacing (mm); null: as is
    intensity: {kind: percentile, lower: 0.5, upper: 99.5, range: [0, 1]}
               # or {kind: minmax, range: [0, 1]}, or {kind: zscore} (per channel, non-zero voxels)
    classes: [no_pneumonia, pneumonia]         # 2-D: output classes in order
    regions: [TC, WT, ET]                      # brats: output channels in order
    activation: softmax | sigmoid | probabilities
    threshold: 0.5                             # pneumonia: the operating threshold
    gradcam_layer: features.denseblock4        # where Grad-CAM hooks (optional)

:func:`read_card` validates the values a card states; :func:`describe` merges them with what a
bundle states (a card may fill a gap, never contradict), checks that the task's fields are all
there, and raises :class:`ModelCardError` naming the field and the file otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medimg.model_sources.adapters import ACTIVATIONS

__all__ = [
    "BRATS_CHANNELS",
    "BRATS_REGIONS",
    "CARD_FIELDS",
    "Described",
    "ModelCardError",
    "TASKS",
    "describe",
    "normalise_channel",
    "normalise_region",
    "read_card",
]

TASKS = ("pneumonia", "density", "brats")
CARD_FIELDS = (
    "task",
    "channels",
    "image_size",
    "roi_size",
    "overlap",
    "spacing",
    "intensity",
    "classes",
    "regions",
    "activation",
    "threshold",
    "gradcam_layer",
)
#: The BraTS sequences by the names vendors, bundles and challenges give them.
BRATS_CHANNELS = {
    "t1ce": ("t1ce", "t1c", "t1gd", "t1-gd", "t1 gd", "t1 post", "t1+c", "t1ce"),
    "t1": ("t1", "t1n", "t1w", "t1 native"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2-flair", "t2 flair"),
}
BRATS_REGIONS = {
    "TC": ("tc", "tumor core", "tumour core"),
    "WT": ("wt", "whole tumor", "whole tumour"),
    "ET": ("et", "enhancing tumor", "enhancing tumour"),
}
_GREY = ("grey", "gray", "image", "intensity", "mammogram", "radiograph")
_REQUIRED = {
    "pneumonia": ("channels", "image_size", "intensity", "classes", "activation"),
    "density": ("channels", "image_size", "intensity", "classes", "activation"),
    "brats": ("channels", "roi_size", "intensity", "regions", "activation"),
}
_CLASS_COUNT = {"pneumonia": 2, "density": 4}
#: Largest card read (bytes): a card is a dozen lines.
MAX_CARD_BYTES = 64 * 1024


class ModelCardError(ValueError):
    """A model card (or a bundle's description) is missing a field, or a field is wrong or contradicted."""


def normalise_channel(name: str) -> str | None:
    """``t1ce``/``t1``/``t2``/``flair`` for a BraTS sequence name, ``grey`` for a grey image, else None."""
    text = " ".join(str(name).strip().lower().replace("_", " ").split())
    if text in _GREY:
        return "grey"
    return next((role for role, names in BRATS_CHANNELS.items() if text in names), None)


def normalise_region(name: str) -> str | None:
    """``TC``/``WT``/``ET`` for a region name (``Tumor core``...), else None."""
    text = " ".join(str(name).strip().lower().replace("_", " ").split())
    return next((region for region, names in BRATS_REGIONS.items() if text in names), None)


def _numbers(value: Any, field: str, source: str, *, count: int | None = None, integer: bool = False) -> list:
    if not isinstance(value, Sequence) or isinstance(value, str) or (count is not None and len(value) != count):
        size = f"{count} " if count else ""
        raise ModelCardError(f"{source}: '{field}' must be a list of {size}numbers, got {value!r}")
    out = []
    for item in value:
        ok = isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item) and item > 0
        if not ok or (integer and int(item) != item):
            raise ModelCardError(f"{source}: '{field}' must hold positive {'integers' if integer else 'numbers'}")
        out.append(int(item) if integer else float(item))
    return out


def _intensity(value: Any, source: str) -> dict[str, Any]:
    """A card's intensity setting as medimg's preprocessing value."""
    if not isinstance(value, Mapping) or value.get("kind") not in ("percentile", "minmax", "zscore"):
        raise ModelCardError(f"{source}: 'intensity' must be a mapping with kind percentile, minmax or zscore")
    kind = value["kind"]
    if kind == "zscore":
        return {"kind": "zscore"}
    low, high = _range(value.get("range", [0.0, 1.0]), source)
    if kind == "minmax":
        return {"lower_percentile": 0.0, "upper_percentile": 100.0, "range": [low, high]}
    lower, upper = value.get("lower"), value.get("upper")
    if not all(isinstance(v, (int, float)) and 0 <= v <= 100 for v in (lower, upper)) or lower >= upper:
        raise ModelCardError(f"{source}: 'intensity' percentiles need 0 <= lower < upper <= 100")
    return {"lower_percentile": float(lower), "upper_percentile": float(upper), "range": [low, high]}


def _range(value: Any, source: str) -> tuple[float, float]:
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or value[0] >= value[1]
    ):
        raise ModelCardError(f"{source}: 'intensity.range' must be [low, high] with low < high, got {value!r}")
    return float(value[0]), float(value[1])


def _names(value: Any, field: str, source: str) -> list[str]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ModelCardError(f"{source}: '{field}' must be a non-empty list of names, got {value!r}")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise ModelCardError(f"{source}: '{field}' must hold non-empty names")
    return [str(v).strip() for v in value]


def check_field(field: str, value: Any, source: str) -> Any:
    """``value`` of card field ``field``, checked and normalised (``source`` names the file in errors)."""
    if field == "task":
        if value not in TASKS:
            raise ModelCardError(f"{source}: 'task' must be one of {', '.join(TASKS)}, got {value!r}")
        return value
    if field == "channels":
        names = _names(value, field, source)
        roles = [normalise_channel(n) for n in names]
        unknown = [n for n, r in zip(names, roles, strict=True) if r is None]
        if unknown:
            raise ModelCardError(
                f"{source}: 'channels' holds {', '.join(map(repr, unknown))}: use grey (or image) for a "
                "radiograph, or t1ce, t1, t2, flair (T1c, T1, T2, FLAIR) for BraTS"
            )
        return roles
    if field == "regions":
        names = _names(value, field, source)
        regions = [normalise_region(n) for n in names]
        if None in regions or sorted(r for r in regions if r) != ["ET", "TC", "WT"]:
            raise ModelCardError(f"{source}: 'regions' must name TC, WT and ET once each, got {names!r}")
        return regions
    if field == "image_size":
        return _numbers(value, field, source, count=2, integer=True)
    if field == "roi_size":
        return _numbers(value, field, source, count=3, integer=True)
    if field == "spacing":
        return None if value is None else _numbers(value, field, source, count=3)
    if field == "overlap":
        if not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ModelCardError(f"{source}: 'overlap' must be a number in [0, 1), got {value!r}")
        return float(value)
    if field == "intensity":
        return _intensity(value, source)
    if field == "classes":
        return _names(value, field, source)
    if field == "activation":
        if value not in ACTIVATIONS:
            raise ModelCardError(f"{source}: 'activation' must be one of {', '.join(ACTIVATIONS)}, got {value!r}")
        return value
    if field == "threshold":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
            raise ModelCardError(f"{source}: 'threshold' must be a number between 0 and 1, got {value!r}")
        return float(value)
    if field == "gradcam_layer":
        if not isinstance(value, str) or not value.strip():
            raise ModelCardError(f"{source}: 'gradcam_layer' must be a module name, got {value!r}")
        return value.strip()
    raise ModelCardError(f"{source}: unknown field {field!r}; known: {', '.join(CARD_FIELDS)}")


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked fields of a model card YAML (``yaml.safe_load``: data only, no Python objects).

    Raises:
        ModelCardError: unreadable, too large, not a mapping, an unknown field or a wrong value
            (the message names the file and the field).
    """
    import yaml

    path = Path(path)
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise ModelCardError(f"model card {path}: larger than {MAX_CARD_BYTES} bytes; a card is a short YAML")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelCardError(f"model card {path} could not be read: {' '.join(str(exc).split())[:300]}") from exc
    if not isinstance(data, Mapping):
        raise ModelCardError(f"model card {path}: expected a mapping of fields, got {type(data).__name__}")
    return {str(field): check_field(str(field), value, f"model card {path}") for field, value in data.items()}


@dataclass(frozen=True)
class Described:
    """What a model is, field by field, with where each value came from (``"model card x.yaml"``,
    ``"configs/metadata.json: network_data_format.inputs.image.channel_def"``)."""

    values: dict[str, Any]
    sources: dict[str, str]

    def get(self, field: str, default: Any = None) -> Any:
        return self.values.get(field, default)


def describe(
    stated: Mapping[str, tuple[Any, str]],
    card: Mapping[str, Any] | None,
    card_path: str | os.PathLike[str] | None,
    *,
    pipeline: str,
    model_path: str | os.PathLike[str],
) -> Described:
    """Merge what a model file states (``field -> (value, where)``) with its card, and check it
    serves ``pipeline``.

    Raises:
        ModelCardError: a card value contradicts a stated one, a field the task needs is missing,
            or a value does not fit the task (wrong number of classes, brats without z-score...).
    """
    values = {field: value for field, (value, _) in stated.items()}
    sources = {field: where for field, (_, where) in stated.items()}
    for field, value in (card or {}).items():
        if field in values and values[field] != value:
            raise ModelCardError(
                f"model card {card_path}: '{field}' is {value!r} but {sources[field]} says {values[field]!r}"
            )
        values[field] = value
        sources.setdefault(field, f"model card {Path(str(card_path)).name}")
    task = values.setdefault("task", pipeline)
    sources.setdefault("task", "the command (medimg run/evaluate PIPELINE)")
    where = f"model card {card_path}" if card_path else f"model {model_path} (no model card found beside it)"
    if task != pipeline:
        raise ModelCardError(f"{where}: the model is for task {task!r}, not {pipeline!r}")
    if pipeline == "brats":
        values.setdefault("overlap", 0.5)
        sources.setdefault("overlap", "medimg's default")
        values.setdefault("spacing", None)
        sources.setdefault("spacing", "medimg's default (the input's own spacing)")
    missing = [field for field in _REQUIRED[pipeline] if field not in values]
    if missing:
        raise ModelCardError(
            f"{where}: missing {', '.join(map(repr, missing))}, which a {pipeline} model needs; write "
            "them in the model card (see docs/models.md)"
        )
    _check_task_fit(values, pipeline, where)
    return Described(values, sources)


def _check_task_fit(values: Mapping[str, Any], pipeline: str, where: str) -> None:
    channels = values["channels"]
    if pipeline == "brats":
        if sorted(channels) != ["flair", "t1", "t1ce", "t2"]:
            raise ModelCardError(f"{where}: 'channels' must be the four BraTS sequences, got {channels!r}")
        if values["intensity"] != {"kind": "zscore"}:
            raise ModelCardError(
                f"{where}: 'intensity' must be zscore (per channel over non-zero voxels), the only "
                f"normalisation the brats pipeline applies; got {values['intensity']!r}"
            )
        if values["activation"] != "sigmoid":
            raise ModelCardError(f"{where}: 'activation' must be sigmoid (one channel per region) for brats")
        return
    if set(channels) != {"grey"}:
        raise ModelCardError(f"{where}: 'channels' of a radiograph model must be grey copies, got {channels!r}")
    if values["intensity"] == {"kind": "zscore"}:
        raise ModelCardError(f"{where}: 'intensity' zscore applies to brats; use percentile or minmax")
    count = len(values["classes"])
    expected = _CLASS_COUNT[pipeline]
    single_logit = values["activation"] == "sigmoid" and count == 1 and expected == 2
    if count != expected and not single_logit:
        raise ModelCardError(f"{where}: 'classes' has {count} names; a {pipeline} model has {expected}")
