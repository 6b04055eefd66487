"""Post-processing of raw attributions into comparable grayscale maps in [0, 1].

The chain is the one of Arun et al. 2020: PAIR's
``VisualizeImageGrayscale`` (absolute value, sum over channels, clip at the 99th percentile:
``(v - min) / (p99 - min)`` clipped to [0, 1]) followed by a min-max normalization to [0, 1].
Every step is optional (:class:`PostProcess`), so the same function serves signed maps (IG and XRAI
without ``abs``), maps that are already single-channel (XRAI, channel reduction ``None``) and
other percentiles.

Degenerate maps: a map holding a non-finite value, a constant map (min-max is undefined) and a
map whose percentile equals its minimum (the clip divides by zero; PAIR's numpy code returns NaN
there too) are flagged and returned filled with NaN, so that every later score of such a map is
NaN and can be counted. The computation is vectorized over the batch and
works for 2-D and 3-D maps alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["CHANNEL_REDUCTIONS", "PostProcess", "postprocess"]

CHANNEL_REDUCTIONS: tuple[str, ...] = ("sum", "max")


@dataclass(frozen=True)
class PostProcess:
    """The post-processing chain applied to a raw attribution, in this order.

    Attributes:
        abs: take the absolute value first (the sign is discarded, as in PAIR's
            ``VisualizeImageGrayscale``).
        channel_reduce: ``"sum"`` or ``"max"`` over the channel axis (axis 1 of the raw
            attribution), or ``None`` when the map has no channel axis (already single-channel).
        clip_percentile: ``p`` in ``(v - min) / (percentile_p - min)`` clipped to [0, 1], with
            numpy's default (linear) percentile; ``None`` skips the step.
        minmax: final min-max normalization to [0, 1].
    """

    abs: bool = True
    channel_reduce: str | None = "sum"
    clip_percentile: float | None = 99.0
    minmax: bool = True

    def __post_init__(self) -> None:
        if self.channel_reduce is not None and self.channel_reduce not in CHANNEL_REDUCTIONS:
            raise ValueError(f"channel_reduce must be one of {CHANNEL_REDUCTIONS} or None, not {self.channel_reduce!r}")
        if self.clip_percentile is not None and not 0.0 < float(self.clip_percentile) <= 100.0:
            raise ValueError(f"clip_percentile must lie in (0, 100], not {self.clip_percentile!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (for reports)."""
        return asdict(self)


def postprocess(raw: np.ndarray | torch.Tensor, pp: PostProcess = PostProcess()) -> tuple[np.ndarray, np.ndarray]:
    """Turn raw attributions into maps in [0, 1] (see the module docstring).

    Args:
        raw: ``(B, C, *spatial)`` when ``pp.channel_reduce`` is set, ``(B, *spatial)`` when it is
            ``None``; spatial 2-D or 3-D (any number of axes works). Any float dtype.
        pp: the chain.

    Returns:
        ``(maps, degenerate)``: ``maps`` float32 ``(B, *spatial)`` in [0, 1] (exactly [0, 1] when
        ``minmax``), NaN-filled where ``degenerate`` (a ``(B,)`` bool array) is True.

    Raises:
        ValueError: ``raw`` has fewer than 2 axes (3 with a channel reduction).
    """
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    values = np.asarray(raw, dtype=np.float64)
    minimum_ndim = 3 if pp.channel_reduce is not None else 2
    if values.ndim < minimum_ndim:
        raise ValueError(
            f"raw attributions must be (B, C, *spatial) with a channel reduction or (B, *spatial) without one; "
            f"got shape {values.shape} for channel_reduce={pp.channel_reduce!r}"
        )
    if pp.abs:
        values = np.abs(values)
    if pp.channel_reduce == "sum":
        values = values.sum(axis=1)
    elif pp.channel_reduce == "max":
        values = values.max(axis=1)
    batch, spatial = values.shape[0], values.shape[1:]
    flat = values.reshape(batch, -1)
    degenerate = ~np.asarray(np.isfinite(flat).all(axis=1))
    # Work on finite rows only; degenerate rows are overwritten with NaN at the end.
    flat = np.where(degenerate[:, None], 0.0, flat)
    if pp.clip_percentile is not None and flat.shape[1] > 0:
        low = flat.min(axis=1, keepdims=True)
        high = np.percentile(flat, pp.clip_percentile, axis=1, keepdims=True)
        span = high - low
        flat_span = span[:, 0] <= 0
        degenerate |= flat_span
        flat = np.clip((flat - low) / np.where(flat_span[:, None], 1.0, span), 0.0, 1.0)
    if pp.minmax and flat.shape[1] > 0:
        low = flat.min(axis=1, keepdims=True)
        span = flat.max(axis=1, keepdims=True) - low
        constant = span[:, 0] <= 0
        degenerate |= constant
        flat = (flat - low) / np.where(constant[:, None], 1.0, span)
    maps = flat.astype(np.float32)
    maps[degenerate] = np.nan
    return maps.reshape((batch, *spatial)), degenerate
