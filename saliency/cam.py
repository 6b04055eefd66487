"""Grad-CAM heat maps in one forward pass, for classifiers ending in global pooling + linear.

For a head ``logits = W @ GAP(A) + b`` (DenseNet, ResNet and every MONAI classifier we build),
the Grad-CAM channel weights are ``d logit_c / d A_k`` averaged over space, which is exactly
``W[c, k] / (h * w)``. Grad-CAM = ReLU(sum_k alpha_k A_k) therefore equals the class activation
map ReLU(W[c] . A) up to a positive factor, and after normalization to [0, 1] the two maps are
identical. Computing it from the forward pass alone gives the prediction and the map together,
without a backward pass (a test checks the equality against MONAI's ``GradCAM``). Maps are scaled
so that 1 marks the most important pixels (MONAI's default post-processing maps the maximum to 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["find_linear_head", "gradcam_forward"]


def find_linear_head(model: torch.nn.Module) -> tuple[str, torch.nn.Linear]:
    """The last ``nn.Linear`` of the model (the classification head): ``(name, module)``.

    Raises:
        ValueError: the model has no linear layer.
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not found:
        raise ValueError("model has no nn.Linear head; use a gradient-based Grad-CAM instead")
    return found[-1]


def gradcam_forward(
    model: torch.nn.Module,
    images: torch.Tensor,
    feature_layer: str,
    *,
    class_index: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and Grad-CAM maps from one forward pass (see the module docstring).

    Args:
        model: a classifier whose head is global average pooling then a linear layer.
        images: (B, C, *spatial) input batch.
        feature_layer: name of the module whose output is the last feature map (B, K, *s), e.g.
            ``"class_layers.relu"`` for MONAI DenseNet.
        class_index: class whose map is returned: an int, a (B,) tensor, or None for the
            predicted class of each image.

    Returns:
        ``(logits (B, n_classes), maps (B, 1, *spatial))``: maps upsampled (bilinear or
        trilinear) to the input size and normalized to [0, 1] per image (all-zero maps stay 0).
    """
    modules = dict(model.named_modules())
    if feature_layer not in modules:
        raise ValueError(f"no layer named {feature_layer!r} in the model")
    _, head = find_linear_head(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        captured["features"] = output

    handle = modules[feature_layer].register_forward_hook(hook)
    try:
        logits = model(images)
    finally:
        handle.remove()
    features = captured["features"]
    if features.shape[1] != head.in_features:
        raise ValueError(
            f"layer {feature_layer!r} has {features.shape[1]} channels but the head expects {head.in_features}"
        )
    if class_index is None:
        index = logits.argmax(dim=1)
    elif isinstance(class_index, int):
        index = torch.full((images.shape[0],), class_index, dtype=torch.long, device=images.device)
    else:
        index = class_index.to(images.device)
    weights = head.weight[index]  # (B, K)
    cam = torch.einsum("bk,bk...->b...", weights, features).unsqueeze(1)
    cam = F.relu(cam)
    mode = "bilinear" if cam.ndim == 4 else "trilinear"
    cam = F.interpolate(cam, size=images.shape[2:], mode=mode, align_corners=False)
    flat = cam.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    scale = torch.where(high > low, high - low, torch.ones_like(high))
    shape = (-1,) + (1,) * (cam.ndim - 1)
    cam = (cam - low.view(shape)) / scale.view(shape)
    return logits, cam
