"""Benchmark: XRAI's region selection and segmentation against plain references on the same images.

For ``--images`` smooth random images of ``--size`` x ``--size`` pixels (seeded) with a smooth
random attribution each, default settings (PAIR's: resize to 224, six Felzenszwalb scales,
dilation 5), in one run:

- the greedy selection: :func:`saliency.xrai.xrai_map` (one sparse candidates x pixels matrix,
  every entry read once) against ``tests/helpers/xrai_reference.py`` (XRAI as plain
  loops, every candidate mask rescanned every round), on the same masks; the maps must agree;
- the candidate regions: :func:`saliency.xrai.segments` (rescale, resize, Felzenszwalb at every
  scale, resize back, one dilated mask per label) against the bare ``felzenszwalb`` calls on the
  already resized image (what no implementation avoids).

Each time is the best of ``--repeats``. Prints the selection speed-up (reference / ours), the
segmentation overhead (ours / bare Felzenszwalb) and the seconds per image of a whole XRAI map
(segments + selection, the attribution not included), which the unit tests bounded at 5 s for
128 x 128 before they stopped timing.

Measured on the shared (busy) 2-core x86-64 CPU, ``OMP_NUM_THREADS=1``, 2 images of 128 x 128, best
of 2 (186-189 candidate masks per image): selection 0.060 s against 0.52 s for the reference
(8.8x), segments 1.43 s against 1.15 s of bare Felzenszwalb (1.24), 1.5 s per whole map.

Usage (repository root): python -m tests.benchmarks.bench_xrai [--size 128] [--images 3]
    [--repeats 3] [--algorithm full]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(best seconds, last result)`` of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--algorithm", default="full", help="full or fast")
    args = parser.parse_args()

    from scipy import ndimage
    from skimage.segmentation import felzenszwalb

    from saliency.xrai import XraiSettings, _to_segmentation_input, segments, xrai_map
    from tests.helpers.xrai_reference import xrai_reference

    settings = XraiSettings(algorithm=args.algorithm)
    rng = np.random.default_rng(0)
    totals = {"selection": 0.0, "reference": 0.0, "segments": 0.0, "felzenszwalb": 0.0}
    n_masks = []
    for _ in range(args.images):
        image = ndimage.gaussian_filter(rng.normal(size=(args.size, args.size)), 3)
        attr = ndimage.gaussian_filter(rng.normal(size=(args.size, args.size)), 2)

        t_segments, masks = best_of(args.repeats, lambda image=image: segments(image, settings))
        resized, channel_axis = _to_segmentation_input(image, settings.resize)

        def bare(resized: np.ndarray = resized, channel_axis: int | None = channel_axis) -> None:
            for scale in settings.scales:
                felzenszwalb(resized, scale=scale, sigma=settings.sigma, min_size=settings.min_size,
                             channel_axis=channel_axis)  # fmt: skip

        t_felzenszwalb, _ = best_of(args.repeats, bare)
        t_ours, ours = best_of(args.repeats, lambda attr=attr, masks=masks: xrai_map(attr, masks, settings))
        t_ref, ref = best_of(args.repeats, lambda attr=attr, masks=masks: xrai_reference(attr, masks, settings))
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)  # same map, or the timing means nothing
        totals["selection"] += t_ours
        totals["reference"] += t_ref
        totals["segments"] += t_segments
        totals["felzenszwalb"] += t_felzenszwalb
        n_masks.append(len(masks))

    n = args.images
    print(
        f"{n} images of {args.size}x{args.size}, algorithm {args.algorithm}, resize {settings.resize}, "
        f"{len(settings.scales)} scales: {min(n_masks)}-{max(n_masks)} candidate masks per image"
    )
    print(
        f"selection: xrai_map {totals['selection'] / n:.3f} s per image, plain-loop reference "
        f"{totals['reference'] / n:.3f} s; speed-up {totals['reference'] / totals['selection']:.1f}x (same maps)"
    )
    print(
        f"segments: {totals['segments'] / n:.3f} s per image, bare felzenszwalb {totals['felzenszwalb'] / n:.3f} s; "
        f"ratio {totals['segments'] / totals['felzenszwalb']:.2f} (resize, labels to masks, dilation)"
    )
    print(f"whole XRAI map (segments + selection): {(totals['segments'] + totals['selection']) / n:.2f} s per image")


if __name__ == "__main__":
    main()
