"""XRAI: the greedy region selection against hand-worked examples and a plain-loop reference,
and the candidate regions (Felzenszwalb segments, dilated)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import dilation, disk
from xrai_reference import xrai_reference

from saliency.xrai import XraiSettings, baselines, segments, xrai_map

# A 1 x 8 "image" worked by hand. Pixels 0..7; candidate regions as pixel sets.
ATTR = np.array([[9.0, 9.0, 0.0, 0.0, 4.0, 4.0, 1.0, 1.0]])
REGIONS = [{0, 1, 2, 3, 4, 5}, {2, 3, 4, 5}, {4, 5, 6, 7}, {0, 1}]


def _masks(regions: list[set[int]], width: int = 8) -> list[np.ndarray]:
    return [np.isin(np.arange(width), sorted(r))[None] for r in regions]


def test_full_greedy_order_by_hand() -> None:
    # Round 1: densities 26/6, 2, 2.5, 9 -> region 3 writes 9 at pixels 0, 1.
    # Round 2: new pixels {2..5} mean 2, {2..5} mean 2, {4..7} mean 2.5 -> region 2 writes 2.5 at 4..7.
    # Round 3: regions 0 and 1 both add {2, 3} with mean 0 (tie: the first) -> 0 at 2, 3. Then nothing new.
    out = xrai_map(ATTR, _masks(REGIONS), XraiSettings(min_pixel_diff=1))
    np.testing.assert_array_equal(out, [[9, 9, 0, 0, 2.5, 2.5, 2.5, 2.5]])


def test_fast_differs_from_full_by_hand() -> None:
    # Own densities: 26/6, 2, 2.5, 9 -> order 3, 0, 2, 1. Region 3: 9 at 0, 1; region 0 adds {2..5},
    # mean 2; region 2 adds {6, 7}, mean 1; region 1 adds nothing.
    out = xrai_map(ATTR, _masks(REGIONS), XraiSettings(min_pixel_diff=1, algorithm="fast"))
    np.testing.assert_array_equal(out, [[9, 9, 2, 2, 2, 2, 1, 1]])
    full = xrai_map(ATTR, _masks(REGIONS), XraiSettings(min_pixel_diff=1))
    assert not np.array_equal(out, full)


def test_min_pixel_diff_and_unassigned_mean() -> None:
    # min_pixel_diff 3: region 3 adds only 2 pixels and is dropped at once; region 0 (26/6) wins;
    # then regions 1 (0 new) and 2 (2 new) are dropped; pixels 6, 7 stay unassigned -> their mean, 1.
    for algorithm in ("full", "fast"):
        out = xrai_map(ATTR, _masks(REGIONS), XraiSettings(min_pixel_diff=3, algorithm=algorithm))
        np.testing.assert_allclose(out, [[26 / 6] * 6 + [1, 1]], rtol=0, atol=1e-12)


def test_area_threshold_stops_early() -> None:
    # Region 3 covers 2 / 8 = 0.25 >= threshold: stop; pixels 2..7 get their mean, 10 / 6.
    out = xrai_map(ATTR, _masks(REGIONS), XraiSettings(min_pixel_diff=1, area_threshold=0.25))
    np.testing.assert_allclose(out, [[9, 9] + [10 / 6] * 6], rtol=0, atol=1e-12)


def test_no_masks_gives_the_mean_and_nan_attribution_gives_nan() -> None:
    attr = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(xrai_map(attr, []), np.full((3, 4), 5.5))
    attr[1, 1] = np.nan
    assert np.isnan(xrai_map(attr, [np.ones((3, 4), bool)])).all()
    with pytest.raises(ValueError, match="shape"):
        xrai_map(np.zeros((3, 4)), [np.ones((4, 3), bool)])


@pytest.mark.parametrize("algorithm", ["full", "fast"])
@pytest.mark.parametrize("area_threshold", [1.0, 0.6])
def test_matches_plain_loop_reference_on_random_regions(algorithm: str, area_threshold: float) -> None:
    rng = np.random.default_rng(1)
    attr = ndimage.gaussian_filter(rng.normal(size=(40, 48)), 2)
    masks = []
    for _ in range(60):  # random rectangles of many sizes, heavily overlapping
        r0, c0 = rng.integers(0, 36), rng.integers(0, 44)
        mask = np.zeros(attr.shape, bool)
        mask[r0 : r0 + rng.integers(3, 20), c0 : c0 + rng.integers(3, 20)] = True
        masks.append(mask)
    settings = XraiSettings(min_pixel_diff=10, algorithm=algorithm, area_threshold=area_threshold)
    ours = xrai_map(attr, masks, settings)
    np.testing.assert_allclose(ours, xrai_reference(attr, masks, settings), rtol=0, atol=1e-10)
    np.testing.assert_allclose(xrai_map(attr, np.stack(masks), settings), ours)  # (n, H, W) input


def _blobs(shape: tuple[int, int] = (60, 80)) -> np.ndarray:
    image = np.zeros(shape)
    image[10:30, 10:35] = 1.0
    image[35:55, 45:75] = -1.0
    return image


def test_segments_partition_then_dilate() -> None:
    image = _blobs()
    # sigma 0: no pre-blur, which would cut thin segments along the block borders.
    plain = segments(image, XraiSettings(scales=(100,), sigma=0.0, resize=None, min_size=20, dilation_radius=0))
    # One scale without dilation: a partition of the image that finds the two blocks exactly.
    np.testing.assert_array_equal(np.sum(plain, axis=0), np.ones(image.shape))
    assert any(np.array_equal(m, image == 1.0) for m in plain)
    assert any(np.array_equal(m, image == -1.0) for m in plain)
    dilated = segments(image, XraiSettings(scales=(100,), sigma=0.0, resize=None, min_size=20, dilation_radius=3))
    assert len(dilated) == len(plain)
    for small, big in zip(plain, dilated, strict=True):
        np.testing.assert_array_equal(big, dilation(small, disk(3)))


def test_segments_multiscale_resize_and_channels() -> None:
    rng = np.random.default_rng(0)
    image = _blobs() * 3.0 + 7.0 + 0.05 * rng.normal(size=(60, 80))
    settings = XraiSettings(resize=32, min_size=10, scales=(20, 200), dilation_radius=2)
    masks = segments(image, settings)
    assert all(m.shape == (60, 80) and m.dtype == bool and m.any() for m in masks)
    assert np.all(np.sum(masks, axis=0) >= 2)  # every pixel covered at each of the two scales
    # A single channel segments as grayscale.
    other = segments(image[None], settings)
    assert len(other) == len(masks) and all(np.array_equal(a, b) for a, b in zip(other, masks, strict=True))
    # Several channels are segmented jointly (color distance), still covering the image per scale.
    color = segments(np.stack([image, -image, image**2]), settings)
    assert all(m.shape == (60, 80) for m in color) and np.all(np.sum(color, axis=0) >= 2)
    # Rescaled to [-1, 1] first: an affine change of intensity changes nothing.
    assert all(np.array_equal(a, b) for a, b in zip(segments(image * 10 - 3, settings), masks, strict=True))
    with pytest.raises(ValueError, match="2-D"):
        segments(np.zeros((2, 3, 8, 8)), settings)


def test_defaults_on_a_smooth_image_give_a_map_of_many_regions() -> None:
    # Its time against the plain-loop reference: tests/benchmarks/bench_xrai.py.
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=(128, 128)), 3)
    attr = ndimage.gaussian_filter(rng.normal(size=(128, 128)), 2)
    masks = segments(image)
    out = xrai_map(attr, masks)
    assert out.shape == (128, 128) and np.isfinite(out).all()
    assert len(masks) > 20 and len(np.unique(out)) > 5  # piecewise constant, many regions


def test_baselines_are_min_and_max() -> None:
    image = np.array([[[0.5, -2.0], [3.0, 1.0]]], dtype=np.float32)
    black, white = baselines(image)
    assert black.dtype == np.float32 and black.shape == image.shape
    np.testing.assert_array_equal(black, np.full(image.shape, -2.0))
    np.testing.assert_array_equal(white, np.full(image.shape, 3.0))
    tensor = torch.from_numpy(image)
    black_t, white_t = baselines(tensor)
    assert isinstance(black_t, torch.Tensor) and black_t.shape == tensor.shape
    assert torch.equal(black_t, torch.full_like(tensor, -2.0)) and torch.equal(white_t, torch.full_like(tensor, 3.0))


def test_settings_validate_and_serialize() -> None:
    settings = XraiSettings(scales=[50, 100])
    assert settings.scales == (50, 100)
    assert settings.to_dict()["scales"] == [50, 100] and settings.to_dict()["algorithm"] == "full"
    with pytest.raises(ValueError, match="algorithm"):
        XraiSettings(algorithm="greedy")
    with pytest.raises(ValueError, match="area_threshold"):
        XraiSettings(area_threshold=0.0)
