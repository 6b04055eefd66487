"""Benchmark: pipeline throughput against the bare model, and training epochs with/without cache.

In one run, on freshly generated data:

1. images per second of ``run_pipeline`` end to end (scan, selection, DICOM decode, transforms,
   batched inference, heat maps/boxes, per-image outputs, CSVs, report) against the bare model
   forward on preloaded tensors of the same images (same batch size, no gradients); prints the
   ratio pipeline / bare (target >= 0.5: the pipeline at most doubles the model's time);
2. training epoch time with the decoded-image cache (``PersistentDataset``) and without it.

Uses the demo weights in ``sample_data/weights/`` when present (else an untrained compact net,
which runs at the same speed).

Usage (repository root): python -m tests.benchmarks.bench_pipelines [--images 96] [--pipeline pneumonia]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch


def _weights(pipeline, folder: Path, architecture: str) -> Path:
    """The demo weights for ``compact`` when present; else an untrained network (same speed)."""
    from medimg.models import build_network, save_checkpoint
    from pipelines.runner import default_weights

    found = default_weights(pipeline.name) if architecture == "compact" else None
    if found is not None:
        return found
    network = {"spatial_dims": 2, "in_channels": 1, "out_channels": len(pipeline.labels)}
    meta = {
        "pipeline": pipeline.name,
        "architecture": architecture,
        "network": network,
        "labels": list(pipeline.labels),
        "preprocessing": pipeline.preprocessing(architecture),
        "training": {},
    }
    return save_checkpoint(folder / f"{architecture}.pt", build_network(architecture, **network), meta)


def _throughput(pipeline, data: Path, root: Path, architecture: str, batch_size: int) -> None:
    """(a) bare forward on preloaded tensors vs (b) run_pipeline end to end; prints the ratio."""
    from medimg.models import load_checkpoint
    from pipelines.runner import run_pipeline

    weights = _weights(pipeline, root, architecture)
    model, meta = load_checkpoint(weights, pipeline=pipeline.name)
    transform = pipeline.transforms(meta["preprocessing"], train=False)
    items = pipeline.load_dataset(data)
    tensors = torch.stack([torch.as_tensor(transform({"image": item["image"]})["image"]) for item in items])
    n = len(items)
    bare = []
    for _ in range(2):
        t = time.perf_counter()
        with torch.no_grad():
            for b in range(0, n, batch_size):
                model(tensors[b : b + batch_size])
        bare.append(time.perf_counter() - t)
    bare_rate = n / min(bare)
    runs = []
    for i in range(2):
        t = time.perf_counter()
        summary = run_pipeline(pipeline, data, root / f"out-{architecture}-{i}", weights=weights, batch_size=batch_size)
        runs.append(time.perf_counter() - t)
        assert summary.counts["images"] == n, summary.counts
    pipe_rate = n / min(runs)
    size = "x".join(map(str, meta["preprocessing"]["image_size"]))
    print(f"{pipeline.name} / {architecture} ({size}): {n} images, batch {batch_size}")
    print(f"  bare model forward on preloaded tensors: {bare_rate:.1f} images/s")
    print(
        f"  medimg run end to end: {pipe_rate:.1f} images/s (s: "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary.timings.items())
        + ")"
    )
    print(f"  ratio pipeline / bare = {pipe_rate / bare_rate:.2f}  (target >= 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--pipeline", default="pneumonia", choices=["pneumonia", "density"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--architectures",
        default="densenet121,compact",
        help="comma-separated; densenet121 is the pipelines' default, compact the CPU demo network",
    )
    args = parser.parse_args()

    from medimg.synth import generate_sample_data
    from pipelines import get_pipeline
    from pipelines.training import TrainPipelineConfig, train_pipeline

    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipeline = get_pipeline(args.pipeline)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = "cxr" if args.pipeline == "pneumonia" else "mammo"
        count = args.images if dataset == "cxr" else max(1, args.images // 12)
        generate_sample_data(root / "data", only=[dataset], count=count, seed=300)
        data = root / "data" / dataset
        for architecture in args.architectures.split(","):
            _throughput(pipeline, data, root, architecture, args.batch_size)

        # (c) training epochs with and without the decode cache
        epoch_times = {}
        for cache in (True, False):
            run_dir = root / f"train_{'cache' if cache else 'nocache'}"
            config = TrainPipelineConfig(architecture="compact", epochs=args.epochs, seed=0, cache=cache, quiet=True)
            train_pipeline(pipeline, data, run_dir, config)
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
