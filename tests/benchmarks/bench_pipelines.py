"""Benchmark: a pipeline against its stages' own limits, its memory, and training with/without cache.

In one run, on freshly generated radiographs (256x256 DICOM):

1. the stages alone: bare pydicom decoding (``dcmread`` + ``pixel_array``) on all cores; the bare
   model forward on preloaded tensors; the pipeline's inference stage on preloaded tensors (the
   forward with its Grad-CAM pass and post-processing, ``Pipeline.infer``);
2. ``run_pipeline`` end to end, everything in one process (``workers=0``: the stages one after
   the other, as before the stages overlapped) and on worker processes (all cores, the default);
3. prints ``ratio = end to end / min(forward-only, bare decoding on all cores)`` (target >= 0.8)
   and, because on a CPU-only machine every stage shares the same cores, also the end to end
   rate against the best the stages allow there together:
   ``bound = 1 / (load s/image / cores + 1 / inference-stage rate + write s/image / cores)``
   (the load and write seconds from the one-process run), ``overlap = end to end / bound``;
4. ``--rss``: peak memory (RSS of the run's process and of its largest worker) of end-to-end runs
   on 100 and 1,000 images, each in a fresh process (target: 1,000 / 100 < 1.2);
5. training epoch time with the decoded-image cache (``PersistentDataset``) and without it.

With a CUDA GPU (``--device cuda``) the forward, inference stage and end to end run there.
Uses the demo weights in ``sample_data/weights/`` for ``compact`` when present (else an
untrained network, which runs at the same speed).

Usage (repository root): python -m tests.benchmarks.bench_pipelines [--images 300] [--rss]
    [--architectures compact,densenet121] [--no-dicom-results] [--device auto]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _weights(pipeline: Any, folder: Path, architecture: str) -> Path:
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


def _decode_chunk(paths: list[str]) -> int:
    import pydicom

    for path in paths:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - the decoding is what is timed
    return len(paths)


def _decode_rate(files: list[str], cores: int) -> float:
    """Images/s of bare pydicom decoding on ``cores`` processes (pool start included)."""
    from medimg.parallel import parallel_map

    chunks = [files[i : i + 32] for i in range(0, len(files), 32)]
    start = time.perf_counter()
    parallel_map(_decode_chunk, chunks, workers=cores)
    return len(files) / (time.perf_counter() - start)


def _items(files: list[str]) -> list[dict[str, Any]]:
    import pydicom

    items = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        items.append({"Rows": ds.Rows, "Columns": ds.Columns, "SOPInstanceUID": ds.SOPInstanceUID, "image": path})
    return items


def _stage_rates(pipeline: Any, weights: Path, files: list[str], batch: int, device: str) -> dict[str, float]:
    """Images/s of the bare forward and of the pipeline's inference stage, on preloaded tensors."""
    from medimg.devices import inference_precision, prepare_model, to_device
    from medimg.models import load_checkpoint

    model, meta = load_checkpoint(weights, pipeline=pipeline.name, map_location=device)
    model = prepare_model(model, device)
    transform = pipeline.transforms(meta["preprocessing"], train=False)
    items = _items(files)
    tensors = [transform({"image": item["image"]})["image"] for item in items]
    stacked = torch.stack([torch.as_tensor(t) for t in tensors])
    n = len(items)
    rates: dict[str, float] = {}
    for _ in range(2):
        start = time.perf_counter()
        with torch.no_grad(), inference_precision(device):
            for b in range(0, n, batch):
                model(to_device(stacked[b : b + batch], device, channels_last=True))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates["forward"] = max(rates.get("forward", 0.0), n / (time.perf_counter() - start))
    start = time.perf_counter()
    for b in range(0, n, batch):
        pipeline.infer(model, tensors[b : b + batch], items[b : b + batch], meta, device=device, timings={})
    rates["inference_stage"] = n / (time.perf_counter() - start)
    return rates


def _end_to_end(pipeline: Any, data: Path, out: Path, weights: Path, **options: Any) -> tuple[float, dict]:
    from pipelines.runner import run_pipeline

    start = time.perf_counter()
    summary = run_pipeline(pipeline, data, out, weights=weights, **options)
    elapsed = time.perf_counter() - start
    return summary.counts["images"] / elapsed, summary.timings


def _throughput(pipeline: Any, data: Path, root: Path, architecture: str, args: argparse.Namespace) -> None:
    from pipelines.run_stages import default_workers

    cores = default_workers()
    weights = _weights(pipeline, root, architecture)
    files = sorted(str(p) for p in data.rglob("*.dcm"))
    options = {"batch_size": args.batch_size, "device": args.device, "dicom_results": args.dicom_results}
    decode = _decode_rate(files, cores)
    stages = _stage_rates(pipeline, weights, files, args.batch_size, args.device)
    serial, serial_timings = _end_to_end(pipeline, data, root / f"serial-{architecture}", weights, workers=0, **options)
    runs = [_end_to_end(pipeline, data, root / f"run-{architecture}-{i}", weights, **options) for i in range(2)]
    e2e, timings = max(runs, key=lambda r: r[0])
    n = len(files)
    per_image = {k: serial_timings.get(k, 0.0) / n for k in ("load_transform", "write")}
    inference_seconds = 1 / stages["inference_stage"]
    if args.device == "cpu":
        bound = 1 / (per_image["load_transform"] / cores + inference_seconds + per_image["write"] / cores)
    else:  # the GPU runs the inference while the cores load and write
        bound = 1 / max(inference_seconds, per_image["load_transform"] / cores + per_image["write"] / cores)
    limit = min(stages["forward"], decode)
    print(f"{pipeline.name} / {architecture}: {n} images, batch {args.batch_size}, {cores} cores, {args.device}")
    print(f"  bare pydicom decoding on {cores} cores:        {decode:8.1f} images/s")
    print(f"  bare model forward on preloaded tensors:      {stages['forward']:8.1f} images/s")
    print(f"  inference stage (forward + maps) preloaded:   {stages['inference_stage']:8.1f} images/s")
    print(
        f"  one process (workers=0):                      {serial:8.1f} images/s (s/image: load "
        f"{per_image['load_transform'] * 1e3:.1f} ms, write {per_image['write'] * 1e3:.1f} ms)"
    )
    print(f"  end to end, {cores} workers:                    {e2e:8.1f} images/s ({e2e / serial:.2f}x one process)")
    print("    stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    print(f"  ratio end to end / min(forward, decoding) = {e2e / limit:.2f}  (target >= 0.8)")
    print(
        f"  shared-core bound {bound:.1f} images/s; overlap = end to end / bound = {e2e / bound:.2f}  (target >= 0.8)"
    )


def _rss_child(data: str, out: str, architecture: str) -> None:
    """One end-to-end run in this (fresh) process; prints its peak RSS and its largest worker's, in MiB."""
    from pipelines import get_pipeline

    pipeline = get_pipeline("pneumonia")
    weights = _weights(pipeline, Path(out).parent, architecture)
    rate, _ = _end_to_end(pipeline, Path(data), Path(out), weights)
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"rate": rate, "rss_mib": usage, "worker_rss_mib": children}))


def _rss(root: Path, architecture: str) -> None:
    """Peak RSS of end-to-end runs on 100 and 1,000 generated images, each in a fresh process."""
    from medimg.synth import generate_sample_data

    generate_sample_data(root / "rss-data", only=["cxr"], count=1000, seed=301)
    files = sorted((root / "rss-data" / "cxr").rglob("*.dcm"))
    peaks = {}
    for n in (100, 1000):
        subset = root / f"rss-{n}"
        subset.mkdir()
        for path in files[:n]:
            (subset / path.name).symlink_to(path)
        command = [sys.executable, "-m", "tests.benchmarks.bench_pipelines", "--rss-child", str(subset)]
        command += [str(root / f"rss-out-{n}"), architecture]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        peaks[n] = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"  {n:5d} images: peak RSS {peaks[n]['rss_mib']:.0f} MiB (largest worker "
            f"{peaks[n]['worker_rss_mib']:.0f} MiB), {peaks[n]['rate']:.1f} images/s"
        )
    ratio = peaks[1000]["rss_mib"] / peaks[100]["rss_mib"]
    worker_ratio = peaks[1000]["worker_rss_mib"] / peaks[100]["worker_rss_mib"]
    print(f"  RSS 1,000 / 100 images = {ratio:.2f} (workers {worker_ratio:.2f})  (target < 1.2)")


def _training(pipeline: Any, data: Path, root: Path, epochs: int) -> None:
    """Training epochs with and without the decode cache."""
    from pipelines.training import TrainPipelineConfig, train_pipeline

    epoch_times = {}
    for cache in (True, False):
        run_dir = root / f"train_{'cache' if cache else 'nocache'}"
        config = TrainPipelineConfig(architecture="compact", epochs=epochs, seed=0, cache=cache, quiet=True)
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
        f"later epochs: {later_on:.2f} s cached vs {later_off:.2f} s decoding every epoch ({later_off / later_on:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto: cuda when a GPU is visible, else cpu")
    parser.add_argument("--dicom-results", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rss", action="store_true", help="also peak memory at 100 vs 1,000 images")
    parser.add_argument("--no-training", dest="training", action="store_false")
    parser.add_argument("--rss-child", nargs=3, metavar=("DATA", "OUT", "ARCH"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--architectures",
        default="compact,densenet121",
        help="comma-separated; densenet121 is the pipelines' default, compact the CPU demo network",
    )
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.rss_child:
        _rss_child(*args.rss_child)
        return

    from medimg.synth import generate_sample_data
    from pipelines import get_pipeline

    pipeline = get_pipeline("pneumonia")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate_sample_data(root / "data", only=["cxr"], count=args.images, seed=300)
        print(f"generated {args.images} radiographs in {time.perf_counter() - start:.0f} s")
        data = root / "data" / "cxr"
        for architecture in args.architectures.split(","):
            _throughput(pipeline, data, root, architecture, args)
        if args.rss:
            print("peak memory, compact, end to end in a fresh process:")
            _rss(root, "compact")
        if args.training:
            _training(pipeline, data, root, args.epochs)


if __name__ == "__main__":
    main()
