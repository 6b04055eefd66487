"""Benchmark: the brats pipeline against its stages' own limits, and the cost of each uncertainty method.

On ``--cases`` full-size cases (240x240x155 at 1 mm, generated), in one run:

- (a) forward only: ``sliding_window_inference`` of the network on each case's preprocessed
  tensor (already in memory);
- (b) bare loading on all cores: nibabel reading the four NIfTI files of each case, one process
  per core;
- (c) ``run_pipeline`` end to end (read the four files, put them on one grid, preprocess, the same
  inference, back to the source grid, labels, volumes, NIfTI writing, CSVs, report), in one
  process (``workers=0``) and on worker processes (the default: load and write overlap the
  inference);

prints ``ratio = c / min(a, b)`` in cases per second (target >= 0.8), then the time of each
uncertainty method on the first case relative to its plain run (``--samples`` passes for tta and
mc-dropout; two models for the ensemble). With ``--device cuda`` the inference runs on the GPU.
Uses the demo weights in ``sample_data/weights/brats.pt`` when present (else an untrained
compact SegResNet: same speed).

Usage (repository root): python -m tests.benchmarks.bench_brats [--cases 3] [--samples 2] [--no-uncertainty]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _weights(pipeline: Any, root: Path) -> Path:
    from medimg.models import build_network, save_checkpoint
    from pipelines.runner import default_weights

    found = default_weights("brats")
    if found is not None:
        return found
    network = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3}
    meta = {
        "pipeline": "brats",
        "architecture": "segresnet-compact",
        "network": network,
        "labels": list(pipeline.labels),
        "preprocessing": pipeline.preprocessing("segresnet-compact"),
        "training": {},
    }
    return save_checkpoint(root / "w.pt", build_network("segresnet-compact", **network), meta)


def _read_case(paths: list[str]) -> int:
    import nibabel as nib
    import numpy as np

    for path in paths:
        np.asarray(nib.load(path).dataobj)
    return len(paths)


def _forward_seconds(model: Any, meta: dict, cases: dict, device: str) -> float:
    """Seconds of sliding-window inference alone over every case's preprocessed tensor."""
    from monai.inferers import sliding_window_inference

    from medimg.devices import inference_precision, to_device
    from pipelines.brats import load_case, preprocessing_transforms

    pre = meta["preprocessing"]
    total = 0.0
    for case_id, roles in cases.items():
        case = load_case(case_id, roles, channels=tuple(pre["channels"]))
        prepared = preprocessing_transforms(pre.get("spacing"))(case).unsqueeze(0)
        start = time.perf_counter()
        with torch.no_grad(), inference_precision(device):
            sliding_window_inference(
                to_device(prepared, device),
                tuple(pre["roi_size"]),
                1,
                model,
                overlap=pre.get("overlap", 0.5),
                mode="gaussian",
            )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        total += time.perf_counter() - start
    return total


def _uncertainty(pipeline: Any, data: Path, root: Path, weights: Path, samples: int, device: str) -> None:
    from pipelines.runner import run_pipeline

    start = time.perf_counter()
    run_pipeline(pipeline.configure(), data, root / "plain-one", weights=weights, device=device)
    plain = time.perf_counter() - start
    extra = {"tta": {}, "mc-dropout": {}, "ensemble": {"ensemble_weights": [str(weights)]}}
    for method, options in extra.items():
        start = time.perf_counter()
        configured = pipeline.configure(uncertainty=method, samples=samples, **options)
        run_pipeline(configured, data, root / method, weights=weights, device=device)
        elapsed = time.perf_counter() - start
        n = 2 if method == "ensemble" else samples
        print(f"uncertainty {method} ({n} passes): {elapsed:.2f} s = {elapsed / plain:.2f}x the plain run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto: cuda when a GPU is visible, else cpu")
    parser.add_argument("--no-uncertainty", dest="uncertainty", action="store_false")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    from medimg.models import load_checkpoint
    from medimg.parallel import parallel_map
    from medimg.synth import generate_sample_data
    from pipelines import get_pipeline
    from pipelines.brats import find_nifti_cases, quiet_monai
    from pipelines.run_stages import default_workers
    from pipelines.runner import run_pipeline

    pipeline = get_pipeline("brats")
    cores = default_workers()
    with tempfile.TemporaryDirectory() as tmp, quiet_monai():
        root = Path(tmp)
        start = time.perf_counter()
        generate_sample_data(root / "data", only=["brain"], count=args.cases, full_size=True, seed=500)
        print(f"generated {args.cases} full-size case(s) in {time.perf_counter() - start:.1f} s")
        data = root / "data" / "brain" / "nifti"
        weights = _weights(pipeline, root)
        model, meta = load_checkpoint(weights, pipeline="brats", map_location=args.device)
        cases, _ = find_nifti_cases(data)
        n = len(cases)
        forward = n / _forward_seconds(model, meta, cases, args.device)
        start = time.perf_counter()
        inputs = [[str(p) for role, p in roles.items() if role != "seg"] for roles in cases.values()]
        parallel_map(_read_case, inputs, workers=cores, min_items=1)
        loading = n / (time.perf_counter() - start)
        rates = {}
        for workers in (0, None):
            start = time.perf_counter()
            run_pipeline(
                pipeline.configure(),
                data,
                root / f"run-{workers}",
                weights=weights,
                workers=workers,
                device=args.device,
            )
            rates[workers] = n / (time.perf_counter() - start)
        pre = meta["preprocessing"]
        print(f"{n} case(s) 240x240x155, roi {pre['roi_size']}, {meta['architecture']}, {cores} cores, {args.device}")
        print(f"(a) forward only (sliding windows on preprocessed tensors): {forward * 3600:.1f} cases/h")
        print(f"(b) bare nibabel loading on {cores} cores: {loading * 3600:.1f} cases/h")
        print(
            f"(c) end to end, one process: {rates[0] * 3600:.1f} cases/h; on {cores} workers: {rates[None] * 3600:.1f}"
        )
        print(f"ratio c / min(a, b) = {rates[None] / min(forward, loading):.2f}  (target >= 0.8)")
        if args.uncertainty:
            first = root / "first"
            case_id = sorted(cases)[0]
            shutil.copytree(data / case_id, first / case_id)
            _uncertainty(pipeline, first, root, weights, args.samples, args.device)


if __name__ == "__main__":
    main()
