"""Benchmark: the brats pipeline end to end against bare sliding-window inference, and the cost
of each uncertainty method.

On one full-size case (240x240x155 at 1 mm, generated), in one run:

- (a) ``sliding_window_inference`` of the network on the already preprocessed tensor;
- (b) ``run_pipeline`` end to end (read the four NIfTI files, put them on one grid, preprocess,
  the same inference, back to the source grid, labels, volumes, NIfTI writing, CSVs, report);

prints the ratio b / a (target <= 1.5), then the time of each uncertainty method relative to
the plain run (``--samples`` passes for tta and mc-dropout; two models for the ensemble).
Uses the demo weights in ``sample_data/weights/brats.pt`` when present (else an untrained
compact SegResNet: same speed).

Usage (repository root): python -m tests.benchmarks.bench_brats [--samples 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()

    from monai.inferers import sliding_window_inference

    from medimg.models import build_network, load_checkpoint, save_checkpoint
    from medimg.synth import generate_sample_data
    from pipelines import get_pipeline
    from pipelines.brats import find_nifti_cases, load_case, preprocessing_transforms, quiet_monai
    from pipelines.runner import default_weights, run_pipeline

    pipeline = get_pipeline("brats")
    with tempfile.TemporaryDirectory() as tmp, quiet_monai():
        root = Path(tmp)
        t = time.perf_counter()
        generate_sample_data(root / "data", only=["brain"], count=1, full_size=True, seed=500)
        print(f"generated one full-size case in {time.perf_counter() - t:.1f} s")
        data = root / "data" / "brain" / "nifti"
        weights = default_weights("brats")
        if weights is None:
            network = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3}
            meta = {
                "pipeline": "brats",
                "architecture": "segresnet-compact",
                "network": network,
                "labels": list(pipeline.labels),
                "preprocessing": pipeline.preprocessing("segresnet-compact"),
                "training": {},
            }
            weights = save_checkpoint(root / "w.pt", build_network("segresnet-compact", **network), meta)
        model, meta = load_checkpoint(weights, pipeline="brats")
        pre = meta["preprocessing"]
        cases, _ = find_nifti_cases(data)
        ((case_id, roles),) = cases.items()
        prepared = preprocessing_transforms(pre.get("spacing"))(load_case(case_id, roles)).unsqueeze(0)
        t = time.perf_counter()
        with torch.no_grad():
            sliding_window_inference(
                prepared, tuple(pre["roi_size"]), 1, model, overlap=pre.get("overlap", 0.5), mode="gaussian"
            )
        bare = time.perf_counter() - t
        t = time.perf_counter()
        run_pipeline(pipeline.configure(), data, root / "plain", weights=weights)
        plain = time.perf_counter() - t
        print(
            f"case {tuple(prepared.shape[2:])}, roi {pre['roi_size']}, spacing {pre.get('spacing')}, "
            f"architecture {meta['architecture']}"
        )
        print(f"(a) bare sliding_window_inference: {bare:.2f} s")
        print(f"(b) medimg run brats end to end: {plain:.2f} s")
        print(f"ratio b / a = {plain / bare:.2f}  (target <= 1.5)")
        extra = {"tta": {}, "mc-dropout": {}, "ensemble": {"ensemble_weights": [str(weights)]}}
        for method, options in extra.items():
            t = time.perf_counter()
            run_pipeline(
                pipeline.configure(uncertainty=method, samples=args.samples, **options),
                data,
                root / method,
                weights=weights,
            )
            elapsed = time.perf_counter() - t
            n = 2 if method == "ensemble" else args.samples
            print(f"uncertainty {method} ({n} passes): {elapsed:.2f} s = {elapsed / plain:.2f}x the plain run")


if __name__ == "__main__":
    main()
