"""Benchmark: pipeline throughput against the bare model, and training epochs with/without cache.

In one run, on freshly generated data:

1. images per second of ``run_pipeline`` end to end (scan, selection, DICOM decode, transforms,
   batched inference, heat maps/boxes, per-image outputs, CSVs, report) against the bare model
   forward on preloaded tensors of the same images (same batch size, no gradients); prints the
   ratio pipeline / bare (target >= 0.5: the pipeline at most doubles the model's time);
2. training epoch time with the decoded-image cache (``PersistentDataset``) and without it.

Uses the demo weights in ``sample_data/weights/`` when present (else an untrained compact net,
which runs at the same speed).

Usage: python tests/benchmarks/bench_pipelines.py [--images 96] [--pipeline pneumonia]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch


def _weights(pipeline, folder: Path) -> Path:
    from medimg.models import build_network, save_checkpoint
    from pipelines.runner import default_weights

    found = default_weights(pipeline.name)
    if found is not None:
        return found
    network = {"spatial_dims": 2, "in_channels": 1, "out_channels": len(pipeline.labels)}
    meta = {
        "pipeline": pipeline.name,
        "architecture": "compact",
        "network": network,
        "labels": list(pipeline.labels),
        "preprocessing": pipeline.preprocessing("compact"),
        "training": {},
    }
    return save_checkpoint(folder / "untrained.pt", build_network("compact", **network), meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--pipeline", default="pneumonia", choices=["pneumonia", "density"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from medimg.models import load_checkpoint
    from medimg.synth import generate_sample_data
    from pipelines import get_pipeline
    from pipelines.runner import run_pipeline
    from pipelines.training import train_pipeline

    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipeline = get_pipeline(args.pipeline)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = "cxr" if args.pipeline == "pneumonia" else "mammo"
        count = args.images if dataset == "cxr" else max(1, args.images // 12)
        generate_sample_data(root / "data", only=[dataset], count=count, seed=300)
        data = root / "data" / dataset
        weights = _weights(pipeline, root)
        model, meta = load_checkpoint(weights, pipeline=pipeline.name)
        transform = pipeline.transforms(meta["preprocessing"], train=False)
        items = pipeline.load_dataset(data)
        tensors = torch.stack([torch.as_tensor(transform({"image": item["image"]})["image"]) for item in items])
        n = len(items)

        # (a) bare forward on preloaded tensors
        bare = []
        for _ in range(2):
            t = time.perf_counter()
            with torch.no_grad():
                for b in range(0, n, args.batch_size):
                    model(tensors[b : b + args.batch_size])
            bare.append(time.perf_counter() - t)
        bare_rate = n / min(bare)

        # (b) the whole pipeline, end to end (fresh output folder each time)
        runs = []
        for i in range(2):
            t = time.perf_counter()
            summary = run_pipeline(pipeline, data, root / f"out{i}", weights=weights, batch_size=args.batch_size)
            runs.append(time.perf_counter() - t)
            assert summary.counts["images"] == n, summary.counts
        pipe_rate = n / min(runs)
        print(f"{pipeline.name}: {n} images, batch {args.batch_size}, architecture {meta['architecture']}")
        print(f"bare model forward on preloaded tensors: {bare_rate:.1f} images/s")
        print(
            f"medimg run end to end: {pipe_rate:.1f} images/s (breakdown s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in summary.timings.items())
            + ")"
        )
        print(f"ratio pipeline / bare = {pipe_rate / bare_rate:.2f}  (target >= 0.5)")

        # (c) training epochs with and without the decode cache
        epoch_times = {}
        for cache in (True, False):
            run_dir = root / f"train_{'cache' if cache else 'nocache'}"
            train_pipeline(
                pipeline, data, run_dir, architecture="compact", epochs=args.epochs, seed=0, cache=cache, quiet=True
            )
            rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
            epoch_times[cache] = [float(r["seconds"]) for r in rows]
        print(
            f"training epoch times (s), decode cache on: {epoch_times[True]} "
            f"(first epoch decodes and fills the cache); off: {epoch_times[False]}"
        )
        later_on = min(epoch_times[True][1:] or epoch_times[True])
        later_off = min(epoch_times[False][1:] or epoch_times[False])
        print(
            f"later epochs: {later_on:.2f} s cached vs {later_off:.2f} s decoding every epoch "
            f"({later_off / later_on:.1f}x)"
        )


if __name__ == "__main__":
    main()
