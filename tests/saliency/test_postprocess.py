"""Post-processing chain (PAIR VisualizeImageGrayscale + min-max): known answers and degenerate maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saliency.postprocess import PostProcess, postprocess


def test_abs_channel_sum_and_percentile_clip_known_answer() -> None:
    raw = np.zeros((1, 2, 2, 2), dtype=np.float32)
    raw[0, 0] = [[0, -1], [2, -3]]
    raw[0, 1] = [[0, 0], [0, 0]]
    maps, degenerate = postprocess(raw)
    # |.| summed over channels: [[0, 1], [2, 3]]; p99 of (0, 1, 2, 3) = 2 + 0.97 = 2.97 (linear);
    # (v - 0) / 2.97 clipped to [0, 1]; min-max keeps it (min 0, max 1).
    expected = np.array([[[0.0, 1 / 2.97], [2 / 2.97, 1.0]]], dtype=np.float32)
    assert maps.dtype == np.float32 and maps.shape == (1, 2, 2)
    np.testing.assert_allclose(maps, expected, rtol=1e-6)
    assert degenerate.tolist() == [False]


def test_percentile_saturates_the_top_percent() -> None:
    raw = np.arange(101, dtype=np.float64).reshape(1, 1, 1, 101)  # p99 = 99 exactly
    maps, _ = postprocess(raw)
    np.testing.assert_allclose(maps[0, 0, :99], np.arange(99) / 99, rtol=1e-6)
    assert maps[0, 0, 99] == 1.0 and maps[0, 0, 100] == 1.0
    # another percentile
    maps90, _ = postprocess(raw, PostProcess(clip_percentile=90.0))
    assert (maps90 == 1.0).sum() == 11
    np.testing.assert_allclose(maps90[0, 0, 45], 0.5, rtol=1e-6)


def test_channel_max_signed_and_no_clip() -> None:
    raw = np.array([[[[1.0, -4.0]], [[-3.0, 2.0]]]])  # (1, 2, 1, 2)
    maps, _ = postprocess(raw, PostProcess(channel_reduce="max", clip_percentile=None))
    np.testing.assert_allclose(maps, [[[0.0, 1.0]]])  # max |.| = (3, 4) -> min-max (0, 1)
    signed, _ = postprocess(
        np.array([[-2.0, 0.0, 2.0]]), PostProcess(abs=False, channel_reduce=None, clip_percentile=None)
    )
    np.testing.assert_allclose(signed, [[0.0, 0.5, 1.0]])
    unsigned, _ = postprocess(np.array([[-2.0, 0.0, 2.0]]), PostProcess(channel_reduce=None, clip_percentile=None))
    np.testing.assert_allclose(unsigned, [[1.0, 0.0, 1.0]])
    kept, _ = postprocess(np.array([[2.0, 4.0]]), PostProcess(channel_reduce=None, clip_percentile=None, minmax=False))
    np.testing.assert_allclose(kept, [[2.0, 4.0]])


def test_degenerate_maps_are_nan_filled_and_flagged_per_image() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(5, 1, 16, 16))
    raw[1] = 3.0  # constant
    raw[2, 0, 3, 3] = np.nan
    raw[3, 0, 0, 0] = np.inf
    raw[4] = 0.0
    raw[4, 0, 0, 0] = 1.0  # p99 == min (> 99 % zeros): PAIR divides 0 by 0 -> NaN
    maps, degenerate = postprocess(raw)
    assert degenerate.tolist() == [False, True, True, True, True]
    assert np.isnan(maps[1:]).all()
    assert np.isfinite(maps[0]).all() and maps[0].min() == 0.0 and maps[0].max() == 1.0
    # constant maps are degenerate without the clip too (min-max undefined)
    _, flags = postprocess(np.ones((2, 1, 4, 4)), PostProcess(clip_percentile=None))
    assert flags.tolist() == [True, True]


def test_3d_maps_and_torch_input() -> None:
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(2, 3, 4, 5, 6)).astype(np.float32)
    maps, degenerate = postprocess(torch.from_numpy(raw))
    assert maps.shape == (2, 4, 5, 6) and not degenerate.any()
    # the same numbers as a 2-D map of the same voxels: the percentile is over the whole volume
    flat = postprocess(raw.reshape(2, 3, 20, 6))[0].reshape(2, 4, 5, 6)
    np.testing.assert_allclose(maps, flat, rtol=1e-6)
    summed = np.abs(raw).sum(axis=1)[0]
    expected = np.clip((summed - summed.min()) / (np.percentile(summed, 99) - summed.min()), 0, 1)
    np.testing.assert_allclose(maps[0], expected, rtol=1e-5, atol=1e-6)


def test_settings_validation_and_dict() -> None:
    assert json.loads(json.dumps(PostProcess().to_dict())) == {
        "abs": True,
        "channel_reduce": "sum",
        "clip_percentile": 99.0,
        "minmax": True,
    }
    with pytest.raises(ValueError, match="channel_reduce"):
        PostProcess(channel_reduce="mean")
    with pytest.raises(ValueError, match="clip_percentile"):
        PostProcess(clip_percentile=0.0)
    with pytest.raises(ValueError, match="channel"):
        postprocess(np.zeros((2, 4)), PostProcess())
