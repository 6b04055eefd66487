"""What a loaded model lets the audit do: the methods that need hooks, and the randomization.

Gradient, SmoothGrad, Integrated Gradients, SmoothGrad-IG and XRAI only need the model to be
differentiable, which every loaded model is (a TorchScript module or a ``torch.export`` program
too). The others need Python hooks:

* Grad-CAM and Guided Grad-CAM hook the *Grad-CAM layer*: the model must name one (a medimg
  architecture, a bundle's or card's ``gradcam_layer``) and that module must run as a Python
  module. Inside a TorchScript module it does not: ``register_forward_hook`` raises
  ("not supported on ScriptModules"); a ``torch.export`` graph may not even keep the module.
* Guided Backprop (and Guided Grad-CAM) hook every ``torch.nn.ReLU`` call; in a compiled graph no
  ReLU is a Python module, and the method would silently equal the plain gradient.

Cascading randomization re-initializes the model's named blocks in place
(:mod:`saliency.randomization`): it works for medimg and bundle networks and for TorchScript
Conv/Linear/norm layers; it cannot redraw layers of unknown type (e.g. a ``torch.export`` graph).

Each check here is made on the model itself (a hook attached, one forward pass), not guessed from
its file type, and returns the reason in words for the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["HOOKED_METHODS", "RELU_METHODS", "method_support", "model_label", "randomization_problem"]

#: Methods that hook the Grad-CAM layer.
HOOKED_METHODS: tuple[str, ...] = ("gradcam", "guided_gradcam")
#: Methods that hook every ``torch.nn.ReLU``.
RELU_METHODS: tuple[str, ...] = ("guided_backprop", "guided_gradcam")

_KINDS = {
    "bundle": "MONAI bundle",
    "torchscript": "TorchScript model",
    "torch.export": "torch.export program",
    "checkpoint": "medimg checkpoint",
}


def model_label(meta: Mapping[str, Any]) -> str:
    """The model's type in words, e.g. ``"TorchScript model (torchscript)"``, for the report's notes."""
    kind = str(meta.get("source", {}).get("kind") or "checkpoint")
    return f"{_KINDS.get(kind, kind)} ({meta.get('architecture')})"


def _forward(model: torch.nn.Module, example: torch.Tensor) -> None:
    with torch.no_grad():
        model(example)


def _layer_problem(model: torch.nn.Module, layer: str | None, example: torch.Tensor) -> str | None:
    """Why the Grad-CAM layer cannot be hooked, or None when a forward hook on it fires."""
    if layer is None:
        return "no Grad-CAM layer is known (the model card or bundle names no gradcam_layer)"
    module = dict(model.named_modules()).get(layer)
    if module is None:
        return f"the Grad-CAM layer {layer!r} is not a module of the loaded model"
    fired: list[bool] = []
    try:
        handle = module.register_forward_hook(lambda *_: fired.append(True))
    except RuntimeError as exc:  # TorchScript: "register_forward_hook is not supported on ScriptModules"
        return f"the Grad-CAM layer {layer!r} is compiled TorchScript, which takes no forward hooks ({exc})"
    try:
        _forward(model, example)
    finally:
        handle.remove()
    return None if fired else f"the Grad-CAM layer {layer!r} is never called as a Python module, so it cannot be hooked"


def _relu_problem(model: torch.nn.Module, example: torch.Tensor) -> str | None:
    """Why guided backprop cannot work, or None when some ``nn.ReLU`` module is called in a forward pass."""
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    fired: list[bool] = []
    handles = [m.register_forward_hook(lambda *_: fired.append(True)) for m in relus]
    try:
        if relus:
            _forward(model, example)
    finally:
        for handle in handles:
            handle.remove()
    if fired:
        return None
    return (
        "no torch.nn.ReLU runs as a Python module (a compiled graph or functional ReLUs), so guided backprop "
        "would equal the plain gradient"
    )


def method_support(model: torch.nn.Module, layer: str | None, example: torch.Tensor) -> dict[str, str]:
    """``{method: why it cannot run}`` for the hook-based methods this model cannot support (empty: all can).

    Args:
        model: the loaded classifier, in eval mode.
        layer: its Grad-CAM layer (:func:`medimg.models.model_gradcam_layer`), None when unknown.
        example: one network input ``(1, C, *spatial)`` for the probing forward pass.
    """
    reasons: dict[str, str] = {}
    problem = _layer_problem(model, layer, example)
    if problem:
        reasons.update(dict.fromkeys(HOOKED_METHODS, problem))
    problem = _relu_problem(model, example)
    if problem:
        for method in RELU_METHODS:
            reasons.setdefault(method, problem)
    return reasons


def randomization_problem(model: torch.nn.Module, *, include_stem: bool = False) -> str | None:
    """Why cascading randomization cannot run on ``model``, or None when every block can be re-initialized."""
    from saliency.randomization import named_blocks, unsupported_modules

    try:
        blocks = named_blocks(model, include_stem=include_stem)
    except (ValueError, AttributeError, TypeError) as exc:
        return f"its randomization blocks cannot be found ({exc})"
    if not blocks:
        return "it has no block of parameters to re-initialize"
    bad = unsupported_modules(model, blocks)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        return (
            f"layer {bad[0]!r}{more} cannot be re-initialized in place (its type is unknown: no Conv, Linear or "
            "norm layer and no reset_parameters())"
        )
    return None
