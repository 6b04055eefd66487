"""Network factory over ``monai.networks`` and the medimg checkpoint format.

Networks are built by name (:func:`build_network`) from keyword arguments that are stored in
every checkpoint, so a checkpoint rebuilds its own network (:func:`load_checkpoint`) without
pickled code: checkpoints hold tensors and plain JSON-able metadata only and are read with
``torch.load(weights_only=True)``.

Architectures (all classifiers: input ``(B, in_channels, *spatial)`` float32, output
``(B, out_channels)`` float32 logits):

* ``"densenet121"``: ``monai.networks.nets.DenseNet121``, the paper-faithful default of the 2-D
  classification pipelines (6.95 M parameters, 28 MB state dict for 1 input channel, 2 classes).
* ``"compact"``: a small MONAI ``DenseNet`` (``init_features=16, growth_rate=8,
  block_config=(2, 4, 6), bn_size=2``) for CPU training, tests and demos. For 1 input channel
  and 2 classes: 24,626 parameters, a 0.17 MB state dict (166 kB as written by ``torch.save``;
  bound :data:`COMPACT_MAX_STATE_BYTES`, 256 KiB, which also holds for 4 channels and 16
  classes); forward in eval mode without gradients on a 2-core CPU: 2.3 ms for 1x1x128x128,
  25 ms (1 thread) or 11 ms (2 threads) for 16x1x128x128; one AdamW training step on
  16x1x128x128 about 50-70 ms.
* ``"resnet18"``: ``monai.networks.nets.resnet18`` with MONAI's defaults (11.2 M parameters;
  first convolution stride 1, so 4x the compute of torchvision's ResNet-18 at the same image
  size; pass ``conv1_t_stride=2`` to match torchvision).
* ``"resnet-compact"``: a small MONAI ``ResNet`` (basic blocks, one per stage, widths 16, 32,
  64, 128, first convolution stride 2) for CPU training and the saliency audit's second
  architecture (reproducibility): 0.30 M parameters for 1 channel and 2 classes.
* ``"inception_v3"``: InceptionV3 (:mod:`medimg.inception`, 2-D only, inputs >= 75 px), the
  classifier of the saliency trust paper (Arun et al. 2020), beside ``"densenet121"`` its
  reproducibility pair: 21.8 M parameters for 1 channel and 2 classes.

Wrappers: a network may wrap one of these backbones (e.g. the trainable attention gate of
``saliency.attention``). Its kwargs then carry ``"wrapper": {"name": ..., ...}`` and
:func:`build_network` hands them to the builder registered under that name
(:func:`register_wrapper`); medimg core imports no wrapper module itself, so the module that
registers the wrapper must be imported before such a network is built or loaded.

Checkpoint layout (a ``dict`` written by ``torch.save``)::

    {"format": "medimg-checkpoint", "version": 1, "state_dict": {name: tensor},
     "meta": {"pipeline", "architecture", "network", "labels", "preprocessing", "training",
              "medimg_version", "created", ...}, **extra}

Architecture ``"monai"`` (a bundle's network: its ``network_def`` in ``meta["network"]["config"]``)
is built by name like the others; ``"torchscript"`` (:data:`TORCHSCRIPT`, a TorchScript network in
its adapter) is not: its program travels in the payload (``extra["torchscript_program"]``, see
:mod:`medimg.model_sources.program`), written by :func:`save_checkpoint` and read back by
:func:`load_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DenseNet, DenseNet121, resnet18

from medimg import __version__
from medimg.writers import atomic_path

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "COMPACT_MAX_STATE_BYTES",
    "REQUIRED_META_KEYS",
    "CheckpointError",
    "build_network",
    "copy_model",
    "file_sha256",
    "gradcam_layer",
    "load_checkpoint",
    "model_gradcam_layer",
    "monai_network_def",
    "read_checkpoint",
    "register_wrapper",
    "registered_wrappers",
    "save_checkpoint",
    "unwrap_model",
    "validate_meta",
]

ARCHITECTURES: tuple[str, ...] = (
    "densenet121",
    "compact",
    "resnet18",
    "resnet-compact",
    "inception_v3",
    "segresnet",
    "segresnet-compact",
    "monai",
)
#: Segmentation networks (dense outputs (B, K, *spatial)); the others are classifiers.
SEGMENTATION_ARCHITECTURES: tuple[str, ...] = ("segresnet", "segresnet-compact")
#: A TorchScript network kept in a checkpoint: not built by name but rebuilt from the program the
#: checkpoint stores (:mod:`medimg.model_sources.program`), so not in :data:`ARCHITECTURES`.
TORCHSCRIPT = "torchscript"
CHECKPOINT_FORMAT = "medimg-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_META_KEYS: tuple[str, ...] = ("pipeline", "architecture", "network", "labels", "preprocessing", "training")
# The compact net's state dict stays below this many bytes (as written by torch.save) for up to
# 4 input channels and 16 classes (measured: 166 kB for 1 channel and 2 classes, 179 kB for 4 and 16).
COMPACT_MAX_STATE_BYTES = 256 * 1024

_COMPACT_DEFAULTS: dict[str, Any] = {"init_features": 16, "growth_rate": 8, "block_config": (2, 4, 6), "bn_size": 2}
# SegResNet as in MONAI's brats_mri_segmentation bundle, and a CPU-sized variant with dropout
# (which also makes Monte-Carlo dropout uncertainty possible).
_SEGRESNET_DEFAULTS: dict[str, dict[str, Any]] = {
    "segresnet": {"init_filters": 16, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
    "segresnet-compact": {"init_filters": 8, "blocks_down": (1, 2, 2), "blocks_up": (1, 1), "dropout_prob": 0.2},
}
# The layer whose activations and gradients Grad-CAM uses: the last feature map before pooling.
_GRADCAM_LAYERS = {
    "densenet121": "class_layers.relu",
    "compact": "class_layers.relu",
    "resnet18": "layer4",
    "resnet-compact": "layer4",
    "inception_v3": "mixed10",
}
_RESNET_COMPACT_DEFAULTS: dict[str, Any] = {
    "block": "basic",
    "layers": (1, 1, 1, 1),
    "block_inplanes": (16, 32, 64, 128),
    "conv1_t_stride": 2,
}
_RESERVED_KEYS = ("format", "version", "state_dict", "meta")
#: Network wrappers by name: ``builder(network_kwargs) -> nn.Module`` (see :func:`register_wrapper`).
_WRAPPERS: dict[str, Callable[[dict[str, Any]], torch.nn.Module]] = {}
# Where each known wrapper is registered, for the error message when it is not (yet).
_WRAPPER_MODULES = {"attention": "saliency.attention"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, not a medimg checkpoint, or not the one asked for."""


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")


def register_wrapper(name: str, builder: Callable[[dict[str, Any]], torch.nn.Module]) -> None:
    """Register a network wrapper so that :func:`build_network` (and :func:`load_checkpoint`) can build it.

    Args:
        name: the value of ``network_kwargs["wrapper"]["name"]`` that selects this builder.
            Registering a name again replaces its builder (a module reload re-registers).
        builder: called as ``builder(network_kwargs)`` with the *full* network keyword arguments:
            ``architecture`` (the backbone, one of :data:`ARCHITECTURES`), ``spatial_dims``,
            ``in_channels``, ``out_channels``, any further backbone kwargs, and ``wrapper`` (a
            dict holding ``name`` and the wrapper's own settings). It returns the network. It
            should raise ValueError (or TypeError) for settings it does not accept.

    Raises:
        ValueError: empty name; TypeError: builder not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"wrapper name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise TypeError(f"wrapper builder for {name!r} must be callable, got {type(builder).__name__}")
    _WRAPPERS[name] = builder


def registered_wrappers() -> tuple[str, ...]:
    """Names of the registered network wrappers, sorted."""
    return tuple(sorted(_WRAPPERS))


def _build_wrapped(architecture: str, network: dict[str, Any]) -> torch.nn.Module:
    wrapper = network["wrapper"]
    if not isinstance(wrapper, Mapping) or not isinstance(wrapper.get("name"), str):
        raise ValueError(f"network kwarg 'wrapper' must be a mapping with a string 'name', got {wrapper!r}")
    name = wrapper["name"]
    builder = _WRAPPERS.get(name)
    if builder is None:
        module = _WRAPPER_MODULES.get(name, "the module that defines it")
        known = ", ".join(registered_wrappers()) or "none"
        raise ValueError(
            f"unknown network wrapper {name!r} (registered: {known}); import {module} first: it registers the "
            f"wrapper with medimg.models.register_wrapper"
        )
    return builder({"architecture": architecture, **network, "wrapper": dict(wrapper)})


def build_network(
    architecture: str,
    *,
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build a freshly initialized classification network.

    Args:
        architecture: one of :data:`ARCHITECTURES`.
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, H, W, D)``.
        in_channels: input channels C.
        out_channels: number of classes K; the network returns ``(B, K)`` float32 logits.
        **kwargs: further keyword arguments of the MONAI constructor (for ``"compact"`` they
            override its DenseNet settings, e.g. ``dropout_prob=0.2``). The key ``wrapper``
            (``{"name": ..., ...}``) instead builds a registered wrapper around the
            ``architecture`` backbone (:func:`register_wrapper`), passing it all the kwargs.

    Returns:
        The network (``torch.nn.Module``, train mode, on the CPU).

    Raises:
        ValueError: unknown architecture, or an unregistered wrapper (the message names the
            module to import, e.g. ``saliency.attention``).
    """
    _check_architecture(architecture)
    if architecture == "monai":
        return _build_from_config(kwargs)
    kwargs.pop("trust_code", None)
    wrapper = kwargs.pop("wrapper", None)  # None: no wrapper (a plain backbone)
    if wrapper is not None:
        network = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels, **kwargs}
        return _build_wrapped(architecture, {**network, "wrapper": wrapper})
    if architecture == "densenet121":
        return DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
    if architecture == "compact":
        settings = {**_COMPACT_DEFAULTS, **kwargs}
        return DenseNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **settings)
    if architecture in _SEGRESNET_DEFAULTS:
        from monai.networks.nets import SegResNet

        settings = {**_SEGRESNET_DEFAULTS[architecture], **kwargs}
        return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **settings)
    if architecture == "resnet-compact":
        from monai.networks.nets import ResNet

        settings = {**_RESNET_COMPACT_DEFAULTS, **kwargs}
        return ResNet(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=out_channels, **settings)
    if architecture == "inception_v3":
        from medimg.inception import InceptionV3

        return InceptionV3(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
    return resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=out_channels, **kwargs)


def _build_from_config(kwargs: dict[str, Any]) -> torch.nn.Module:
    """A MONAI bundle's network (``config``: its resolved ``network_def``) in its adapter."""
    from medimg.model_sources.adapters import ModelAdapter
    from medimg.model_sources.monai_config import build_monai_network

    config, adapter = kwargs.get("config"), kwargs.get("adapter")
    if not isinstance(config, Mapping) or not isinstance(adapter, Mapping):
        raise ValueError("a 'monai' network needs its 'config' (network_def) and 'adapter' settings")
    network = build_monai_network({"network_def": dict(config)}, trust=bool(kwargs.get("trust_code")))
    return ModelAdapter(network, **dict(adapter))


#: The MONAI class (and its settings) each architecture builds; inception_v3 is medimg's own.
_MONAI_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "densenet121": ("monai.networks.nets.DenseNet121", {}),
    "compact": ("monai.networks.nets.DenseNet", _COMPACT_DEFAULTS),
    "resnet18": (
        "monai.networks.nets.ResNet",
        {"block": "basic", "layers": (2, 2, 2, 2), "block_inplanes": (64, 128, 256, 512)},
    ),
    "resnet-compact": ("monai.networks.nets.ResNet", _RESNET_COMPACT_DEFAULTS),
    "segresnet": ("monai.networks.nets.SegResNet", _SEGRESNET_DEFAULTS["segresnet"]),
    "segresnet-compact": ("monai.networks.nets.SegResNet", _SEGRESNET_DEFAULTS["segresnet-compact"]),
}


def monai_network_def(architecture: str, network: Mapping[str, Any]) -> dict[str, Any] | None:
    """A MONAI bundle ``network_def`` (``_target_`` and the constructor's keyword arguments, JSON
    types) that builds the same network as ``build_network(architecture, **network)``.

    Returns:
        None when the network is not one MONAI class: ``inception_v3``, a wrapper (the attention
        gate), or a ``"monai"`` network (a bundle's network inside its adapter).
    """
    if architecture == TORCHSCRIPT:
        return None
    _check_architecture(architecture)
    if architecture not in _MONAI_CLASSES or network.get("wrapper") is not None:
        return None
    target, defaults = _MONAI_CLASSES[architecture]
    kwargs = dict(network)
    if target.endswith(".ResNet"):  # MONAI's ResNet names its channels differently
        kwargs["n_input_channels"] = kwargs.pop("in_channels", 1)
        kwargs["num_classes"] = kwargs.pop("out_channels")
    return json.loads(json.dumps({"_target_": target, **defaults, **kwargs}))


def model_gradcam_layer(meta: Mapping[str, Any]) -> str | None:
    """The Grad-CAM layer of a loaded model: the one its meta names (bundles, model cards), else
    the architecture's (:func:`gradcam_layer`); None when neither says (Grad-CAM cannot run)."""
    if meta.get("gradcam_layer"):
        return str(meta["gradcam_layer"])
    architecture = str(meta.get("architecture"))
    return _GRADCAM_LAYERS.get(architecture)


def gradcam_layer(architecture: str) -> str:
    """Name (in ``model.named_modules()``) of the layer Grad-CAM should hook.

    It is the last convolutional feature map before global pooling: ``"class_layers.relu"`` for
    the MONAI DenseNets, ``"layer4"`` for the ResNets, ``"mixed10"`` for InceptionV3.

    Raises:
        ValueError: unknown architecture.
    """
    _check_architecture(architecture)
    if architecture not in _GRADCAM_LAYERS:
        raise ValueError(f"{architecture!r} is a segmentation network: Grad-CAM applies to classifiers")
    return _GRADCAM_LAYERS[architecture]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or ``model`` itself)."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose parameters are its own leaves.

    ``copy.deepcopy`` of a TorchScript module clones its parameters *with* autograd history (they
    are not leaves: ``requires_grad_`` fails, and gradients would flow back to the original); here
    they are detached and keep requiring gradients, as the originals did.
    """
    import copy

    work = copy.deepcopy(model)
    for parameter in work.parameters():
        if not parameter.is_leaf:  # a clone with history: the original required gradients
            parameter.detach_().requires_grad_(True)
    return work


def _check_jsonable(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        return  # NaN and infinities included: Python's json writes them
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"checkpoint meta key {where}[{key!r}] is not a string")
            _check_jsonable(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_jsonable(item, f"{where}[{index}]")
        return
    raise ValueError(f"checkpoint meta value {where} is not JSON-able ({type(value).__name__}: {value!r:.80})")


def validate_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Check checkpoint metadata and return it as plain JSON types (tuples become lists).

    Args:
        meta: must hold :data:`REQUIRED_META_KEYS`; ``network`` a mapping with ``spatial_dims``,
            ``in_channels`` and ``out_channels``; ``labels`` a list of class names; every value
            JSON-able (str, int, float, bool, None, lists and string-keyed mappings of them).

    Returns:
        A deep copy made of dicts, lists and scalars.

    Raises:
        ValueError: naming the missing or offending key.
    """
    if not isinstance(meta, Mapping):
        raise ValueError(f"checkpoint meta must be a mapping, not {type(meta).__name__}")
    missing = [key for key in REQUIRED_META_KEYS if key not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks required key(s): {', '.join(missing)}")
    _check_jsonable(meta, "meta")
    network = meta["network"]
    if not isinstance(network, Mapping):
        raise ValueError("checkpoint meta['network'] must be a mapping of build_network keyword arguments")
    lacking = [key for key in ("spatial_dims", "in_channels", "out_channels") if key not in network]
    if lacking:
        raise ValueError(f"checkpoint meta['network'] lacks {', '.join(lacking)}")
    if not isinstance(meta["labels"], (list, tuple)) or not all(isinstance(x, str) for x in meta["labels"]):
        raise ValueError("checkpoint meta['labels'] must be a list of class names (strings)")
    for key in ("preprocessing", "training"):
        if not isinstance(meta[key], Mapping):
            raise ValueError(f"checkpoint meta[{key!r}] must be a mapping")
    if not isinstance(meta["architecture"], str) or not isinstance(meta["pipeline"], str):
        raise ValueError("checkpoint meta['pipeline'] and meta['architecture'] must be strings")
    return json.loads(json.dumps(meta))


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    meta: Mapping[str, Any],
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and ``meta`` as a medimg checkpoint, atomically.

    Args:
        path: output file (``.pt``); parent folders are created.
        model: the network (a DDP wrapper is unwrapped); its state dict is saved on the CPU.
        meta: see :func:`validate_meta`. ``medimg_version`` and ``created`` (UTC ISO 8601) are
            added (``created`` is kept when given).
        extra: further top-level entries (e.g. optimizer state); they must be loadable with
            ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, tuples, dicts)
            and must not use the keys ``format``, ``version``, ``state_dict``, ``meta``.

    A ``"torchscript"`` model (meta ``architecture``; a TorchScript network in its adapter, as
    :func:`medimg.model_sources.load_model` returns for a ``.ts`` file) also stores the network's
    program (:func:`medimg.model_sources.program.program_tensor`), which :func:`load_checkpoint`
    rebuilds it from.

    Returns:
        The path written.

    Raises:
        ValueError: bad ``meta`` or a reserved key in ``extra``.
    """
    clean = validate_meta(meta)
    clean["medimg_version"] = __version__
    clean.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    extra = dict(extra or {})
    clash = [key for key in _RESERVED_KEYS if key in extra]
    if clash:
        raise ValueError(f"checkpoint extra uses reserved key(s): {', '.join(clash)}")
    if clean["architecture"] == TORCHSCRIPT:
        from medimg.model_sources.program import PROGRAM_KEY, program_tensor

        extra.setdefault(PROGRAM_KEY, program_tensor(getattr(unwrap_model(model), "network", None)))
    state = {name: tensor.detach().cpu() for name, tensor in unwrap_model(model).state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "state_dict": state, "meta": clean, **extra}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_error_detail(exc: BaseException) -> str:
    """The informative part of a ``torch.load`` error, on one line without terminal escapes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = re.split(r"\. Please use|\n\n(?=Check the documentation)", text.strip(), maxsplit=1)[0]
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def load_medimg_file(
    path: str | os.PathLike[str],
    *,
    kind: str,
    file_format: str,
    max_version: int,
    map_location: Any = "cpu",
    error: type[Exception] = CheckpointError,
) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a medimg file (checkpoint, Fisher, localizer, ...).

    Args:
        path: the file.
        kind: what it is, for messages (``"checkpoint"``, ``"Fisher file"``, ``"localizer"``).
        file_format: the ``format`` value the payload dict must carry.
        max_version: the newest ``version`` this medimg reads.
        map_location: device for the tensors.
        error: the exception class raised (a :class:`CheckpointError` subclass, say).

    Returns:
        The payload dict (its other keys are the caller's to check).

    Raises:
        error: the file is missing, unreadable (corrupt, truncated, or pickled Python objects, which
            ``weights_only=True`` refuses), of another format, or of a newer version; the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        detail = load_error_detail(exc)
        if "Unsupported global" in detail:
            raise error(
                f"{kind} {path} could not be read: it holds pickled Python objects, which loading with "
                f"weights_only=True refuses ({detail}); medimg files hold only tensors and plain metadata"
            ) from exc
        raise error(f"{kind} {path} could not be read as a torch file (corrupt or truncated?): {detail}") from exc
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        if isinstance(payload, dict):
            found = "a bare state dict" if "format" not in payload else f"format {payload.get('format')!r}"
        else:
            found = type(payload).__name__
        raise error(f"{kind} {path} is not a medimg {kind} (found {found}, expected format {file_format!r})")
    version = payload.get("version")
    if not isinstance(version, int) or version > max_version:
        raise error(
            f"{kind} {path} has format version {version!r}; this medimg ({__version__}) reads up to {max_version}"
        )
    return payload


def read_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a medimg checkpoint file without building the network.

    Returns:
        The checkpoint dict (``format``, ``version``, ``state_dict``, ``meta`` and any extras).

    Raises:
        CheckpointError: the file is missing, unreadable or not a medimg checkpoint.
    """
    path = Path(path)
    payload = load_medimg_file(
        path,
        kind="checkpoint",
        file_format=CHECKPOINT_FORMAT,
        max_version=CHECKPOINT_VERSION,
        map_location=map_location,
    )
    if not isinstance(payload.get("state_dict"), dict) or not isinstance(payload.get("meta"), dict):
        raise CheckpointError(f"checkpoint {path} lacks its state_dict or meta")
    meta = payload["meta"]
    missing = [key for key in REQUIRED_META_KEYS if key not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path} meta lacks {', '.join(missing)}")
    return payload


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    pipeline: str | None = None,
    architecture: str | None = None,
    map_location: Any = "cpu",
    trust_code: bool = False,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint and load its weights (strictly).

    Args:
        path: a file written by :func:`save_checkpoint`.
        pipeline: when given, the checkpoint must have been made for this pipeline.
        architecture: when given, the checkpoint must hold this architecture.
        map_location: device for the tensors and the returned network.
        trust_code: a ``"monai"`` network (from a bundle) may instantiate any class its config
            names (default: MONAI network classes only). A ``"torchscript"`` network is rebuilt
            from the program stored in the checkpoint (see :func:`save_checkpoint`).

    Returns:
        ``(model, meta)``: the network in eval mode on ``map_location``, and the checkpoint's
        metadata dict.

    Raises:
        CheckpointError: missing/corrupt file, not a medimg checkpoint, another pipeline or
            architecture than asked for, or weights that do not fit the network; the message
            names the file.
    """
    path = Path(path)
    payload = read_checkpoint(path, map_location=map_location)
    meta = payload["meta"]
    if pipeline is not None and meta["pipeline"] != pipeline:
        raise CheckpointError(f"checkpoint {path} was trained for pipeline {meta['pipeline']!r}, not {pipeline!r}")
    if architecture is not None and meta["architecture"] != architecture:
        raise CheckpointError(f"checkpoint {path} holds a {meta['architecture']!r} network, not {architecture!r}")
    try:
        if meta["architecture"] == TORCHSCRIPT:
            from medimg.model_sources.program import PROGRAM_KEY, scripted_network

            adapter = meta["network"].get("adapter")
            model = scripted_network(payload.get(PROGRAM_KEY), adapter, where="the checkpoint")
        else:
            extra = {"trust_code": trust_code} if meta["architecture"] == "monai" else {}
            model = build_network(meta["architecture"], **meta["network"], **extra)
    except (TypeError, ValueError) as exc:  # the message starts with the file, then what is wrong
        raise CheckpointError(f"checkpoint {path}: cannot build its network ({exc})") from exc
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the {meta['architecture']!r} network built from its meta "
            f"{meta['network']}: {detail[:600]}"
        ) from exc
    model.to(map_location)
    model.eval()
    return model, meta


def file_sha256(path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file as 64 lowercase hex digits, read in ``chunk_bytes`` chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
