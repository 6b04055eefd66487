"""One-pass Grad-CAM equals MONAI's gradient-based Grad-CAM for pooled linear heads."""

from __future__ import annotations

import pytest
import torch
from monai.visualize import GradCAM

from medimg.models import build_network, gradcam_layer
from saliency.cam import find_linear_head, gradcam_forward


@pytest.mark.parametrize("architecture", ["compact", "resnet18"])
def test_matches_monai_gradcam(architecture: str) -> None:
    torch.manual_seed(0)
    model = build_network(architecture, spatial_dims=2, in_channels=1, out_channels=3).eval()
    images = torch.rand(2, 1, 64, 64)
    layer = gradcam_layer(architecture)
    logits, ours = gradcam_forward(model, images, layer, class_index=2)
    # MONAI's default post-processing maps (min, max) to (1, 0); take its raw map and scale it
    # to [0, 1] with 1 = most important, our convention.
    raw = GradCAM(nn_module=model, target_layers=layer, postprocessing=lambda x: x)(x=images, class_idx=2)
    low = raw.flatten(1).min(1).values.view(-1, 1, 1, 1)
    span = (raw.flatten(1).max(1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    reference = torch.where(span > 1e-12, (raw - low) / span, torch.zeros_like(raw))
    assert ours.shape == reference.shape == (2, 1, 64, 64)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, model(images))


def test_predicted_class_and_errors() -> None:
    model = build_network("compact", out_channels=2).eval()
    images = torch.rand(3, 1, 32, 32)
    logits, maps = gradcam_forward(model, images, gradcam_layer("compact"))
    assert maps.min() >= 0 and maps.max() <= 1
    assert find_linear_head(model)[0].endswith("out")
    with pytest.raises(ValueError, match="no layer named"):
        gradcam_forward(model, images, "nope")
