"""Criteria scores (AUPRC, SSIM, box masks) and statistics against scikit-learn, scikit-image,
scipy and hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage, stats
from skimage.metrics import structural_similarity
from sklearn.metrics import auc, average_precision_score, precision_recall_curve

from saliency.criteria import (
    auprc,
    average_mask_prior,
    boxes_to_mask,
    holm,
    inter_image_ssim,
    paired_wilcoxon_holm,
    ssim,
    summarize,
)


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 3.0) -> np.ndarray:
    m = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (m - m.min()) / (m.max() - m.min())


# ---------------------------------------------------------------------------------------------
# boxes_to_mask


def test_boxes_rsna_rescale_inclusive() -> None:
    # x: int(100 / 1023 * 320) = 31, int(300 / 1023 * 320) = 93; y: int(200 / 1023 * 320) = 62,
    # int(600 / 1023 * 320) = 187. Rows 62..187 and columns 31..93, both inclusive.
    mask = boxes_to_mask([[100, 200, 200, 400]], (320, 320), source_shape=(1024, 1024))
    expected = np.zeros((320, 320), bool)
    expected[62:188, 31:94] = True
    np.testing.assert_array_equal(mask, expected)
    # A box reaching the far edge (1023 -> 320) is clipped to the image.
    edge = boxes_to_mask([(1000, 0, 23, 1023)], (320, 320), source_shape=(1024, 1024))
    assert edge[:, 312:].all() and not edge[:, :312].any()  # int(1000 / 1023 * 320) = 312


def test_boxes_in_target_pixels_union_and_axes() -> None:
    # Two overlapping boxes (x, y, w, h) already in target pixels; x is the column, y the row.
    mask = boxes_to_mask(np.array([[1, 0, 2, 1], [2, 1, 1.5, 2]]), (5, 6))
    expected = np.array(
        [
            [0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(mask, expected)
    # Non-square rescale: rows use the source height, columns the source width.
    # Row int(10 / 20 * 10) = 5, column int(10 / 40 * 40) = 10 (swapped axes would give row 2, column 20).
    mask = boxes_to_mask([(10, 10, 0, 0)], (10, 40), source_shape=(21, 41))
    assert np.argwhere(mask).tolist() == [[5, 10]]
    assert not boxes_to_mask(np.zeros((0, 4)), (4, 4)).any()
    with pytest.raises(ValueError, match="boxes"):
        boxes_to_mask([[1, 2, 3]], (4, 4))


# ---------------------------------------------------------------------------------------------
# AUPRC


def test_auprc_equals_sklearn_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    for shape in [(32, 40), (6, 16, 16)]:
        saliency = rng.random(shape)
        mask = rng.random(shape) < 0.1
        y, s = mask.ravel(), saliency.ravel()
        precision, recall, _ = precision_recall_curve(y, s)
        result = auprc(saliency, mask)
        assert result["average_precision"] == average_precision_score(y, s)
        assert result["trapezoid"] == auc(recall, precision)


def test_auprc_by_hand() -> None:
    # Ranked scores 0.9 (+), 0.8 (-), 0.3 (+), 0.1 (-). PR points (recall, precision): (0.5, 1), (0.5, 1/2),
    # (1, 2/3), (1, 1/2), plus sklearn's (0, 1). AP = 0.5 * 1 + 0.5 * 2/3 = 5/6. Trapezoid: 0.5 * 1 on
    # [0, 0.5], 0.5 * (1/2 + 2/3) / 2 = 7/24 on [0.5, 1] -> 19/24.
    result = auprc(np.array([[0.9, 0.8], [0.3, 0.1]]), np.array([[1, 0], [1, 0]]))
    assert result["average_precision"] == pytest.approx(5 / 6, abs=1e-12)
    assert result["trapezoid"] == pytest.approx(19 / 24, abs=1e-12)
    perfect = auprc(np.array([[0.9, 0.8], [0.3, 0.1]]), np.array([[1, 1], [0, 0]]))
    assert perfect == {"average_precision": 1.0, "trapezoid": 1.0}


def test_auprc_degenerate_is_nan() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    for bad in (np.full((8, 8), 0.3), np.where(mask, np.nan, 0.5)):
        result = auprc(bad, mask)
        assert math.isnan(result["average_precision"]) and math.isnan(result["trapezoid"])
    result = auprc(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8)))
    assert math.isnan(result["average_precision"]) and math.isnan(result["trapezoid"])
    with pytest.raises(ValueError, match="shape"):
        auprc(np.zeros((8, 8)), np.zeros((8, 9)))


def test_average_mask_prior() -> None:
    masks = [np.array([[1, 0], [0, 0]]), np.array([[1, 1], [0, 0]]), np.zeros((2, 2)), np.array([[0, 0], [0, 5]])]
    np.testing.assert_allclose(average_mask_prior(iter(masks)), [[0.5, 0.25], [0.0, 0.25]])
    with pytest.raises(ValueError):
        average_mask_prior([])


# ---------------------------------------------------------------------------------------------
# SSIM


def test_ssim_equals_skimage_and_data_range_matters() -> None:
    rng = np.random.default_rng(0)
    a, b = _smooth(rng, (48, 48)), _smooth(rng, (48, 48))
    for data_range in (1.0, 2.0):
        assert ssim(a, b, data_range=data_range) == structural_similarity(a, b, data_range=data_range)
    assert ssim(a, b, data_range=2.0) > ssim(a, b, data_range=1.0)
    assert ssim(a, a) == pytest.approx(1.0)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert ssim(a32, b32) == structural_similarity(a32, b32, data_range=1.0)


def test_ssim_3d_small_and_nan() -> None:
    rng = np.random.default_rng(1)
    a, b = _smooth(rng, (5, 20, 20), 2), _smooth(rng, (5, 20, 20), 2)
    # 5 slices: the largest odd window that fits is 5.
    assert ssim(a, b) == structural_similarity(a, b, data_range=1.0, win_size=5)
    c, d = _smooth(rng, (6, 9), 1), _smooth(rng, (6, 9), 1)
    assert ssim(c, d) == structural_similarity(c, d, data_range=1.0, win_size=5)
    a[0, 0, 0] = np.nan
    assert math.isnan(ssim(a, b)) and math.isnan(ssim(b, a))
    with pytest.raises(ValueError, match="at least 3"):
        ssim(np.zeros((2, 8)), np.zeros((2, 8)))
    with pytest.raises(ValueError, match="shape"):
        ssim(np.zeros((8, 8)), np.zeros((8, 9)))


def test_inter_image_ssim_never_pairs_an_image_with_itself() -> None:
    rng = np.random.default_rng(2)
    base = _smooth(rng, (24, 24))
    # Four distinct maps, each repeated only once: any self-pair would score exactly 1.
    distinct = [_smooth(rng, (24, 24)) for _ in range(4)]
    values = inter_image_ssim(distinct, pairs_per_image=20, seed=3)
    assert values.shape == (80,) and np.all(values < 0.99)
    # Identical maps for every image: every pair scores 1.
    np.testing.assert_allclose(inter_image_ssim([base] * 4, pairs_per_image=5), 1.0)
    # Every pair is one of the six distinct unordered pairs.
    allowed = {round(ssim(distinct[i], distinct[j]), 12) for i in range(4) for j in range(4) if i != j}
    assert {round(v, 12) for v in values} <= allowed
    # Deterministic per seed, different across seeds.
    np.testing.assert_array_equal(values, inter_image_ssim(distinct, pairs_per_image=20, seed=3))
    assert not np.array_equal(values, inter_image_ssim(distinct, pairs_per_image=20, seed=4))


def test_inter_image_ssim_skips_but_counts_nan_maps() -> None:
    rng = np.random.default_rng(3)
    maps = [_smooth(rng, (16, 16)) for _ in range(3)]
    maps.insert(1, np.full((16, 16), np.nan))
    values = inter_image_ssim(maps, pairs_per_image=10, data_range=2.0, seed=0)
    assert values.shape == (40,)
    assert np.isnan(values[10:20]).all() and np.isfinite(np.delete(values, np.s_[10:20])).all()
    # Only maps 0, 2, 3 pair up: with data_range 2.0.
    allowed = {round(ssim(maps[i], maps[j], data_range=2.0), 12) for i in (0, 2, 3) for j in (0, 2, 3) if i != j}
    assert {round(v, 12) for v in values[np.isfinite(values)]} <= allowed
    assert summarize(values)["n_nan"] == 10
    assert np.isnan(inter_image_ssim(maps[:2], pairs_per_image=3)).all()  # one valid map: no partner


# ---------------------------------------------------------------------------------------------
# Statistics


def test_holm_by_hand() -> None:
    # m = 4 finite: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5 -> input order.
    np.testing.assert_allclose(holm([0.03, 0.01, np.nan, 0.5, 0.02]), [0.06, 0.04, np.nan, 0.5, 0.06])
    np.testing.assert_allclose(holm([0.4, 0.3]), [0.6, 0.6])
    np.testing.assert_array_equal(holm([0.9, 0.6]), [1.0, 1.0])  # capped at 1
    assert holm([]).shape == (0,)


def test_paired_wilcoxon_holm() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=40)
    shifted = reference + 1.0 + 0.2 * rng.normal(size=40)
    same = reference + 0.2 * rng.normal(size=40)
    shifted[3] = np.nan
    results = paired_wilcoxon_holm({"shifted": shifted, "same": same, "tie": reference.copy()}, reference)
    assert results["shifted"]["n"] == 39 and results["same"]["n"] == 40
    assert results["shifted"]["p"] < 0.01
    expected = stats.wilcoxon(np.delete(shifted, 3), np.delete(reference, 3), alternative="greater")
    assert results["shifted"]["p"] == expected.pvalue and results["shifted"]["statistic"] == expected.statistic
    assert results["same"]["p"] > 0.01
    assert math.isnan(results["tie"]["p"]) and math.isnan(results["tie"]["p_holm"])  # no difference at all
    adjusted = holm([results["shifted"]["p"], results["same"]["p"]])
    assert [results["shifted"]["p_holm"], results["same"]["p_holm"]] == adjusted.tolist()
    with pytest.raises(ValueError, match="values"):
        paired_wilcoxon_holm({"short": reference[:5]}, reference)


def test_summarize() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 10.0])
    out = summarize(values, seed=1)
    assert out["n"] == 5 and out["n_nan"] == 1
    assert out["mean"] == 4.0 and out["median"] == 3.0 and out["q25"] == 2.0 and out["q75"] == 4.0
    assert out["std"] == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1))
    assert 1.0 <= out["ci_low"] < out["mean"] < out["ci_high"] <= 10.0
    assert summarize(values, seed=1) == out
    rng = np.random.default_rng(0)
    big = summarize(rng.normal(0.5, 0.1, size=400))
    assert big["ci_low"] < 0.5 < big["ci_high"] and big["ci_high"] - big["ci_low"] < 0.03
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = summarize([np.nan, np.nan])
    assert empty["n"] == 0 and empty["n_nan"] == 2
    assert all(math.isnan(empty[k]) for k in ("mean", "median", "std", "q25", "q75", "ci_low", "ci_high"))
