"""XRAI's greedy region selection as plain loops over whole masks: the reference
that ``saliency.xrai.xrai_map`` must equal (tests/saliency/test_xrai.py) and beat on time
(tests/benchmarks/bench_xrai.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from saliency.xrai import XraiSettings


def xrai_reference(attr: np.ndarray, masks: Sequence[np.ndarray], settings: XraiSettings) -> np.ndarray:
    """The ``(H, W)`` XRAI map of ``attr`` over the candidate ``masks``, one whole-mask scan per candidate
    per round (O(regions^2 x pixels) for ``"full"``)."""
    covered = np.zeros(attr.shape, bool)
    out = np.zeros(attr.shape)
    need = max(settings.min_pixel_diff, 1)
    if settings.algorithm == "full":
        pool = list(range(len(masks)))
        while covered.mean() < settings.area_threshold:
            pool = [i for i in pool if (masks[i] & ~covered).sum() >= need]
            if not pool:
                break
            gains = [attr[masks[i] & ~covered].mean() for i in pool]
            best = pool[int(np.argmax(gains))]
            new = masks[best] & ~covered
            out[new] = attr[new].mean()
            covered |= new
            pool.remove(best)
    else:
        order = sorted(range(len(masks)), key=lambda i: -attr[masks[i]].mean())
        for i in order:
            if covered.mean() >= settings.area_threshold:
                break
            new = masks[i] & ~covered
            if new.sum() >= need:
                out[new] = attr[new].mean()
                covered |= new
    if not covered.all():
        out[~covered] = attr[~covered].mean()
    return out
