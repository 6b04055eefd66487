"""XRAI: region-level attribution by greedy selection of over-segmented image regions.

XRAI (Kapishnikov et al., ICCV 2019) turns a pixel attribution into a piecewise-constant map of
regions. Candidate regions come from Felzenszwalb over-segmentations of the image at several
scales (:func:`segments`); a greedy loop then grows a covered area one region at a time, always
taking the candidate whose *not yet covered* pixels have the highest mean attribution, and writes
that marginal density into those pixels (:func:`xrai_map`). The reference implementation is
PAIR-code ``saliency`` (Arun et al. used its defaults); this module is written from the algorithm's
description, not from that code.

The base attribution (Integrated Gradients from the two constant baselines of :func:`baselines`,
``steps`` each, averaged, channel max) is computed by :mod:`saliency.methods`, which calls
:func:`segments` and :func:`xrai_map`. XRAI is 2-D only.

Speed: the candidate regions are held as one sparse ``(n_masks, n_pixels)`` matrix. Each greedy
round updates the new-pixel count and sum of every candidate from the columns of the pixels that
round covered, so the whole loop reads every (mask, pixel) entry once, instead of rescanning
every mask every round (the reference's O(regions^2 x pixels)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from skimage.segmentation import felzenszwalb
from skimage.transform import resize as sk_resize

__all__ = ["XraiSettings", "baselines", "segments", "xrai_map"]

ALGORITHMS = ("full", "fast")

_ImageT = TypeVar("_ImageT")


@dataclass(frozen=True)
class XraiSettings:
    """Every knob of XRAI; the defaults are PAIR-code ``saliency``'s (Arun et al. used them).

    Attributes:
        steps: Integrated-Gradients steps per baseline (two baselines, so ``2 * steps`` passes);
            read by :mod:`saliency.methods`, not here.
        scales: Felzenszwalb ``scale`` values, one over-segmentation each.
        sigma: Felzenszwalb Gaussian pre-smoothing width (pixels of the resized image).
        min_size: Felzenszwalb minimum segment size (pixels of the resized image).
        resize: the image is resized to ``resize x resize`` before segmentation (None: no resize).
        dilation_radius: every region mask is dilated with a disk of this radius (pixels of the
            original image; 0: no dilation).
        min_pixel_diff: a candidate that would add fewer new pixels than this is discarded.
        area_threshold: stop once this fraction of the image is covered (1.0: everything).
        algorithm: ``"full"`` (re-score every candidate by its new pixels each round) or
            ``"fast"`` (rank candidates once by their own mean attribution).
    """

    steps: int = 100
    scales: tuple[float, ...] = (50, 100, 150, 250, 500, 1200)
    sigma: float = 0.8
    min_size: int = 150
    resize: int | None = 224
    dilation_radius: int = 5
    min_pixel_diff: int = 50
    area_threshold: float = 1.0
    algorithm: str = "full"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(self.scales))
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive and non-empty, got {self.scales}")
        if self.resize is not None and self.resize < 2:
            raise ValueError(f"resize must be >= 2 or None, got {self.resize}")
        if self.dilation_radius < 0 or self.min_pixel_diff < 0 or self.min_size < 0:
            raise ValueError("dilation_radius, min_pixel_diff and min_size must be >= 0")
        if not 0.0 < self.area_threshold <= 1.0:
            raise ValueError(f"area_threshold must lie in (0, 1], got {self.area_threshold}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (for reports)."""
        out = dataclasses.asdict(self)
        out["scales"] = list(self.scales)
        return out


def baselines(image: _ImageT) -> tuple[_ImageT, _ImageT]:
    """XRAI's two Integrated-Gradients baselines for one image: constant images at its min and max.

    Args:
        image: one image, numpy array or torch tensor of any shape (e.g. ``(C, H, W)``); the min and
            max are taken over all of it (every channel).

    Returns:
        ``(black, white)``: arrays or tensors of the image's shape, dtype and type (device too),
        filled with the image's minimum and maximum.
    """
    if hasattr(image, "detach"):  # torch tensor, without importing torch here
        tensor = image.detach()
        lo, hi = tensor.min(), tensor.max()
        return tensor.new_full(tensor.shape, lo.item()), tensor.new_full(tensor.shape, hi.item())
    array = np.asarray(image)
    return np.full_like(array, array.min()), np.full_like(array, array.max())  # type: ignore[return-value]


def _to_segmentation_input(image: np.ndarray, size: int | None) -> tuple[np.ndarray, int | None]:
    """Rescale to [-1, 1], put channels last and resize: ``(image, channel_axis)``."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3:
        array = np.moveaxis(array, 0, -1)
    elif array.ndim != 2:
        raise ValueError(f"XRAI segments a 2-D image, (H, W) or (C, H, W); got shape {np.shape(image)}")
    if not np.all(np.isfinite(array)):
        raise ValueError("image has non-finite values")
    lo, hi = float(array.min()), float(array.max())
    array = (array - lo) / (hi - lo) * 2.0 - 1.0 if hi > lo else np.zeros_like(array)
    if size is not None:
        shape = (size, size) + array.shape[2:]
        array = sk_resize(array, shape, order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    return array, (-1 if array.ndim == 3 else None)


def _disk(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2


def _label_masks(labels: np.ndarray, radius: int) -> list[np.ndarray]:
    """One boolean mask per label of a label map, each dilated with a disk of ``radius``.

    Dilation runs on each label's bounding box padded by ``radius``, so small regions cost little.
    """
    shape = labels.shape
    footprint = _disk(radius) if radius > 0 else None
    masks = []
    # find_objects wants labels >= 1; felzenszwalb labels start at 0.
    for index, box in enumerate(ndimage.find_objects(labels + 1)):
        if box is None:  # label lost when resizing back
            continue
        mask = np.zeros(shape, dtype=bool)
        if footprint is None:
            mask[box] = labels[box] == index
        else:
            padded = tuple(
                slice(max(s.start - radius, 0), min(s.stop + radius, n)) for s, n in zip(box, shape, strict=True)
            )
            window = labels[padded] == index
            mask[padded] = ndimage.binary_dilation(window, structure=footprint)
        masks.append(mask)
    return masks


def segments(image: np.ndarray, settings: XraiSettings | None = None) -> list[np.ndarray]:
    """XRAI's candidate regions: dilated multi-scale Felzenszwalb segments of one 2-D image.

    The image is rescaled to [-1, 1], resized to ``resize x resize`` (bicubic, anti-aliased), and
    over-segmented by ``skimage.segmentation.felzenszwalb`` at every scale (``sigma``, ``min_size``;
    multi-channel images are segmented jointly with ``channel_axis``). Each label map is resized
    back to ``(H, W)`` by nearest neighbour, every label becomes one boolean mask, and each mask is
    dilated with a disk of radius ``dilation_radius``. Labels that vanish in the resize are skipped.

    Args:
        image: ``(H, W)`` or ``(C, H, W)`` image (numpy; any value range; a single channel is
            segmented as grayscale).
        settings: XRAI settings (defaults: PAIR's).

    Returns:
        A list of ``(H, W)`` boolean masks, scale by scale (smallest scale first), label order
        within a scale. They overlap (scales, dilation) and, per scale, cover the image.

    Raises:
        ValueError: not a 2-D (optionally multi-channel) image, or non-finite values.
    """
    settings = settings or XraiSettings()
    array, channel_axis = _to_segmentation_input(image, settings.resize)
    height, width = np.shape(image)[-2:]
    masks: list[np.ndarray] = []
    for scale in settings.scales:
        labels = felzenszwalb(
            array, scale=scale, sigma=settings.sigma, min_size=settings.min_size, channel_axis=channel_axis
        )
        if labels.shape != (height, width):
            labels = sk_resize(labels, (height, width), order=0, preserve_range=True, anti_aliasing=False)
        masks.extend(_label_masks(np.asarray(labels).astype(np.intp), settings.dilation_radius))
    return masks


def _mask_matrix(masks: Sequence[np.ndarray] | np.ndarray, shape: tuple[int, ...]) -> sp.csr_matrix:
    """Candidate masks as a sparse boolean-valued ``(n_masks, n_pixels)`` float64 CSR matrix."""
    n_pixels = int(np.prod(shape))
    rows, cols = [], []
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask {i} has shape {mask.shape}, attribution has {shape}")
        index = np.flatnonzero(mask)
        rows.append(np.full(index.size, i, dtype=np.intp))
        cols.append(index)
    n = len(rows)
    if n == 0:
        return sp.csr_matrix((0, n_pixels))
    row, col = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(row.size), (row, col)), shape=(n, n_pixels))


def xrai_map(
    attribution: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    settings: XraiSettings | None = None,
) -> np.ndarray:
    """Greedy XRAI region attribution: a piecewise-constant map of marginal attribution densities.

    ``"full"``: starting from nothing covered, each round discards every candidate that would add
    fewer than ``max(min_pixel_diff, 1)`` new pixels, scores each remaining candidate by the mean
    attribution over its *new* (not yet covered) pixels, takes the best (ties: the first in
    ``masks`` order, up to floating-point rounding of the running sums), writes that mean into its
    new pixels and adds them to the covered area. It stops when the covered fraction reaches
    ``area_threshold`` or no candidate is left.

    ``"fast"``: candidates are ranked once by the mean attribution over their own pixels (stable
    order for ties) and added in that order; a candidate adding fewer than ``min_pixel_diff`` new
    pixels is skipped, otherwise the mean attribution over its new pixels is written into them.
    Same stopping rule.

    Pixels no region covered get the mean attribution over all of them.

    Args:
        attribution: ``(H, W)`` signed pixel attribution (e.g. IG, channel max).
        masks: candidate regions, a sequence of ``(H, W)`` boolean masks or an ``(n, H, W)`` array
            (e.g. from :func:`segments`).
        settings: XRAI settings (``algorithm``, ``min_pixel_diff``, ``area_threshold`` are used).

    Returns:
        ``(H, W)`` float64 map; all NaN when ``attribution`` has a non-finite value.

    Raises:
        ValueError: attribution not 2-D, or a mask of another shape.
    """
    settings = settings or XraiSettings()
    attr = np.asarray(attribution, dtype=np.float64)
    if attr.ndim != 2:
        raise ValueError(f"attribution must be (H, W), got shape {attr.shape}")
    if not np.all(np.isfinite(attr)):
        return np.full(attr.shape, np.nan)
    matrix = _mask_matrix(masks, attr.shape)
    flat = attr.ravel()
    n_pixels = flat.size
    out = np.zeros(n_pixels)
    covered = np.zeros(n_pixels, dtype=bool)
    target = settings.area_threshold * n_pixels
    min_new = max(settings.min_pixel_diff, 1)
    indptr, indices = matrix.indptr, matrix.indices

    def add(rows: np.ndarray) -> np.ndarray:
        new = rows[~covered[rows]]
        out[new] = flat[new].mean()
        covered[new] = True
        return new

    if settings.algorithm == "full" and matrix.shape[0]:
        columns = matrix.tocsc()
        count = np.asarray(matrix.sum(axis=1)).ravel()  # new pixels each candidate would add
        total = matrix @ flat  # attribution summed over those new pixels
        alive = np.ones(matrix.shape[0], dtype=bool)
        n_covered = 0
        while n_covered < target:
            alive &= count >= min_new
            if not alive.any():
                break
            gain = np.full(count.shape, -np.inf)
            gain[alive] = total[alive] / count[alive]
            best = int(np.argmax(gain))
            new = add(indices[indptr[best] : indptr[best + 1]])
            alive[best] = False
            n_covered += new.size
            block = columns[:, new]  # every candidate's share of the newly covered pixels
            count -= np.asarray(block.sum(axis=1)).ravel()
            total -= block @ flat[new]
    elif settings.algorithm == "fast" and matrix.shape[0]:
        size = np.asarray(matrix.sum(axis=1)).ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            density = np.where(size > 0, (matrix @ flat) / size, -np.inf)
        n_covered = 0
        for best in np.argsort(-density, kind="stable"):
            if n_covered >= target:
                break
            rows = indices[indptr[best] : indptr[best + 1]]
            if np.count_nonzero(~covered[rows]) < min_new:
                continue
            n_covered += add(rows).size
    if not covered.all():
        out[~covered] = flat[~covered].mean()
    return out.reshape(attr.shape)
