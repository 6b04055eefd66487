"""Model-independent control maps: the audit's proof that its criteria can fail.

Adebayo et al. (NeurIPS 2018, "Sanity checks for saliency maps") showed that an edge detector
applied to the input produces maps that look like many saliency maps while knowing nothing of the
model. Every audit therefore scores two such controls beside the methods, through the same code:

* ``edge_control``: the Sobel gradient magnitude of the network input (scikit-image
  ``filters.sobel``, over every spatial axis, per channel);
* ``image_control``: the network input itself.

Both go through the paper's post-processing chain (absolute value, channel sum, 99th-percentile
clip, min-max); the image keeps its sign (it is the image as the network sees it). They ignore the
weights, so under cascading randomization their SSIM stays 1 and they must fail that criterion. A
control that *passes* a criterion shows that the criterion does not tell model-aware maps from
model-blind ones on this setting: the report says so in its first lines, and the summary marks the
criterion as not discriminating. Repeatability and reproducibility are always so marked (a map
blind to the model is the same for every model); localization depends on the images.
"""

from __future__ import annotations

import numpy as np
import torch

from saliency.methods import MapBatch
from saliency.postprocess import PostProcess, postprocess

__all__ = ["CONTROLS", "CONTROL_LABELS", "control_maps", "is_control"]

CONTROLS: tuple[str, ...] = ("edge_control", "image_control")
CONTROL_LABELS: dict[str, str] = {
    "edge_control": "Control: edge detector (Sobel)",
    "image_control": "Control: input image",
}
#: The paper's chain (as every method): |value|, channel sum, clip at the 99th percentile, min-max;
#: the image control keeps its sign.
CONTROL_POSTPROCESS = {
    "edge_control": PostProcess(abs=True, channel_reduce="sum", clip_percentile=99.0, minmax=True),
    "image_control": PostProcess(abs=False, channel_reduce="sum", clip_percentile=99.0, minmax=True),
}


def is_control(name: str) -> bool:
    """Whether ``name`` is one of :data:`CONTROLS`."""
    return name in CONTROLS


def control_maps(images: torch.Tensor, control: str) -> MapBatch:
    """The control maps of a batch of network inputs.

    Args:
        images: ``(B, C, *spatial)`` network inputs (2-D or 3-D).
        control: one of :data:`CONTROLS`.

    Returns:
        A :class:`~saliency.methods.MapBatch` with ``(B, *spatial)`` maps in [0, 1] (NaN and
        flagged where degenerate, e.g. a constant image) and targets -1 (no class is explained).

    Raises:
        ValueError: unknown control, or images without a channel and a spatial axis.
    """
    from skimage.filters import sobel

    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")
    array = images.detach().cpu().numpy().astype(np.float64)
    if array.ndim < 4:
        raise ValueError(f"images must be (B, C, *spatial) with 2 or 3 spatial axes, got shape {tuple(array.shape)}")
    if control == "edge_control":
        raw = np.stack([np.stack([sobel(channel) for channel in image]) for image in array])
    else:
        raw = array
    maps, degenerate = postprocess(raw, CONTROL_POSTPROCESS[control])
    return MapBatch(maps=maps, degenerate=degenerate, targets=np.full(len(array), -1), raw=raw.astype(np.float32))
