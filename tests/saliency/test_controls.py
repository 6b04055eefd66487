"""The model-blind controls: what they compute, and that they ignore the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.filters import sobel

from medimg.models import build_network
from saliency.audit_maps import MapCache
from saliency.controls import CONTROL_LABELS, CONTROLS, control_maps


def _images() -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 0.1, (3, 1, 32, 40)).astype(np.float32)
    images[:, :, 8:20, 10:25] += 1.0
    return torch.from_numpy(images)


def test_the_edge_control_is_the_sobel_magnitude_through_the_papers_chain() -> None:
    images = _images()
    batch = control_maps(images, "edge_control")
    edges = sobel(images[1, 0].numpy().astype(np.float64))
    clipped = np.clip((edges - edges.min()) / (np.percentile(edges, 99) - edges.min()), 0, 1)
    expected = (clipped - clipped.min()) / (clipped.max() - clipped.min())
    assert batch.maps.shape == (3, 32, 40) and np.allclose(batch.maps[1], expected, atol=1e-6)
    assert list(batch.targets) == [-1, -1, -1] and not batch.degenerate.any()
    # The brightest edges are on the square's border, not inside it.
    assert batch.maps[0, 8, 15] > 0.8 and batch.maps[0, 14, 17] < 0.2


def test_the_image_control_is_the_input_and_works_in_3d() -> None:
    images = _images()
    batch = control_maps(images, "image_control")
    image = images[0, 0].numpy().astype(np.float64)  # signed: no absolute value for the image itself
    clipped = np.clip((image - image.min()) / (np.percentile(image, 99) - image.min()), 0, 1)
    assert np.allclose(batch.maps[0], (clipped - clipped.min()) / (clipped.max() - clipped.min()), atol=1e-6)
    volume = torch.rand(2, 1, 8, 12, 12)
    assert control_maps(volume, "edge_control").maps.shape == (2, 8, 12, 12)
    flat = control_maps(torch.ones(1, 1, 8, 8), "image_control")
    assert flat.degenerate.all()  # a constant image has no map


def test_the_map_cache_hands_controls_out_uncached(tmp_path) -> None:
    images = _images()
    cache = MapCache(tmp_path, ["a", "b", "c"], images, method_preset="paper", seed=0, batch_size=4)
    model = build_network("compact", out_channels=2).eval()
    for control in CONTROLS:
        assert np.array_equal(cache.maps(model, control, None).maps, control_maps(images, control).maps)
        assert CONTROL_LABELS[control].startswith("Control: ")
    assert not any(tmp_path.iterdir()) and cache.computed == 0  # they cost less than a file
    cache.maps(model, "gradient", None)
    assert cache.computed == 1 and len(list(tmp_path.iterdir())) == 1  # a method's maps are cached


def test_unknown_controls_and_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown control"):
        control_maps(_images(), "lime")
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        control_maps(torch.zeros(3, 32, 40), "edge_control")
