"""The eight saliency methods of Arun et al. 2020, batched, for 2-D and 3-D torch classifiers.

:func:`explain` computes post-processed maps ``(B, *spatial)`` in [0, 1] for one method:

=====================  ==========================================================================
method                 ``"paper"`` preset (the paper's code)
=====================  ==========================================================================
gradient               captum ``Saliency`` (signed; the absolute value is taken in post-processing)
smoothgrad             mean of **squared** gradients over 25 noisy copies, noise sigma
                       ``0.15 * (max - min)`` of each image (PAIR ``GetSmoothedMask``, magnitude)
integrated_gradients   10 steps from the image's minimum ("black" in preprocessed space), alphas
                       ``linspace(0, 1, 10)`` with equal weights 1/10, times ``x - baseline``
smoothgrad_ig          mean of squared IG maps over 25 noisy copies (250 passes)
gradcam                captum ``LayerGradCam`` with ReLU, divided by its maximum, bilinear
                       (trilinear in 3-D) upsampling
guided_backprop        captum ``GuidedBackprop``
guided_gradcam         product of the post-processed GBP and Grad-CAM maps, then min-max
xrai                   IG from the image's min and max constant images (100 steps each), averaged,
                       channel max, then :func:`saliency.xrai.segments` and
                       :func:`saliency.xrai.xrai_map` (2-D only)
=====================  ==========================================================================

The ``"captum"`` preset uses captum's own defaults instead (``Saliency(abs=True)``,
``NoiseTunnel`` smoothgrad with 5 samples of absolute sigma 1.0, ``IntegratedGradients`` with 50
Gauss-Legendre steps from a zero baseline, ``LayerGradCam`` without ReLU and nearest upsampling,
captum's ``GuidedGradCam``); XRAI is the same in both. Every knob is a field of
:class:`MethodSettings` (``method_settings(method, preset, **overrides)``), and every map goes
through the method's :class:`~saliency.postprocess.PostProcess` (the paper's map chain).

Why IG is hand-written: PAIR's IG (which Arun et al. used) evaluates the gradient at
``alpha = linspace(0, 1, steps)`` *including both ends*, with equal weights ``1 / steps``. No captum
rule does this: ``riemann_trapezoid`` uses the same alphas but halves the end weights,
``riemann_left/right/middle`` shift the alphas and ``gausslegendre`` uses Legendre nodes. The
``"batched"`` implementation therefore builds the path points itself and evaluates them in chunks
of ``batch_size`` (noise samples x steps x baselines of several images per forward/backward pass);
it also accepts any captum rule (``integration="gausslegendre"`` etc.), which the tests use to
check it against captum's ``IntegratedGradients``.

Framework hazards handled here: the model is deep-copied, every module with an
``inplace`` flag (in-place ReLUs of the MONAI DenseNets and ResNets) is switched to out-of-place in
the copy, and the copy is put in eval mode with frozen parameters. The caller's model is never
modified. Captum's guided backprop hooks every ``nn.ReLU`` *call* (a pre-hook and a forward hook per
call), so MONAI ResNet blocks, which reuse one ``act`` ReLU twice, are guided at both uses (the tests
compare it with a guided-ReLU autograd function). Functional ReLUs (``F.relu``) cannot be hooked;
a model without any ``nn.ReLU`` module triggers a warning for the guided methods.

Noise: SmoothGrad noise comes from a ``torch.Generator`` seeded with ``seed``; every image gets the
same standard-normal draws (scaled by its own sigma), so an image's map depends only on the model,
the image, the settings and the seed, not on its batch or its position in it. The captum
implementation seeds torch's global generator (inside ``torch.random.fork_rng``) before each image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.networks.nets import DenseNet, ResNet

from medimg.models import gradcam_layer, unwrap_model
from saliency.postprocess import PostProcess, postprocess

__all__ = [
    "LABELS",
    "METHODS",
    "PRESETS",
    "MapBatch",
    "MethodSettings",
    "default_layer",
    "explain",
    "method_settings",
    "passes_per_image",
    "supports_3d",
]

METHODS: tuple[str, ...] = (
    "gradient",
    "smoothgrad",
    "integrated_gradients",
    "smoothgrad_ig",
    "gradcam",
    "guided_backprop",
    "guided_gradcam",
    "xrai",
)
LABELS: dict[str, str] = {
    "gradient": "Gradient",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated Gradients",
    "smoothgrad_ig": "SmoothGrad-IG",
    "gradcam": "Grad-CAM",
    "guided_backprop": "Guided Backprop",
    "guided_gradcam": "Guided Grad-CAM",
    "xrai": "XRAI",
}
PRESETS: tuple[str, ...] = ("paper", "captum")

#: IG alpha rule of PAIR ``saliency`` (2020): linspace(0, 1, steps) with equal weights 1/steps.
RIEMANN_EQUAL = "riemann_equal"
_CAPTUM_RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
_IMPLEMENTATIONS = ("batched", "captum")
_NT_TYPES = ("smoothgrad", "smoothgrad_sq")
_COMBINES = ("postprocessed", "captum")
_INTERPOLATIONS = ("linear", "nearest", "area")
_NOISE_METHODS = ("smoothgrad", "smoothgrad_ig")
_IG_METHODS = ("integrated_gradients", "smoothgrad_ig", "xrai")
# Fields reported by MethodSettings.to_dict, per method (method, label, preset, postprocess always).
_RELEVANT: dict[str, tuple[str, ...]] = {
    "gradient": ("abs_gradient",),
    "smoothgrad": ("samples", "noise", "noise_relative", "nt_type", "abs_gradient", "implementation"),
    "integrated_gradients": ("steps", "baseline", "integration", "implementation"),
    "smoothgrad_ig": ("samples", "noise", "noise_relative", "nt_type", "steps", "baseline", "integration",
                      "implementation"),
    "gradcam": ("relu", "cam_normalize", "interpolation"),
    "guided_backprop": (),
    "guided_gradcam": ("combine", "relu", "cam_normalize", "interpolation", "component_postprocess"),
    "xrai": ("steps", "baseline", "integration", "xrai"),
}  # fmt: skip


@dataclass(frozen=True)
class MethodSettings:
    """Every knob of one saliency method (build it with :func:`method_settings`).

    Attributes:
        method: one of :data:`METHODS`.
        preset: the preset it was built from (:data:`PRESETS`), for the report.
        postprocess: the chain that turns the raw attribution into the final map (for
            ``guided_gradcam`` in ``"postprocessed"`` mode: the chain applied to the product).
        samples: noisy copies per image (SmoothGrad, SmoothGrad-IG).
        noise: noise standard deviation: a fraction of each image's ``max - min`` (in the space
            the model sees) when ``noise_relative``, else absolute.
        noise_relative: see ``noise``.
        nt_type: ``"smoothgrad_sq"`` (mean of squared maps, PAIR's ``magnitude=True``) or
            ``"smoothgrad"`` (mean of maps).
        abs_gradient: absolute value of each gradient before averaging (captum ``Saliency(abs=)``).
        steps: Integrated-Gradients steps (per baseline for XRAI).
        baseline: IG baseline: ``"min"`` / ``"max"`` (constant image at the image's minimum /
            maximum over all channels), ``"zero"``, or a number. XRAI: a pair, averaged.
        integration: IG rule: ``"riemann_equal"`` (PAIR: alphas ``linspace(0, 1, steps)``, equal
            weights) or a captum rule (``"gausslegendre"``, ``"riemann_trapezoid"``, ...).
        implementation: ``"batched"`` (this module's chunked code) or ``"captum"`` (captum's
            ``NoiseTunnel`` / ``IntegratedGradients``, which cannot do ``"riemann_equal"``).
        relu: Grad-CAM ReLU on the weighted channel sum (captum ``relu_attributions``).
        cam_normalize: divide the Grad-CAM map by its maximum before upsampling (PAIR); a map whose
            maximum is not positive (e.g. all zero after the ReLU) becomes NaN, i.e. degenerate.
        interpolation: Grad-CAM upsampling: ``"linear"`` (bilinear in 2-D, trilinear in 3-D),
            ``"nearest"`` or ``"area"``.
        combine: Guided Grad-CAM: ``"postprocessed"`` (paper: product of the post-processed GBP
            and Grad-CAM maps) or ``"captum"`` (captum ``GuidedGradCam``: raw GBP x upsampled CAM).
        component_postprocess: Guided Grad-CAM ``"postprocessed"``: the chain applied to the GBP
            and Grad-CAM maps before they are multiplied.
        xrai: overrides of :class:`saliency.xrai.XraiSettings` (``steps`` comes from ``steps``).
    """

    method: str
    preset: str = "paper"
    postprocess: PostProcess = PostProcess()
    samples: int = 1
    noise: float = 0.0
    noise_relative: bool = True
    nt_type: str = "smoothgrad_sq"
    abs_gradient: bool = False
    steps: int = 1
    baseline: str | float | tuple[str | float, ...] = "min"
    integration: str = RIEMANN_EQUAL
    implementation: str = "batched"
    relu: bool = True
    cam_normalize: bool = True
    interpolation: str = "linear"
    combine: str = "postprocessed"
    component_postprocess: PostProcess = PostProcess()
    xrai: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"unknown method {self.method!r}; known: {', '.join(METHODS)}"),
            (self.preset in PRESETS, f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}"),
            (self.samples >= 1, f"samples must be >= 1, got {self.samples}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.noise >= 0, f"noise must be >= 0, got {self.noise}"),
            (self.nt_type in _NT_TYPES, f"nt_type must be one of {_NT_TYPES}, got {self.nt_type!r}"),
            (
                self.integration in (RIEMANN_EQUAL, *_CAPTUM_RULES),
                f"integration must be one of {(RIEMANN_EQUAL, *_CAPTUM_RULES)}, got {self.integration!r}",
            ),
            (
                self.implementation in _IMPLEMENTATIONS,
                f"implementation must be one of {_IMPLEMENTATIONS}, got {self.implementation!r}",
            ),
            (
                not (
                    self.implementation == "captum" and self.integration == RIEMANN_EQUAL and self.method in _IG_METHODS
                ),
                "captum has no equal-weight Riemann rule; use implementation='batched' for integration='riemann_equal'",
            ),
            (
                self.interpolation in _INTERPOLATIONS,
                f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}",
            ),
            (self.combine in _COMBINES, f"combine must be one of {_COMBINES}, got {self.combine!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        baselines = self.baseline if isinstance(self.baseline, tuple) else (self.baseline,)
        for value in baselines:
            if isinstance(value, str) and value not in ("min", "max", "zero"):
                raise ValueError(f"baseline must be 'min', 'max', 'zero' or a number, got {value!r}")
        object.__setattr__(self, "xrai", dict(self.xrai))
        if self.xrai:
            if "steps" in self.xrai:
                raise ValueError("set the XRAI IG steps with steps=, not inside xrai=")
            from saliency.xrai import XraiSettings

            XraiSettings(**self.xrai)  # raises on unknown or invalid options

    def __hash__(self) -> int:  # the xrai overrides are a dict: hash them as sorted items
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        values[-1] = tuple(sorted(self.xrai.items()))
        return hash(tuple(values))

    def to_dict(self) -> dict[str, Any]:
        """The method's relevant settings as a JSON-able dict (for reports)."""
        out: dict[str, Any] = {"method": self.method, "label": LABELS[self.method], "preset": self.preset}
        for name in _RELEVANT[self.method]:
            value = getattr(self, name)
            if isinstance(value, PostProcess):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            out[name] = value
        out["postprocess"] = self.postprocess.to_dict()
        out["passes_per_image"] = passes_per_image(self)
        return out


_MAP_2D = PostProcess(channel_reduce=None)
_PRODUCT = PostProcess(abs=False, channel_reduce=None, clip_percentile=None, minmax=True)

_PAPER: dict[str, dict[str, Any]] = {
    "gradient": {},
    "smoothgrad": {"samples": 25, "noise": 0.15, "nt_type": "smoothgrad_sq"},
    "integrated_gradients": {"steps": 10, "baseline": "min"},
    "smoothgrad_ig": {"samples": 25, "noise": 0.15, "nt_type": "smoothgrad_sq", "steps": 10, "baseline": "min"},
    "gradcam": {"relu": True, "cam_normalize": True, "interpolation": "linear"},
    "guided_backprop": {},
    "guided_gradcam": {"combine": "postprocessed", "postprocess": _PRODUCT},
    "xrai": {"steps": 100, "baseline": ("min", "max"), "postprocess": _MAP_2D},
}
_CAPTUM_IG = {"steps": 50, "baseline": "zero", "integration": "gausslegendre", "implementation": "captum"}
_CAPTUM_NOISE = {"samples": 5, "noise": 1.0, "noise_relative": False, "nt_type": "smoothgrad"}
_CAPTUM: dict[str, dict[str, Any]] = {
    "gradient": {"abs_gradient": True},
    "smoothgrad": {**_CAPTUM_NOISE, "abs_gradient": True, "implementation": "captum"},
    "integrated_gradients": _CAPTUM_IG,
    "smoothgrad_ig": {**_CAPTUM_NOISE, **_CAPTUM_IG},
    "gradcam": {"relu": False, "cam_normalize": False, "interpolation": "nearest"},
    "guided_backprop": {},
    "guided_gradcam": {"combine": "captum", "relu": True, "cam_normalize": False, "interpolation": "nearest"},
    "xrai": _PAPER["xrai"],
}
_POSTPROCESS_FIELDS = tuple(f.name for f in dataclasses.fields(PostProcess))


def method_settings(method: str, preset: str = "paper", **overrides: Any) -> MethodSettings:
    """The settings of ``method`` under ``preset``, with optional overrides.

    Args:
        method: one of :data:`METHODS`.
        preset: ``"paper"`` (Arun et al. 2020, PAIR semantics) or ``"captum"`` (captum defaults).
        **overrides: :class:`MethodSettings` fields (e.g. ``samples=5``), or the
            :class:`~saliency.postprocess.PostProcess` fields ``abs``, ``channel_reduce``,
            ``clip_percentile``, ``minmax``, which replace those of ``postprocess``.

    Raises:
        ValueError: unknown method, preset or field, or an invalid value.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(MethodSettings)} - {"method", "preset"}
    unknown = sorted(set(overrides) - names - set(_POSTPROCESS_FIELDS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(names | set(_POSTPROCESS_FIELDS))}")
    values = dict((_PAPER if preset == "paper" else _CAPTUM)[method])
    values.update({k: v for k, v in overrides.items() if k in names})
    pp_overrides = {k: v for k, v in overrides.items() if k in _POSTPROCESS_FIELDS}
    if pp_overrides:
        values["postprocess"] = dataclasses.replace(values.get("postprocess", PostProcess()), **pp_overrides)
    if isinstance(values.get("baseline"), list):
        values["baseline"] = tuple(values["baseline"])
    return MethodSettings(method=method, preset=preset, **values)


def passes_per_image(settings: MethodSettings) -> int:
    """Forward + backward passes one image costs in principle (batching aside).

    Gradient, Guided Backprop and Grad-CAM 1; SmoothGrad ``samples`` (25); IG ``steps`` (10);
    SmoothGrad-IG ``samples * steps`` (250); XRAI ``2 * steps`` (200); Guided Grad-CAM 2.
    """
    method = settings.method
    if method == "smoothgrad":
        return settings.samples
    if method == "integrated_gradients":
        return settings.steps
    if method == "smoothgrad_ig":
        return settings.samples * settings.steps
    if method == "xrai":
        return len(_baseline_specs(settings)) * settings.steps
    if method == "guided_gradcam":
        return 2
    return 1


def supports_3d(method: str) -> bool:
    """Whether ``method`` works on 3-D volumes: all but XRAI (Felzenszwalb segmentation is 2-D)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return method != "xrai"


@dataclass
class MapBatch:
    """Post-processed saliency maps of a batch.

    Attributes:
        maps: ``(B, *spatial)`` float32 in [0, 1], NaN where degenerate.
        degenerate: ``(B,)`` bool: non-finite or constant raw map (or Grad-CAM without positive
            evidence), see :func:`saliency.postprocess.postprocess`.
        targets: ``(B,)`` int64 explained class per image.
        raw: ``(B, C, *spatial)`` float32 raw attribution before post-processing (``C = 1`` for
            Grad-CAM and XRAI); None for Guided Grad-CAM in ``"postprocessed"`` mode.
        settings: the settings used (an addition to the interface contract, for reports).
    """

    maps: np.ndarray
    degenerate: np.ndarray
    targets: np.ndarray
    raw: np.ndarray | None
    settings: MethodSettings | None = None


# ---------------------------------------------------------------------------------------------
# model preparation, layer and target resolution


def _working_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode, parameters frozen, every in-place module switched to out-of-place."""
    from saliency.randomization import copy_model

    work = copy_model(unwrap_model(model))
    for module in work.modules():
        # A TorchScript layer's ``inplace`` is a compiled constant (its autograd handles it as it is).
        if getattr(module, "inplace", False) is True and not isinstance(module, torch.jit.ScriptModule):
            module.inplace = False
    work.eval()
    for parameter in work.parameters():
        parameter.requires_grad_(False)
    return work


def default_layer(model: torch.nn.Module) -> str:
    """The Grad-CAM layer name for a MONAI DenseNet (``"class_layers.relu"``) or ResNet (``"layer4"``).

    These are the names :func:`medimg.models.gradcam_layer` gives. Other models have no named
    default: :func:`explain` then uses the *input* of the last adaptive (global) pooling module.

    Raises:
        ValueError: not a MONAI DenseNet or ResNet.
    """
    model = unwrap_model(model)
    layer = getattr(model, "gradcam_layer", None)  # e.g. saliency.attention.AttentionClassifier
    if isinstance(layer, str):
        return layer
    if isinstance(model, DenseNet):
        return gradcam_layer("compact")
    if isinstance(model, ResNet):
        return gradcam_layer("resnet18")
    raise ValueError(f"no default Grad-CAM layer for {type(model).__name__}; pass layer=")


_GLOBAL_POOLS = (
    torch.nn.AdaptiveAvgPool1d,
    torch.nn.AdaptiveAvgPool2d,
    torch.nn.AdaptiveAvgPool3d,
    torch.nn.AdaptiveMaxPool1d,
    torch.nn.AdaptiveMaxPool2d,
    torch.nn.AdaptiveMaxPool3d,
)


def _resolve_layer(work: torch.nn.Module, layer: str | None) -> tuple[torch.nn.Module, bool]:
    """``(module, attribute_to_layer_input)`` for Grad-CAM on the working copy."""
    modules = dict(work.named_modules())
    if layer is not None:
        if layer not in modules:
            raise ValueError(f"no layer named {layer!r} in the model")
        return modules[layer], False
    with contextlib.suppress(ValueError):
        return modules[default_layer(work)], False
    pools = [m for m in modules.values() if isinstance(m, _GLOBAL_POOLS)]
    if not pools:
        raise ValueError(
            f"cannot find a Grad-CAM layer in {type(work).__name__} (no adaptive pooling module); pass layer="
        )
    return pools[-1], True


def _resolve_targets(work: torch.nn.Module, images: torch.Tensor, target: Any, batch_size: int) -> torch.Tensor:
    count = images.shape[0]
    if target is None:
        with torch.no_grad():
            logits = torch.cat([work(chunk) for chunk in images.split(batch_size)])
        return logits.argmax(dim=1)
    if isinstance(target, (int, np.integer)):
        return torch.full((count,), int(target), dtype=torch.long, device=images.device)
    values = torch.as_tensor(np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target))
    values = values.to(torch.long).reshape(-1).to(images.device)
    if values.numel() != count:
        raise ValueError(f"target has {values.numel()} entries for {count} images")
    return values


def _device(work: torch.nn.Module) -> torch.device:
    parameter = next(work.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence captum's "Setting backward hooks on ReLU activations" and similar warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*backward hooks.*")
        warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="captum")
        yield


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generator for captum's noise, restoring the previous state afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------
# Integrated Gradients / SmoothGrad, batched


def _baseline_specs(settings: MethodSettings) -> tuple[str | float, ...]:
    return settings.baseline if isinstance(settings.baseline, tuple) else (settings.baseline,)


def _baseline(images: torch.Tensor, spec: str | float) -> torch.Tensor:
    """Constant baseline images ``(B, C, *spatial)``: the image's min or max, zero, or a number."""
    if spec == "zero":
        return torch.zeros_like(images)
    if spec in ("min", "max"):
        flat = images.flatten(1)
        value = flat.min(dim=1).values if spec == "min" else flat.max(dim=1).values
        return value.view(-1, *([1] * (images.ndim - 1))).expand_as(images).clone()
    return torch.full_like(images, float(spec))


def _alphas(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alphas, weights)`` of an IG rule; ``"riemann_equal"``: linspace(0, 1, steps), weights 1/steps."""
    if rule == RIEMANN_EQUAL:
        return torch.linspace(0.0, 1.0, steps, dtype=torch.float64), torch.full((steps,), 1.0 / steps)
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters(rule)
    return torch.tensor(alphas(steps), dtype=torch.float64), torch.tensor(step_sizes(steps), dtype=torch.float64)


def _noise_sigma(images: torch.Tensor, settings: MethodSettings) -> torch.Tensor:
    """Per-image noise standard deviation ``(B,)``."""
    if not settings.noise_relative:
        return torch.full((images.shape[0],), float(settings.noise), device=images.device)
    flat = images.flatten(1)
    return settings.noise * (flat.max(dim=1).values - flat.min(dim=1).values)


def _path_gradients(
    work: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    samples: int,
    sigma: torch.Tensor | None,
    seed: int,
    baselines: list[torch.Tensor] | None,
    alphas: torch.Tensor,
    weights: torch.Tensor,
    abs_each: bool,
    square_each: bool,
    batch_size: int,
) -> torch.Tensor:
    """Gradient, SmoothGrad, IG and SmoothGrad-IG in chunks of ``batch_size`` forward/backward items.

    For image ``i``, noise sample ``s`` (``x_s = x_i + sigma_i * n_s``; ``x_s = x_i`` without
    noise) and baseline ``b_j``, the variant's map is ``(x_s - b_j) * sum_k w_k grad(b_j + a_k
    (x_s - b_j))`` (with baselines) or ``grad(x_s)`` (without); optionally its absolute value or
    square; the result is the mean over the ``samples * len(baselines)`` variants. The work items
    ``(image, variant, step)`` are enumerated in that order and cut into chunks, so a chunk mixes
    the steps and samples of consecutive images.

    Returns:
        ``(B, C, *spatial)`` float32 on the CPU.
    """
    count, shape = images.shape[0], images.shape[1:]
    n_base = len(baselines) if baselines is not None else 1
    n_steps = alphas.numel() if baselines is not None else 1
    variants = samples * n_base
    per_image = variants * n_steps
    noise = None
    if sigma is not None:
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((samples, *shape), generator=generator).to(images.device, images.dtype)
    stacked = torch.stack(baselines) if baselines is not None else None  # (J, B, C, *spatial)
    alphas = alphas.to(images.device, images.dtype)
    weights = weights.to(images.device, images.dtype)
    unsqueeze = (-1,) + (1,) * len(shape)
    out = torch.zeros_like(images)
    partial: dict[int, torch.Tensor] = {}
    total = count * per_image
    for start in range(0, total, batch_size):
        index = torch.arange(start, min(total, start + batch_size), device=images.device)
        image, variant, step = index // per_image, (index // n_steps) % variants, index % n_steps
        sample, base = variant // n_base, variant % n_base
        x = images[image]
        if noise is not None:
            x = x + sigma[image].view(unsqueeze) * noise[sample]
        if stacked is not None:
            b = stacked[base, image]
            points = b + alphas[step].view(unsqueeze) * (x - b)
        else:
            b, points = None, x
        points = points.detach().requires_grad_(True)
        with torch.enable_grad():
            selected = work(points).gather(1, targets[image].view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(selected, points)
        if stacked is not None:
            grads = grads * weights[step].view(unsqueeze)
        groups, counts = torch.unique_consecutive(index // n_steps, return_counts=True)
        offset = 0
        for group, size in zip(groups.tolist(), counts.tolist(), strict=True):
            end = offset + size
            acc = grads[offset:end].sum(dim=0)
            partial[group] = partial[group] + acc if group in partial else acc
            if int(step[end - 1]) == n_steps - 1:  # the variant is complete
                attribution = partial.pop(group)
                if b is not None:
                    attribution = attribution * (x[offset] - b[offset])
                if abs_each:
                    attribution = attribution.abs()
                if square_each:
                    attribution = attribution.square()
                out[group // variants] += attribution / variants
            offset = end
    return out.detach().float().cpu()


def _batched_attribution(
    work: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: MethodSettings,
    *,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    method = settings.method
    noisy = method in _NOISE_METHODS
    integrated = method in _IG_METHODS
    alphas, weights = _alphas(settings.integration, settings.steps) if integrated else (torch.ones(1), torch.ones(1))
    return _path_gradients(
        work,
        images,
        targets,
        samples=settings.samples if noisy else 1,
        sigma=_noise_sigma(images, settings) if noisy else None,
        seed=seed,
        baselines=[_baseline(images, spec) for spec in _baseline_specs(settings)] if integrated else None,
        alphas=alphas,
        weights=weights,
        abs_each=settings.abs_gradient and not integrated,
        square_each=noisy and settings.nt_type == "smoothgrad_sq",
        batch_size=batch_size,
    )


def _captum_attribution(
    work: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: MethodSettings,
    *,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    """SmoothGrad / IG / SmoothGrad-IG through captum's own classes (the ``"captum"`` implementation)."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    method = settings.method
    integrated = method in _IG_METHODS
    base = _baseline(images, _baseline_specs(settings)[0]) if integrated else None
    ig_kwargs: dict[str, Any] = {"n_steps": settings.steps, "method": settings.integration}
    outputs = []
    if method == "integrated_gradients":
        ig = IntegratedGradients(work)
        chunk = max(1, batch_size // settings.steps)
        for start in range(0, images.shape[0], chunk):
            sl = slice(start, start + chunk)
            x = images[sl]
            with _quiet():
                attribution = ig.attribute(
                    x,
                    baselines=base[sl],
                    target=targets[sl],
                    internal_batch_size=max(batch_size, x.shape[0]),
                    **ig_kwargs,
                )
            outputs.append(attribution)
        return torch.cat(outputs).detach().float().cpu()
    # Noise methods: one captum call per image, torch's generator reseeded each time, so that the
    # noise (and the map) of an image does not depend on the batch.
    tunnel = NoiseTunnel(IntegratedGradients(work) if integrated else Saliency(work))
    sigma = _noise_sigma(images, settings)
    per_sample = settings.steps if integrated else 1
    nt_batch = max(1, min(settings.samples, batch_size // per_sample))
    for i in range(images.shape[0]):
        kwargs: dict[str, Any] = {
            "nt_type": settings.nt_type,
            "nt_samples": settings.samples,
            "nt_samples_batch_size": nt_batch,
            "stdevs": float(sigma[i]),
            "target": targets[i : i + 1],
        }
        if integrated:
            kwargs.update(ig_kwargs, baselines=base[i : i + 1], internal_batch_size=max(batch_size, nt_batch))
        else:
            kwargs["abs"] = settings.abs_gradient
        with _seeded(seed, images.device), _quiet():
            outputs.append(tunnel.attribute(images[i : i + 1], **kwargs))
    return torch.cat(outputs).detach().float().cpu()


# ---------------------------------------------------------------------------------------------
# Gradient, Guided Backprop, Grad-CAM


def _chunked(images: torch.Tensor, targets: torch.Tensor, batch_size: int, fn: Any) -> torch.Tensor:
    outputs = [
        fn(images[start : start + batch_size], targets[start : start + batch_size]).detach().float().cpu()
        for start in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(outputs)


def _interpolation_mode(settings: MethodSettings, spatial_dims: int) -> str:
    if settings.interpolation == "linear":
        return {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]
    return settings.interpolation


def _gradcam(
    work: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: MethodSettings,
    *,
    layer: str | None,
    batch_size: int,
) -> torch.Tensor:
    """Grad-CAM ``(B, 1, *spatial)``: captum ``LayerGradCam``, optional divide-by-max, upsampling."""
    from captum.attr import LayerAttribution, LayerGradCam

    module, to_input = _resolve_layer(work, layer)
    cam = LayerGradCam(work, module)
    mode = _interpolation_mode(settings, images.ndim - 2)

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        maps = cam.attribute(x, target=t, relu_attributions=settings.relu, attribute_to_layer_input=to_input)
        maps = maps.detach()
        if settings.cam_normalize:
            peak = maps.flatten(1).max(dim=1).values.view(-1, *([1] * (maps.ndim - 1)))
            # PAIR divides by the maximum; an all-zero map gives 0/0 = NaN (degenerate). A negative
            # maximum (only without ReLU) would flip the sign, so it is marked degenerate too.
            maps = torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.nan)
        return LayerAttribution.interpolate(maps, tuple(x.shape[2:]), interpolate_mode=mode)

    with _quiet():
        return _chunked(images, targets, batch_size, run)


def _warn_without_relu_modules(work: torch.nn.Module) -> None:
    if not any(isinstance(m, torch.nn.ReLU) for m in work.modules()):
        warnings.warn(
            f"{type(work).__name__} has no torch.nn.ReLU module: guided backprop hooks ReLU modules only, so with "
            "functional ReLUs it silently equals the plain gradient",
            RuntimeWarning,
            stacklevel=3,
        )


def _guided_backprop(
    work: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, *, batch_size: int
) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    _warn_without_relu_modules(work)
    gbp = GuidedBackprop(work)
    with _quiet():
        return _chunked(images, targets, batch_size, lambda x, t: gbp.attribute(x, target=t))


def _xrai(
    work: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: MethodSettings,
    *,
    batch_size: int,
    seed: int,
) -> torch.Tensor:
    """XRAI ``(B, 1, H, W)``: averaged two-baseline IG, channel max, Felzenszwalb regions, greedy fill."""
    from saliency import xrai

    xrai_settings = xrai.XraiSettings(**{**settings.xrai, "steps": settings.steps})
    base = _batched_attribution(work, images, targets, settings, batch_size=batch_size, seed=seed)
    attribution = base.max(dim=1).values.double().numpy()  # (B, H, W), signed
    pixels = images.detach().float().cpu().numpy()
    maps = []
    for i in range(images.shape[0]):
        image = pixels[i, 0] if pixels.shape[1] == 1 else pixels[i]
        masks = xrai.segments(image, xrai_settings)
        maps.append(xrai.xrai_map(attribution[i], masks, xrai_settings))
    return torch.as_tensor(np.stack(maps), dtype=torch.float32).unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# public entry point


def _checked_inputs(
    method: str, settings: MethodSettings | None, images: torch.Tensor | np.ndarray, batch_size: int
) -> tuple[MethodSettings, torch.Tensor]:
    """The method's settings (its paper preset by default) and the images as a tensor, after
    refusing what :func:`explain` cannot explain (see its Raises)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    settings = settings if settings is not None else method_settings(method)
    if settings.method != method:
        raise ValueError(f"settings are for {settings.method!r}, not {method!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = torch.as_tensor(images)
    if images.ndim not in (4, 5) or images.shape[0] == 0:
        raise ValueError(f"images must be (B, C, H, W) or (B, C, D, H, W) with B >= 1, got shape {tuple(images.shape)}")
    if method == "xrai" and images.ndim == 5:
        raise ValueError(
            "XRAI is 2-D only: its candidate regions come from Felzenszwalb segmentation of a 2-D image; "
            f"got a 3-D input of shape {tuple(images.shape)}. Use another method or explain 2-D slices"
        )
    return settings, images


def _gradient(
    work: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, settings: MethodSettings, *, batch_size: int
) -> torch.Tensor:
    """Vanilla gradient (captum ``Saliency``), raw."""
    from captum.attr import Saliency

    saliency = Saliency(work)
    with _quiet():
        return _chunked(
            images, targets, batch_size, lambda x, t: saliency.attribute(x, target=t, abs=settings.abs_gradient)
        )


def _captum_guided_gradcam(
    work: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: MethodSettings,
    *,
    layer: str | None,
    batch_size: int,
) -> torch.Tensor:
    """Guided Grad-CAM as captum combines it (``GuidedGradCam``), raw."""
    from captum.attr import GuidedGradCam

    _warn_without_relu_modules(work)
    module, to_input = _resolve_layer(work, layer)
    ggc = GuidedGradCam(work, module)
    mode = _interpolation_mode(settings, images.ndim - 2)
    with _quiet():
        return _chunked(
            images,
            targets,
            batch_size,
            lambda x, t: ggc.attribute(x, target=t, interpolate_mode=mode, attribute_to_layer_input=to_input),
        )


def explain(
    model: torch.nn.Module,
    images: torch.Tensor | np.ndarray,
    method: str,
    *,
    settings: MethodSettings | None = None,
    target: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    layer: str | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> MapBatch:
    """Saliency maps of one method for a batch of images.

    Args:
        model: a classifier ``(B, C, *spatial) -> (B, K)`` logits (a ``DataParallel``/DDP wrapper
            is unwrapped). It is not modified: the work happens on a deep copy in eval mode with
            out-of-place activations (so a model in train mode is explained in eval mode).
        images: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` float, in the space the model sees
            (preprocessed); moved to the model's device.
        method: one of :data:`METHODS`.
        settings: defaults to ``method_settings(method, "paper")``; its ``method`` must match.
        target: explained class: None (the predicted class, argmax of the logits, per image), an
            int for all images, or ``B`` ints.
        layer: Grad-CAM / Guided Grad-CAM layer (a module name; its output is used). Default:
            :func:`default_layer` for MONAI DenseNets and ResNets, else the input of the model's
            last adaptive pooling module.
        batch_size: forward/backward items per chunk (images x noise samples x IG steps).
        seed: seed of the SmoothGrad noise.

    Returns:
        :class:`MapBatch`.

    Raises:
        ValueError: unknown method, mismatching settings, bad image shape or targets, XRAI on a
            3-D input, or no Grad-CAM layer found.
    """
    settings, images = _checked_inputs(method, settings, images, batch_size)
    work = _working_copy(model)
    images = images.detach().to(_device(work), torch.float32)
    targets = _resolve_targets(work, images, target, batch_size)
    if target is not None and images.shape[0] > 0:
        with torch.no_grad():
            n_classes = work(images[:1]).shape[1]
        if targets.min() < 0 or targets.max() >= n_classes:
            raise ValueError(f"target classes must lie in [0, {n_classes}), got {targets.tolist()}")

    pp = settings.postprocess
    if method == "gradient":
        raw = _gradient(work, images, targets, settings, batch_size=batch_size)
    elif method in ("smoothgrad", "integrated_gradients", "smoothgrad_ig"):
        compute = _captum_attribution if settings.implementation == "captum" else _batched_attribution
        raw = compute(work, images, targets, settings, batch_size=batch_size, seed=seed)
    elif method == "gradcam":
        raw = _gradcam(work, images, targets, settings, layer=layer, batch_size=batch_size)
    elif method == "guided_backprop":
        raw = _guided_backprop(work, images, targets, batch_size=batch_size)
    elif method == "guided_gradcam" and settings.combine == "captum":
        raw = _captum_guided_gradcam(work, images, targets, settings, layer=layer, batch_size=batch_size)
    elif method == "guided_gradcam":
        gbp_maps, _ = postprocess(
            _guided_backprop(work, images, targets, batch_size=batch_size), settings.component_postprocess
        )
        cam_maps, _ = postprocess(
            _gradcam(work, images, targets, settings, layer=layer, batch_size=batch_size),
            settings.component_postprocess,
        )
        maps, degenerate = postprocess(gbp_maps * cam_maps, pp)
        return MapBatch(maps, degenerate, targets.cpu().numpy().astype(np.int64), None, settings)
    else:  # xrai
        raw = _xrai(work, images, targets, settings, batch_size=batch_size, seed=seed)

    raw_np = raw.numpy()
    if pp.channel_reduce is None:
        if raw_np.shape[1] != 1:
            raise ValueError(
                f"{method}: postprocess without channel reduction needs a single-channel map, got {raw_np.shape[1]}"
            )
        maps, degenerate = postprocess(raw_np[:, 0], pp)
    else:
        maps, degenerate = postprocess(raw_np, pp)
    return MapBatch(maps, degenerate, targets.cpu().numpy().astype(np.int64), raw_np, settings)
