"""Benchmark: laterality from the pixels (:func:`medimg.mammo_laterality.laterality_from_pixels`) on
generated tagless mammograms, through the density pipeline's own loading (decode, MONOCHROME1
inversion, intensity scaling, resize to the network grid of the demo weights).

Per seed, 8 films: L/R x CC/MLO, each stored as drawn and stored mirrored left-right (as a film
scanned the wrong way round: the expected answer is then the other side), MONOCHROME1 on odd seeds,
a burned-in label on every image. Variants: ``full`` (as drawn) and ``cropped`` (the image cut at
85 % of the breast's depth, so the breast reaches the far edge: harder). Prints per variant the
counts correct / wrong / unknown and the smallest |asymmetry| of the correct answers.

Usage (repository root): python -m tests.benchmarks.bench_mammo_laterality [--seeds N]
"""

from __future__ import annotations

import argparse
import tempfile
from itertools import product
from pathlib import Path

import numpy as np
import pydicom

from medimg.mammo_laterality import laterality_from_pixels
from medimg.synth.mammo import write_film_mammogram

OTHER = {"L": "R", "R": "L"}


def _crop(path: Path, laterality: str, mirrored: bool) -> None:
    """Cut the film at 85 % of the breast's depth (from the chest wall), so it reaches the far edge."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    tissue = (pixels < 2000) if ds.PhotometricInterpretation == "MONOCHROME1" else (pixels > 2000)
    columns = np.flatnonzero(tissue[int(0.2 * ds.Rows) : int(0.8 * ds.Rows)].any(axis=0))
    chest_wall_left = (laterality == "L") != mirrored
    depth = columns.max() + 1 if chest_wall_left else ds.Columns - columns.min()
    keep = max(8, int(0.85 * depth))
    pixels = pixels[:, :keep] if chest_wall_left else pixels[:, ds.Columns - keep :]
    ds.Columns = pixels.shape[1]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=25)
    args = parser.parse_args()

    from medimg.models import load_checkpoint
    from pipelines import get_pipeline
    from pipelines.runner import default_weights

    weights = default_weights("density")
    assert weights is not None, "the demo weights sample_data/weights/density.pt are missing"
    _, meta = load_checkpoint(weights, pipeline="density")
    transform = get_pipeline("density").transforms(meta["preprocessing"], train=False)
    print(f"network grid (columns x rows): {meta['preprocessing']['image_size']}")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("full", "cropped"):
            counts = {"correct": 0, "wrong": 0, "unknown": 0}
            smallest = 1.0
            for seed, lat, view, mirrored in product(range(args.seeds), "LR", ("CC", "MLO"), (False, True)):
                path = Path(tmp) / f"{variant}-{seed}-{lat}{view}-{int(mirrored)}.dcm"
                write_film_mammogram(
                    path, seed=seed, laterality=lat, view=view, density="ABCD"[seed % 4], case=seed,
                    mirrored=mirrored, monochrome1=seed % 2 == 1,
                )  # fmt: skip
                if variant == "cropped":
                    _crop(path, lat, mirrored)
                image = transform({"image": str(path)})["image"][0].numpy().T  # (X, Y) -> (rows, columns)
                found = laterality_from_pixels(image)
                expected = OTHER[lat] if mirrored else lat
                kind = "unknown" if not found.laterality else "correct" if found.laterality == expected else "wrong"
                counts[kind] += 1
                if kind == "correct":
                    smallest = min(smallest, abs(found.asymmetry))
            total = sum(counts.values())
            shares = ", ".join(f"{k} {v} ({v / total:.1%})" for k, v in counts.items())
            print(f"{variant}: {total} images: {shares}; smallest |asymmetry| when correct {smallest:.2f}")


if __name__ == "__main__":
    main()
