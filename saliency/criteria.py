"""Scores of the saliency-map trustworthiness criteria (Arun et al. 2020) and their statistics.

- Localization utility: :func:`auprc` of a map against a ground-truth mask, with the mask built
  from RSNA boxes by :func:`boxes_to_mask` or taken from a segmentation; :func:`average_mask_prior`
  is the spatial-prior baseline map.
- Randomization, repeatability, reproducibility: :func:`ssim` between two maps;
  :func:`inter_image_ssim` is the randomization baseline (SSIM between maps of different images).
- Statistics: :func:`paired_wilcoxon_holm` (paired tests against a baseline, Holm-corrected across
  methods), :func:`holm`, and :func:`summarize` (distribution plus bootstrap CI of the mean).

Degenerate maps (a NaN, or a constant map) score NaN everywhere, so that callers exclude them and
count them (:func:`summarize` reports ``n_nan``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from skimage.metrics import structural_similarity
from sklearn.metrics import auc, average_precision_score, precision_recall_curve

__all__ = [
    "auprc",
    "average_mask_prior",
    "boxes_to_mask",
    "holm",
    "inter_image_ssim",
    "paired_wilcoxon_holm",
    "ssim",
    "summarize",
]


def boxes_to_mask(
    boxes: ArrayLike,
    shape: tuple[int, int],
    *,
    source_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Rasterise bounding boxes into a boolean mask, with the RSNA rule of Arun et al..

    Each box ``(x, y, w, h)`` (x along columns, y along rows) gives the corners ``x, y, x + w, y + h``.
    With ``source_shape = (H_src, W_src)`` each corner coordinate ``c`` is rescaled to
    ``int(c / (S_src - 1) * S)``, with ``S_src, S`` the source and target sizes along its axis
    (``int`` truncates toward zero; RSNA: 1024 -> 320 gives ``int(c / 1023 * 320)``); without it the
    boxes are already in target pixels and are only truncated. Rows ``y_min..y_max`` and columns
    ``x_min..x_max`` are set, both *inclusive* (so boxes grow by up to one pixel), clipped to the
    image; several boxes are unioned.

    Args:
        boxes: ``(n, 4)`` boxes ``(x, y, w, h)``, or one box of 4 numbers; ``n`` may be 0.
        shape: ``(H, W)`` of the mask.
        source_shape: ``(H_src, W_src)`` of the image the boxes are given in.

    Returns:
        ``(H, W)`` boolean mask.

    Raises:
        ValueError: malformed boxes or shapes.
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        array = array.reshape(0, 4)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be (n, 4) as (x, y, w, h), got shape {np.shape(boxes)}")
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {shape}")
    height, width = int(shape[0]), int(shape[1])
    if source_shape is not None and (len(source_shape) != 2 or min(source_shape) < 2):
        raise ValueError(f"source_shape must be (H_src, W_src) with sizes >= 2, got {source_shape}")

    def pixel(c: float, axis: int) -> int:
        if source_shape is None:
            return int(c)
        return int(c / (source_shape[axis] - 1) * shape[axis])  # the paper's order of operations

    mask = np.zeros((height, width), dtype=bool)
    for x, y, w, h in array:
        x0, x1 = sorted((pixel(x, 1), pixel(x + w, 1)))
        y0, y1 = sorted((pixel(y, 0), pixel(y + h, 0)))
        mask[max(y0, 0) : max(y1 + 1, 0), max(x0, 0) : max(x1 + 1, 0)] = True
    return mask


def _degenerate(values: np.ndarray) -> bool:
    """A map that cannot be scored: any non-finite value, constant, or empty."""
    return values.size == 0 or not np.all(np.isfinite(values)) or bool(np.all(values == values.flat[0]))


def auprc(saliency: ArrayLike, mask: ArrayLike) -> dict[str, float]:
    """Area under the precision-recall curve of a saliency map against a ground-truth mask.

    Every pixel (voxel) is one sample, with score ``saliency`` and label ``mask != 0``.

    - ``average_precision``: scikit-learn ``average_precision_score`` (step-wise, no interpolation;
      a constant map would score the prevalence). The primary, unbiased estimator.
    - ``trapezoid``: scikit-learn ``auc(recall, precision)`` on ``precision_recall_curve``, the
      paper's estimator; trapezoidal interpolation rewards ties (a constant map would score about
      ``(1 + prevalence) / 2``).

    Both are NaN for a degenerate map (any non-finite value, or constant) and for a mask without
    positives; callers exclude and count them.

    Args:
        saliency: ``(H, W)`` or ``(D, H, W)`` map (any scale; only the ranking matters).
        mask: ground truth of the same shape (nonzero = positive).

    Returns:
        ``{"average_precision": float, "trapezoid": float}``.

    Raises:
        ValueError: shapes differ.
    """
    scores = np.asarray(saliency)
    labels = np.asarray(mask)
    if scores.shape != labels.shape:
        raise ValueError(f"saliency {scores.shape} and mask {labels.shape} differ in shape")
    scores = scores.ravel()
    labels = labels.ravel() != 0
    if _degenerate(scores) or not labels.any():
        return {"average_precision": math.nan, "trapezoid": math.nan}
    precision, recall, _ = precision_recall_curve(labels, scores)
    return {
        "average_precision": float(average_precision_score(labels, scores)),
        "trapezoid": float(auc(recall, precision)),
    }


def average_mask_prior(masks: Iterable[ArrayLike]) -> np.ndarray:
    """The spatial-prior baseline map: the pixel-wise mean of ground-truth masks.

    Used as the "saliency map" of every test image. AUPRC depends only on the ranking, so the
    scale, and whether negatives (all-zero masks) are included, do not change its scores.

    Args:
        masks: masks of one shape (train + validation images; nonzero = positive).

    Returns:
        float64 map of the masks' shape, in [0, 1].

    Raises:
        ValueError: no masks, or masks of different shapes.
    """
    total: np.ndarray | None = None
    count = 0
    for mask in masks:
        binary = np.asarray(mask) != 0
        if total is None:
            total = np.zeros(binary.shape)
        elif binary.shape != total.shape:
            raise ValueError(f"mask {count} has shape {binary.shape}, expected {total.shape}")
        total += binary
        count += 1
    if total is None:
        raise ValueError("no masks")
    return total / count


def _window(shape: tuple[int, ...]) -> int:
    smallest = min(shape)
    if smallest < 3:
        raise ValueError(f"SSIM needs maps of at least 3 pixels along every axis, got shape {shape}")
    return min(7, smallest if smallest % 2 else smallest - 1)


def ssim(a: ArrayLike, b: ArrayLike, *, data_range: float = 1.0) -> float:
    """Structural similarity of two maps, as scikit-image computes it with its defaults.

    ``skimage.metrics.structural_similarity`` with a 7-pixel uniform window, K1 = 0.01, K2 = 0.03,
    sample covariance, mean over the map after cropping a ``(win_size - 1) / 2`` border; N-D (2-D
    and 3-D maps alike). ``data_range`` is explicit: 1.0 is the right value for maps in [0, 1];
    2.0 reproduces Arun et al., whose 2020-era scikit-image inferred the float range (-1, 1). A larger
    ``data_range`` raises the stabilizing constants and hence the SSIM of dissimilar maps.

    Maps smaller than 7 along some axis use the largest odd window that fits (at least 3).

    Args:
        a: map, any float (or integer/bool, computed in float64) array.
        b: map of the same shape.
        data_range: the value range of the maps.

    Returns:
        The mean SSIM as a Python float; NaN when either map has a non-finite value.

    Raises:
        ValueError: shapes differ, or a map is smaller than 3 along some axis.
    """
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"maps differ in shape: {x.shape} vs {y.shape}")
    window = _window(x.shape)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return math.nan
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if not np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float64)
    return float(structural_similarity(x, y, win_size=window, data_range=data_range))


def inter_image_ssim(
    maps: Sequence[ArrayLike],
    *,
    pairs_per_image: int = 50,
    data_range: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """The randomization baseline: SSIM between maps of *different* images (Arun et al., Fig. 3).

    For every image ``i``, ``pairs_per_image`` partners are drawn uniformly with replacement from
    the other images with a finite map (never ``i`` itself), with a seeded numpy ``Generator``;
    each pair gives ``ssim(maps[i], maps[j])``. Maps with a non-finite value are skipped: never
    drawn as partners, and their own ``pairs_per_image`` entries are NaN, so that :func:`summarize`
    counts them in ``n_nan``. Unordered pairs drawn twice are computed once (SSIM is symmetric).

    Arun et al. drew 50 partners for each of its 100 images (about 5 000 pairs; the caption says 50),
    unseeded, with a generator that never drew the last image; we draw from all other images.

    Args:
        maps: ``N`` maps of one shape (2-D or 3-D).
        pairs_per_image: partners per image.
        data_range: passed to :func:`ssim`.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``(N * pairs_per_image,)`` float64 SSIMs, image-major (entries ``i * pairs_per_image ...``
        belong to image ``i``); all NaN for an image without a valid partner.

    Raises:
        ValueError: maps of different shapes, or ``pairs_per_image < 1``.
    """
    if pairs_per_image < 1:
        raise ValueError(f"pairs_per_image must be >= 1, got {pairs_per_image}")
    arrays = [np.asarray(m) for m in maps]
    if any(m.shape != arrays[0].shape for m in arrays):
        raise ValueError("maps differ in shape")
    valid = np.array([bool(np.all(np.isfinite(m))) for m in arrays], dtype=bool)
    pool = np.flatnonzero(valid)
    rng = np.random.default_rng(seed)
    out = np.full((len(arrays), pairs_per_image), np.nan)
    cache: dict[tuple[int, int], float] = {}
    if pool.size < 2:
        return out.ravel()
    for position, i in enumerate(pool):
        # Uniform over the pool without i: draw among pool.size - 1 slots and skip i's own slot.
        slots = rng.integers(0, pool.size - 1, size=pairs_per_image)
        partners = pool[slots + (slots >= position)]
        for k, j in enumerate(partners):
            key = (min(i, j), max(i, j))
            if key not in cache:
                cache[key] = ssim(arrays[i], arrays[j], data_range=data_range)
            out[i, k] = cache[key]
    return out.ravel()


def holm(pvalues: Sequence[float] | ArrayLike) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values.

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value
    is ``max_{j <= i} min(1, (m - j + 1) * p_(j))``: monotone in the raw p-values and capped at 1.
    NaN entries stay NaN and do not count towards ``m``. Rejecting where the adjusted value is
    ``<= alpha`` controls the family-wise error rate at ``alpha``.

    Args:
        pvalues: raw p-values (any shape; NaN allowed).

    Returns:
        float64 adjusted p-values, in the input's shape and order.
    """
    raw = np.asarray(pvalues, dtype=np.float64)
    flat = raw.ravel()
    out = np.full(flat.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(flat))
    m = finite.size
    if m:
        order = finite[np.argsort(flat[finite], kind="stable")]
        scaled = np.minimum(1.0, (m - np.arange(m)) * flat[order])
        out[order] = np.maximum.accumulate(scaled)
    return out.reshape(raw.shape)


def paired_wilcoxon_holm(
    groups: Mapping[str, ArrayLike],
    reference: ArrayLike,
    *,
    alternative: str = "greater",
) -> dict[str, dict[str, Any]]:
    """Paired Wilcoxon signed-rank test of each group against a reference, Holm-corrected.

    Per group, ``scipy.stats.wilcoxon(group, reference, alternative=alternative)`` on the cases
    where both values are finite (differences ``group - reference``; ``"greater"`` tests that the
    group is larger; zero differences are dropped, scipy's default). The p-values are then Holm-
    adjusted across the groups (:func:`holm`). A group with no finite pair, or whose differences are
    all zero, gets NaN statistic and p-values (no test possible), and does not count in the Holm
    family.

    Args:
        groups: ``{name: (N,) values}`` (e.g. per-image AUPRC of each method).
        reference: ``(N,)`` values of the baseline for the same cases in the same order.
        alternative: ``"greater"``, ``"less"`` or ``"two-sided"``.

    Returns:
        ``{name: {"statistic": float, "p": float, "p_holm": float, "n": int}}``, ``n`` = finite pairs.

    Raises:
        ValueError: a group's length differs from the reference's, or an unknown ``alternative``.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    ref = np.asarray(reference, dtype=np.float64).ravel()
    results: dict[str, dict[str, Any]] = {}
    for name, values in groups.items():
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.shape != ref.shape:
            raise ValueError(f"group {name!r} has {x.size} values, reference has {ref.size}")
        both = np.isfinite(x) & np.isfinite(ref)
        n = int(both.sum())
        statistic = p = math.nan
        if n and np.any(x[both] != ref[both]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (RuntimeWarning, UserWarning))  # small-n notes
                result = stats.wilcoxon(x[both], ref[both], alternative=alternative)
            statistic, p = float(result.statistic), float(result.pvalue)
        results[name] = {"statistic": statistic, "p": p, "n": n}
    adjusted = holm([r["p"] for r in results.values()])
    for r, q in zip(results.values(), adjusted, strict=True):
        r["p_holm"] = float(q)
    return results


def summarize(
    values: ArrayLike,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float | int]:
    """Distribution summary of per-image scores, NaN-aware, with a bootstrap CI of the mean.

    Non-finite values (degenerate maps) are excluded and counted in ``n_nan``. ``std`` is the
    sample standard deviation (``ddof=1``; NaN for one value). The interval is the percentile
    bootstrap of the mean: ``n_boot`` resamples of the finite values with replacement, from
    ``numpy.random.default_rng(seed)``, then the ``alpha / 2`` and ``1 - alpha / 2`` percentiles.

    Args:
        values: scores (any shape; flattened).
        n_boot: bootstrap resamples (>= 1).
        seed: bootstrap seed.
        alpha: 1 - confidence level.

    Returns:
        ``{"n", "n_nan", "mean", "median", "std", "q25", "q75", "ci_low", "ci_high"}``: ``n`` and
        ``n_nan`` ints, the rest Python floats (NaN when no finite value is left).

    Raises:
        ValueError: ``n_boot < 1`` or ``alpha`` outside (0, 1).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    flat = np.asarray(values, dtype=np.float64).ravel()
    finite = flat[np.isfinite(flat)]
    n = int(finite.size)
    out: dict[str, float | int] = {"n": n, "n_nan": int(flat.size - n)}
    keys = ("mean", "median", "std", "q25", "q75", "ci_low", "ci_high")
    if n == 0:
        out.update(dict.fromkeys(keys, math.nan))
        return out
    q25, median, q75 = np.percentile(finite, [25.0, 50.0, 75.0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bound the (resamples x n) index matrix
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        means[start:stop] = finite[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.percentile(means, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    out.update(
        mean=float(finite.mean()),
        median=float(median),
        std=float(finite.std(ddof=1)) if n > 1 else math.nan,
        q25=float(q25),
        q75=float(q75),
        ci_low=float(low),
        ci_high=float(high),
    )
    return out
