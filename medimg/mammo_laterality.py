"""Which breast a mammogram shows, read from its pixels when no tag says (``L``, ``R`` or unknown).

Convention: the DICOM Patient Orientation (0020,0020) of a mammogram names the patient direction
of the image rows first (PS3.3 C.7.6.1.1.1); a left craniocaudal view is ``A\\R`` and a right one
``P\\L``. Moving right along a row of a **left** breast goes towards anterior (the nipple), so its
chest wall lies on the image's **left** edge; a **right** breast has its chest wall on the
**right** edge. Reading stations hang the two breasts back to back this way (right breast on the
viewer's left, both chest walls in the middle), and this is also how :mod:`medimg.synth.mammo`
draws its images.

Method (:func:`laterality_from_pixels`): an Otsu threshold (scikit-image; the lower one of a
three-class split, so bright labels and dense tissue do not lift it above the fat) separates
tissue from air; the largest connected component is the breast (burned-in labels, lead markers
and scanner text are smaller and apart from it, so they are left out); a region full of holes
(noise) is no breast. Two pieces of evidence then point to the chest-wall side: the half of the
image holding clearly more of the breast's pixel mass (``|left - right| / (left + right) >=
min_asymmetry``), and the edge the breast touches over clearly more rows (the chest wall is cut
by the image edge, the nipple side is not; the difference of the shares of rows ``>= min_edge``).
When one or both point the same way, that is the answer; when neither is clear (a centred or
symmetric region) or they disagree, the answer is unknown (``""``) and the caller should say so
rather than guess.

The image must be in display polarity (tissue bright, air dark): MONOCHROME1 images inverted, as
:class:`medimg.dicom.transforms.LoadDicomd` does. Archives that store films mirrored defeat the
method; give those images' sides in a table or a rule (see :mod:`medimg.mammo_views`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MIN_ASYMMETRY", "MIN_EDGE", "MIN_SOLIDITY", "PixelLaterality", "laterality_from_pixels"]

#: Least difference between the shares of rows where the breast touches the left and the right edge.
MIN_EDGE = 0.25
#: Least share of its hole-filled outline that the breast region covers (noise is full of holes).
MIN_SOLIDITY = 0.85
#: Least relative difference of the breast's mass between the two image halves for a decision.
MIN_ASYMMETRY = 0.1


@dataclass(frozen=True)
class PixelLaterality:
    """The answer of :func:`laterality_from_pixels`.

    Attributes:
        laterality: ``"L"``, ``"R"`` or ``""`` (unknown).
        asymmetry: ``(left - right) / (left + right)`` of the breast's pixel mass, in [-1, 1]
            (positive: more on the image's left half); 0 when there is no breast.
        reason: why, in words (e.g. ``"chest wall on the left edge (asymmetry 0.62)"``).
    """

    laterality: str
    asymmetry: float
    reason: str


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _tissue_threshold(a: np.ndarray) -> float:
    """The grey level between air and tissue: the lower of the two three-class Otsu thresholds
    (air | fat | dense tissue and labels), so that neither bright labels nor dense tissue pull
    it above the fat; plain Otsu where the image has too few grey levels for three classes."""
    from skimage.filters import threshold_multiotsu, threshold_otsu

    try:
        return float(min(threshold_multiotsu(a, classes=3)[0], threshold_otsu(a)))
    except ValueError:
        return float(threshold_otsu(a))


def laterality_from_pixels(
    image: Any, *, min_asymmetry: float = MIN_ASYMMETRY, min_edge: float = MIN_EDGE
) -> PixelLaterality:
    """The breast's side from a mammogram's pixels (see the module docstring for the method).

    Args:
        image: 2-D array ``(rows, columns)`` in display polarity (tissue bright), any scale.
        min_asymmetry: least ``|asymmetry|`` that counts as evidence.
        min_edge: least difference between the shares of rows where the breast touches the left
            and the right image edge that counts as evidence.

    Returns:
        :class:`PixelLaterality`; ``laterality`` is ``""`` when the evidence is weak (both halves
        alike, no tissue, a constant image) or contradictory (mass and edge contact disagree).

    Raises:
        ValueError: ``image`` is not a 2-D array of at least 4 x 4 pixels.
    """
    from scipy import ndimage

    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 4:
        raise ValueError(f"laterality from pixels needs a 2-D image of at least 4 x 4 pixels, not shape {a.shape}")
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, np.nanmin(a[finite]) if finite.any() else 0.0)
    if float(a.max() - a.min()) <= 1e-12 * max(1.0, abs(float(a.max()))):
        return PixelLaterality("", 0.0, "constant image: no breast to place")
    breast = _largest_component(a > _tissue_threshold(a))
    solid = ndimage.binary_fill_holes(breast)
    if breast.sum() < MIN_SOLIDITY * solid.sum() or solid.sum() < 0.02 * a.size:
        return PixelLaterality("", 0.0, "no solid breast region (noise or a blank image?)")
    breast = solid
    columns = breast.sum(axis=0).astype(np.float64)
    half = breast.shape[1] // 2
    left, right = float(columns[:half].sum()), float(columns[-half:].sum())
    if left + right <= 0:
        return PixelLaterality("", 0.0, "no tissue found")
    asymmetry = (left - right) / (left + right)
    edge = float(breast[:, 0].sum() - breast[:, -1].sum()) / breast.shape[0]
    votes = {1 if asymmetry > 0 else -1} if abs(asymmetry) >= min_asymmetry else set()
    votes |= {1 if edge > 0 else -1} if abs(edge) >= min_edge else set()
    numbers = f"asymmetry {asymmetry:+.2f}, edge contact {edge:+.2f}"
    if not votes:
        return PixelLaterality("", asymmetry, f"weak evidence: both halves and both edges alike ({numbers})")
    if len(votes) > 1:
        return PixelLaterality("", asymmetry, f"contradictory evidence: mass and edge contact disagree ({numbers})")
    side, where = ("L", "left") if votes == {1} else ("R", "right")
    return PixelLaterality(side, asymmetry, f"chest wall on the {where} edge ({numbers})")
