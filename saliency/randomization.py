"""Cascading model-parameter randomization (Adebayo et al. 2018; Arun et al. 2020, criterion 2).

A trained model is re-initialized top-down, one *named block* at a time and cumulatively: state
``k`` has blocks ``1..k`` of :func:`named_blocks` re-initialized and every other parameter as
trained. Saliency maps of each state are then compared with those of the original model (SSIM);
a trustworthy method's maps must degrade.

Protocol choices (recorded by :func:`randomization_settings` for the report):

* **Granularity**: named blocks (Adebayo: InceptionV3 ``Mixed_*`` blocks; Arun et al.: Keras
  ``mixed*``), not single modules as in Quantus. Block lists per family are documented in
  :func:`named_blocks`; the stem is included by default (Adebayo goes down to the first conv,
  Arun et al. stops one block above it; ``include_stem=False`` mimics the latter).
* **Re-initialization**: every parameter of a block is redrawn with *its own initializer*, the one
  the network's constructor used (Adebayo re-runs each variable's TF initializer). For MONAI
  networks that is the constructor's init loop on top of PyTorch's layer defaults; see
  :data:`INIT_SCHEMES` and :func:`init_scheme`.
* **Normalization statistics**: BatchNorm (and InstanceNorm) ``running_mean`` / ``running_var`` /
  ``num_batches_tracked`` are **kept** (:data:`NORM_RUNNING_STATS`), as in Adebayo, whose
  re-initialization touches trainable variables only; affine weights go back to 1 and biases to 0.
* **Randomness**: all draws come from a ``torch.Generator`` (``torch.nn.init`` functions with
  ``generator=``), drawn on the generator's device and copied into the parameter, never from the
  global RNG. Stage ``k`` (1-based) uses :func:`stage_generator` ``(seed, k)``, so every state is
  reproducible on its own and a block keeps the same random weights in all later states.

Hook for custom models: a model may define ``randomization_blocks()`` (optionally accepting
``include_stem``) returning ``[(label, [module names])]`` top-down; it takes precedence over the
built-in rules. A wrapper around a MONAI backbone (e.g. an attention gate over ``self.backbone``)
can build it with :func:`prefix_blocks`::

    def randomization_blocks(self, include_stem=True):
        return [("gate", ["gate"])] + prefix_blocks(named_blocks(self.backbone, include_stem=include_stem), "backbone")

Each module is re-initialized with the scheme of its nearest ancestor that is a known network
family (so ``backbone.*`` still gets MONAI's DenseNet init, the gate PyTorch's defaults).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from medimg.models import copy_model

__all__ = [
    "GRANULARITY",
    "INIT_SCHEMES",
    "NORM_RUNNING_STATS",
    "Blocks",
    "cascading_randomization",
    "copy_model",
    "init_scheme",
    "named_blocks",
    "prefix_blocks",
    "randomization_settings",
    "reinitialize",
    "stage_generator",
    "unsupported_modules",
]

#: ``[(label, [module names])]``, top-down: stage 1 first.
Blocks = list[tuple[str, list[str]]]

#: Randomization granularity recorded in reports.
GRANULARITY = "named blocks"
#: What happens to BatchNorm/InstanceNorm running statistics when a block is re-initialized.
NORM_RUNNING_STATS = "kept"
#: The initialization schemes, by name, as applied by :func:`reinitialize`.
INIT_SCHEMES: dict[str, str] = {
    "monai-densenet": (
        "MONAI DenseNet constructor: Conv weights kaiming_normal_ (fan_in, gain sqrt 2); BatchNorm weight 1, "
        "bias 0; Linear bias 0, Linear weight PyTorch default kaiming_uniform_(a=sqrt 5); other layers PyTorch "
        "defaults"
    ),
    "monai-resnet": (
        "MONAI ResNet constructor: Conv weights kaiming_normal_(mode='fan_out', nonlinearity='relu'); norm "
        "weight 1, bias 0; Linear bias 0, Linear weight PyTorch default kaiming_uniform_(a=sqrt 5); conv biases "
        "PyTorch default"
    ),
    "inception-v3": (
        "InceptionV3 constructor (medimg.inception, as torchvision's): Conv and Linear weights truncated normal "
        "(sd 0.1, cut at -2 and 2); BatchNorm weight 1, bias 0; Linear bias PyTorch default"
    ),
    "pytorch-default": (
        "PyTorch layer defaults (reset_parameters): Conv/Linear weight kaiming_uniform_(a=sqrt 5), bias "
        "U(-1/sqrt fan_in, 1/sqrt fan_in); norm weight 1, bias 0 (MONAI SegResNet applies no init of its own)"
    ),
}

_ORIGINAL = "original"
_NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in (_NormBase, nn.GroupNorm, nn.LayerNorm, getattr(nn, "RMSNorm", None)) if t is not None
)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # MONAI's ``conv_type`` (not transposed convolutions)
#: TorchScript submodules are ``RecursiveScriptModule``s: their layer type is only their ``original_name``.
_SCRIPT_CONV = {"Conv1d", "Conv2d", "Conv3d"}
_SCRIPT_CONV_ANY = _SCRIPT_CONV | {"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
_SCRIPT_NORM = {
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d",
    "InstanceNorm3d", "GroupNorm", "LayerNorm", "RMSNorm",
}  # fmt: skip
_SCRIPT_DENSENETS = {"DenseNet", "DenseNet121", "DenseNet169", "DenseNet201", "DenseNet264"}


def _script_name(module: nn.Module) -> str | None:
    """The layer class a TorchScript submodule was compiled from (``"Conv2d"``), None for a Python module."""
    return getattr(module, "original_name", None) if isinstance(module, torch.jit.ScriptModule) else None


def _is_adapter(module: nn.Module) -> bool:
    from medimg.model_sources.adapters import ModelAdapter

    return isinstance(module, ModelAdapter)


# ----------------------------------------------------------------------------------------------- families


def _family(module: nn.Module) -> str | None:
    """The init scheme of a known network class, or None when the class is not a known family."""
    from monai.networks.nets.densenet import DenseNet
    from monai.networks.nets.resnet import ResNet
    from monai.networks.nets.segresnet import SegResNet

    from medimg.inception import InceptionV3

    scripted = _script_name(module)
    if scripted is not None:  # a TorchScript copy of a MONAI network keeps its constructor's init
        if scripted in _SCRIPT_DENSENETS and hasattr(module, "class_layers"):
            return "monai-densenet"
        return "monai-resnet" if scripted == "ResNet" and hasattr(module, "layer4") else None
    if isinstance(module, InceptionV3):
        return "inception-v3"
    if isinstance(module, DenseNet):
        return "monai-densenet"
    if isinstance(module, ResNet):
        return "monai-resnet"
    if isinstance(module, SegResNet):
        return "pytorch-default"
    return None


def init_scheme(model: nn.Module) -> str:
    """Name of the initialization scheme (a key of :data:`INIT_SCHEMES`) of a network.

    ``"monai-densenet"`` for MONAI ``DenseNet`` and its subclasses (``DenseNet121``, the compact
    net), ``"monai-resnet"`` for MONAI ``ResNet``, ``"inception-v3"`` for :class:`medimg.inception.InceptionV3`,
    ``"pytorch-default"`` for everything else
    (including MONAI ``SegResNet``, whose constructor keeps PyTorch's layer defaults).
    """
    return _family(model) or "pytorch-default"


def _scheme_map(model: nn.Module, inherited: str = "pytorch-default") -> dict[str, str]:
    """``{module name: scheme}``: each module takes the scheme of its nearest known-family ancestor (or itself)."""
    schemes: dict[str, str] = {}

    def walk(module: nn.Module, prefix: str, scheme: str) -> None:
        scheme = _family(module) or scheme
        schemes.setdefault(prefix, scheme)
        for name, child in module.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name, scheme)

    walk(model, "", inherited)
    return schemes


# ------------------------------------------------------------------------------------------------ blocks


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def prefix_blocks(blocks: Blocks, prefix: str) -> Blocks:
    """Blocks of a sub-network, renamed to module names of the enclosing model (``prefix.name``)."""
    return [(label, [f"{prefix}.{name}" if name else prefix for name in names]) for label, names in blocks]


def _densenet_blocks(model: nn.Module, include_stem: bool) -> Blocks:
    features = dict(model.features.named_children())
    order = list(features)
    blocks: Blocks = []
    head = [f"class_layers.{n}" for n, m in model.class_layers.named_children() if _has_params(m)]
    if head:
        blocks.append(("logits", head))
    dense = [n for n in order if n.startswith("denseblock")]
    if not dense:
        raise ValueError("DenseNet without denseblock modules in `features`")
    top = dense[-1]
    # Everything with parameters after the top block (MONAI: norm5) belongs to the top block.
    tail = [n for n in order[order.index(top) + 1 :] if _has_params(features[n])]
    for name in reversed(dense):
        members = [f"features.{name}"]
        transition = "transition" + name[len("denseblock") :]
        if transition in features:  # transitionN is the output side of denseblockN
            members.append(f"features.{transition}")
        if name == top:
            members += [f"features.{n}" for n in tail]
        blocks.append((name, members))
    stem = [f"features.{n}" for n in order[: order.index(dense[0])] if _has_params(features[n])]
    if include_stem and stem:
        blocks.append(("stem", stem))
    return blocks


def _resnet_blocks(model: nn.Module, include_stem: bool) -> Blocks:
    blocks: Blocks = []
    if getattr(model, "fc", None) is not None:
        blocks.append(("logits", ["fc"]))
    blocks += [(name, [name]) for name in ("layer4", "layer3", "layer2", "layer1")]
    if include_stem:
        blocks.append(("stem", ["conv1", "bn1"]))
    return blocks


def _segresnet_blocks(model: nn.Module, include_stem: bool) -> Blocks:
    encoder = {"convInit", "down_layers"}
    preferred = ["conv_final", "up_layers", "up_samples"]
    children = dict(model.named_children())
    head = [n for n in preferred if n in children and _has_params(children[n])]
    # Any other parameterized top-level module (e.g. SegResNetVAE's VAE branch) is decoder side too.
    head += [n for n, m in children.items() if n not in encoder and n not in head and _has_params(m)]
    blocks: Blocks = [("head", head)] if head else []
    downs = len(model.down_layers)
    blocks += [(f"down_layers.{i}", [f"down_layers.{i}"]) for i in reversed(range(downs))]
    if include_stem:
        blocks.append(("stem", ["convInit"]))
    return blocks


def _generic_blocks(model: nn.Module, include_stem: bool) -> Blocks:
    blocks = [(name, [name]) for name, child in model.named_children() if _has_params(child)][::-1]
    return blocks if include_stem else blocks[:-1]


def _validate(model: nn.Module, blocks: Sequence[tuple[str, Sequence[str] | str]]) -> Blocks:
    modules = dict(model.named_modules())
    checked: Blocks = []
    labels: set[str] = set()
    for entry in blocks:
        label, names = entry
        names = [names] if isinstance(names, str) else list(names)
        if not isinstance(label, str) or not label or label == _ORIGINAL or label in labels:
            raise ValueError(f"block labels must be unique non-empty strings other than {_ORIGINAL!r}: {label!r}")
        if not names:
            raise ValueError(f"block {label!r} lists no modules")
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"block {label!r}: no module named {', '.join(map(repr, missing))} in the model")
        labels.add(label)
        checked.append((label, names))
    return checked


def named_blocks(model: nn.Module, *, include_stem: bool = True) -> Blocks:
    """Top-down randomization stages of a network: ``[(label, [module names])]``, stage 1 first.

    Block lists (module names as in ``model.named_modules()``):

    * MONAI ``DenseNet`` / ``DenseNet121`` / the compact net: ``("logits", ["class_layers.out"])``,
      then one stage per dense block from the top, labelled by its name. ``transitionN`` (the
      norm/conv/pool *after* ``denseblockN``) is the output side of block N and goes with it; the
      final ``norm5`` goes with the top block. Compact: ``denseblock3 = [features.denseblock3,
      features.norm5]``, ``denseblock2 = [features.denseblock2, features.transition2]``,
      ``denseblock1 = [..denseblock1, ..transition1]``; then ``("stem", ["features.conv0",
      "features.norm0"])``.
    * MONAI ``ResNet``: ``("logits", ["fc"])`` (when ``fc`` exists), ``layer4`` .. ``layer1``,
      ``("stem", ["conv1", "bn1"])``.
    * MONAI ``SegResNet`` (encoder randomization): ``("head", ["conv_final", "up_layers",
      "up_samples"])`` (the whole decoder, plus any other non-encoder module), then
      ``down_layers.N`` .. ``down_layers.0``, then ``("stem", ["convInit"])``.
    * ``DataParallel`` / ``DistributedDataParallel``: the wrapped module's blocks under ``module.``.
    * :class:`medimg.model_sources.ModelAdapter` (a bundle or TorchScript model): its network's
      blocks under ``network.``. A TorchScript MONAI DenseNet or ResNet (``original_name``) gets
      the blocks of its Python class.
    * Anything else: each top-level child that owns parameters is a stage, labelled by its name,
      in reverse registration order; the first child counts as the stem. Parameters registered
      directly on the root module are not covered.

    A model defining ``randomization_blocks()`` overrides all of this. The method is called with
    ``include_stem=`` when its signature accepts it; otherwise its list is used as given, minus a
    final ``"stem"`` stage when ``include_stem`` is False.

    Args:
        model: the network.
        include_stem: include the stem (the layers before the first block) as the last stage.

    Returns:
        The stages, validated: unique labels, every module name exists.

    Raises:
        ValueError: a name in the list (from the hook) is not a module of ``model``, or labels repeat.
    """
    hook: Callable[..., Any] | None = getattr(model, "randomization_blocks", None)
    if callable(hook):
        try:
            accepts = "include_stem" in inspect.signature(hook).parameters
        except (TypeError, ValueError):  # builtins without a signature
            accepts = False
        if accepts:
            blocks = list(hook(include_stem=include_stem))
        else:
            blocks = list(hook())
            if not include_stem and blocks and blocks[-1][0] == "stem":
                blocks = blocks[:-1]
        return _validate(model, blocks)
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return _validate(model, prefix_blocks(named_blocks(model.module, include_stem=include_stem), "module"))
    if _is_adapter(model):  # a bundle or TorchScript network in medimg's adapter: the network's blocks
        return _validate(
            model, prefix_blocks(named_blocks(cast(nn.Module, model.network), include_stem=include_stem), "network")
        )

    from monai.networks.nets.densenet import DenseNet
    from monai.networks.nets.resnet import ResNet
    from monai.networks.nets.segresnet import SegResNet

    family = _family(model)
    if isinstance(model, DenseNet) or family == "monai-densenet":
        blocks = _densenet_blocks(model, include_stem)
    elif isinstance(model, ResNet) or family == "monai-resnet":
        blocks = _resnet_blocks(model, include_stem)
    elif isinstance(model, SegResNet):
        blocks = _segresnet_blocks(model, include_stem)
    else:
        blocks = _generic_blocks(model, include_stem)
    return _validate(model, blocks)


# -------------------------------------------------------------------------------------- re-initialization


def _draw(tensor: torch.Tensor, generator: torch.Generator, fill: Callable[..., Any], **kwargs: Any) -> None:
    """Fill ``tensor`` in place with ``fill(tmp, generator=generator, **kwargs)`` drawn on the generator's device.

    Drawing into a float32/float64 scratch tensor on the generator's device and copying makes the
    values independent of the parameter's device (and of its memory format).
    """
    dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    scratch = torch.empty(tensor.shape, dtype=dtype, device=generator.device)
    with torch.no_grad():
        fill(scratch, generator=generator, **kwargs)
        tensor.copy_(scratch)


def _default_bias(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's Conv/Linear bias rule: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    _draw(module.bias, generator, nn.init.uniform_, a=-bound, b=bound)


def _fallback(module: nn.Module, generator: torch.Generator) -> None:
    """``module.reset_parameters()`` under a forked global RNG seeded from ``generator``; buffers restored."""
    reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
    if not callable(reset):
        raise TypeError(
            f"cannot re-initialize {type(module).__name__}: it owns parameters but has no reset_parameters(); "
            "give it one, or leave it out of the randomization blocks"
        )
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    buffers = {name: buffer.detach().clone() for name, buffer in module.named_buffers()}
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(seed)
        reset()
        for name, buffer in module.named_buffers():
            if name in buffers:
                buffer.copy_(buffers[name])


def _reinit_scripted(module: nn.Module, kind: str, scheme: str, generator: torch.Generator) -> bool:
    """Re-initialize a TorchScript layer in place by its ``original_name``; False: not a known layer."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if kind in _SCRIPT_NORM:
        with torch.no_grad():
            if weight is not None:
                weight.fill_(1.0)
            if bias is not None:
                bias.zero_()
        return True
    if (kind not in _SCRIPT_CONV_ANY and kind != "Linear") or weight is None:
        return False
    if kind in _SCRIPT_CONV and scheme == "monai-densenet":
        _draw(weight, generator, nn.init.kaiming_normal_)
    elif kind in _SCRIPT_CONV and scheme == "monai-resnet":
        _draw(weight, generator, nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu")
    else:
        _draw(weight, generator, nn.init.kaiming_uniform_, a=math.sqrt(5))
    if bias is not None:
        if kind == "Linear" and scheme in ("monai-densenet", "monai-resnet"):
            with torch.no_grad():
                bias.zero_()
        else:
            _default_bias(module, generator)
    return True


def _reinitializable(module: nn.Module) -> bool:
    """Whether :func:`_reinit_one` can redraw ``module``'s own parameters."""
    scripted = _script_name(module)
    if scripted is not None:
        return scripted in _SCRIPT_NORM or scripted in _SCRIPT_CONV_ANY or scripted == "Linear"
    if isinstance(module, (_ConvNd, nn.Linear, *_NORM_TYPES)):
        return True
    return callable(getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None))


def unsupported_modules(model: nn.Module, blocks: Sequence[tuple[str, Sequence[str] | str]]) -> list[str]:
    """Names of the modules in ``blocks`` that own parameters :func:`reinitialize` cannot redraw (e.g. a
    TorchScript layer of an unknown type, a ``torch.export`` graph module); empty when all can be."""
    modules = dict(model.named_modules())
    found = []
    for _, names in _validate(model, blocks):
        for name in names:
            for sub_name, sub in modules[name].named_modules(prefix=name):
                if any(True for _ in sub.parameters(recurse=False)) and not _reinitializable(sub):
                    found.append(sub_name)
    return list(dict.fromkeys(found))


def _reinit_one(module: nn.Module, scheme: str, generator: torch.Generator) -> None:
    scripted = _script_name(module)
    if scripted is not None and _reinit_scripted(module, scripted, scheme, generator):
        return
    if scheme == "inception-v3" and isinstance(module, (nn.Conv2d, nn.Linear)):
        _draw(module.weight, generator, nn.init.trunc_normal_, mean=0.0, std=0.1, a=-2.0, b=2.0)
        if module.bias is not None:
            _default_bias(module, generator)
        return
    if isinstance(module, _ConvNd):
        if scheme == "monai-densenet" and isinstance(module, _CONV_TYPES):
            _draw(module.weight, generator, nn.init.kaiming_normal_)
        elif scheme == "monai-resnet" and isinstance(module, _CONV_TYPES):
            _draw(module.weight, generator, nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu")
        else:
            _draw(module.weight, generator, nn.init.kaiming_uniform_, a=math.sqrt(5))
        if module.bias is not None:
            _default_bias(module, generator)
    elif isinstance(module, nn.Linear):
        _draw(module.weight, generator, nn.init.kaiming_uniform_, a=math.sqrt(5))
        if module.bias is not None:
            if scheme in ("monai-densenet", "monai-resnet"):
                with torch.no_grad():
                    module.bias.zero_()
            else:
                _default_bias(module, generator)
    elif isinstance(module, _NORM_TYPES):
        with torch.no_grad():  # affine parameters only: running statistics are kept
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    else:
        _fallback(module, generator)


def _reinit_modules(targets: Sequence[tuple[nn.Module, str]], generator: torch.Generator) -> None:
    """Re-initialize every module owning parameters directly, descendants before ancestors, each once."""
    seen: set[int] = set()
    owners: list[tuple[nn.Module, str]] = []
    for module, inherited in targets:
        schemes = _scheme_map(module, inherited)
        for name, sub in module.named_modules():
            if id(sub) in seen or not any(True for _ in sub.parameters(recurse=False)):
                continue
            seen.add(id(sub))
            owners.append((sub, schemes[name]))
    # Reverse pre-order puts every module after its descendants: a parent's own initializer (a
    # fallback reset_parameters touching children) wins, as a constructor's init loop runs last.
    for sub, scheme in reversed(owners):
        _reinit_one(sub, scheme, generator)


def reinitialize(module: nn.Module, generator: torch.Generator, *, scheme: str | None = None) -> None:
    """Re-run the original initializer of every parameter of ``module``, in place.

    Conv / Linear / norm layers are redrawn as their network's constructor initialized them (see
    :data:`INIT_SCHEMES`); other parameterized layers through their ``reset_parameters()`` under a
    global RNG forked and seeded from ``generator`` (the caller's global RNG state is untouched).
    Norm running statistics (and every other buffer) are kept.

    Args:
        module: a network or a part of one.
        generator: source of every random draw; its device is where values are drawn.
        scheme: key of :data:`INIT_SCHEMES` for modules without a known-family ancestor inside
            ``module``. None: :func:`init_scheme` of ``module`` itself; pass
            ``init_scheme(model)`` when ``module`` is a block of a MONAI network ``model``.

    Raises:
        TypeError: a module owning parameters has no ``reset_parameters()`` and is of no known type.
        ValueError: unknown scheme.
    """
    scheme = scheme or init_scheme(module)
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; known: {', '.join(INIT_SCHEMES)}")
    _reinit_modules([(module, scheme)], generator)


def stage_generator(seed: int, stage: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The ``torch.Generator`` of stage ``stage`` (1-based) for ``seed``, seeded from ``SeedSequence([seed, stage])``.

    Raises:
        ValueError: negative seed or stage.
    """
    if seed < 0 or stage < 0:
        raise ValueError(f"seed and stage must be non-negative, got {seed}, {stage}")
    state = int(np.random.SeedSequence([int(seed), int(stage)]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state)


def cascading_randomization(
    model: nn.Module,
    blocks: Sequence[tuple[str, Sequence[str] | str]] | None = None,
    *,
    seed: int = 0,
    include_stem: bool = True,
) -> Iterator[tuple[str, nn.Module]]:
    """Cumulative top-down re-initialization: ``("original", copy)``, then one state per block.

    State ``k`` (label of block ``k``) has blocks ``1..k`` re-initialized (:func:`reinitialize`,
    with the scheme of each module's network family) and all else as in ``model``. Block ``k`` is
    redrawn from :func:`stage_generator` ``(seed, k)`` when state ``k`` is made and keeps those
    weights in later states, so the same seed gives identical weights at every stage and state
    ``k`` does not depend on how many states follow it.

    Args:
        model: the trained network; never modified.
        blocks: stages ``[(label, [module names])]``; None: :func:`named_blocks`.
        seed: non-negative randomization seed (record it: :func:`randomization_settings`).
        include_stem: passed to :func:`named_blocks` when ``blocks`` is None.

    Yields:
        ``(label, state)``: each state a new deep copy in eval mode, on the model's device.

    Raises:
        ValueError: no blocks, or a block names a module that does not exist.
    """
    stages = _validate(model, blocks) if blocks is not None else named_blocks(model, include_stem=include_stem)
    if not stages:
        raise ValueError("no blocks to randomize")
    working = copy_model(model)
    modules = dict(working.named_modules())
    schemes = _scheme_map(working)
    yield _ORIGINAL, copy_model(working).eval()
    for index, (label, names) in enumerate(stages, start=1):
        _reinit_modules([(modules[name], schemes[name]) for name in names], stage_generator(seed, index))
        yield label, copy_model(working).eval()


def randomization_settings(
    model: nn.Module | None = None,
    blocks: Sequence[tuple[str, Sequence[str] | str]] | None = None,
    *,
    seed: int = 0,
    include_stem: bool = True,
) -> dict[str, Any]:
    """The randomization protocol as a JSON-able dict for reports.

    Args:
        model: the network (for its block list and init schemes); may be None when ``blocks`` is given.
        blocks: the stages used, if not :func:`named_blocks` of ``model``.
        seed: the randomization seed.
        include_stem: as passed to :func:`cascading_randomization`.

    Returns:
        ``granularity``, ``order``, ``include_stem`` (requested), ``stem_randomized`` (a stage is
        labelled "stem"), ``blocks`` (``[{"label", "modules"}]`` or None), ``n_states`` (original
        included), ``init_schemes`` (``{scheme: description}`` used by the blocks' modules),
        ``norm_running_stats`` ("kept"), ``seed``, ``stage_seeding``, ``reference``.
    """
    stages: Blocks | None = None
    if blocks is not None:
        stages = _validate(model, blocks) if model is not None else [(lbl, list(n)) for lbl, n in blocks]
    elif model is not None:
        stages = named_blocks(model, include_stem=include_stem)
    schemes: dict[str, str] = {}
    if model is not None and stages is not None:
        scheme_of = _scheme_map(model)
        modules = dict(model.named_modules())
        for _, names in stages:
            for name in names:
                inner = _scheme_map(modules[name], scheme_of[name])
                for sub_name, sub in modules[name].named_modules():
                    if any(True for _ in sub.parameters(recurse=False)):
                        schemes[inner[sub_name]] = INIT_SCHEMES[inner[sub_name]]
    return {
        "granularity": GRANULARITY,
        "order": "cumulative top-down (state k: blocks 1..k re-initialized)",
        "include_stem": include_stem,
        "stem_randomized": None if stages is None else any(label == "stem" for label, _ in stages),
        "blocks": None if stages is None else [{"label": label, "modules": names} for label, names in stages],
        "n_states": None if stages is None else len(stages) + 1,
        "init": "each layer's own initializer (the network constructor's scheme)",
        "init_schemes": dict(sorted(schemes.items())),
        "norm_running_stats": NORM_RUNNING_STATS,
        "seed": seed,
        "stage_seeding": "stage k draws from torch.Generator seeded with numpy SeedSequence([seed, k])",
        "reference": "Adebayo et al. 2018, Sanity Checks for Saliency Maps (cascading randomization)",
    }
