"""Benchmark: QU-BraTS scoring against the I/O it cannot avoid.

Generates four full-size cases (240x240x155, uint8 labels and uncertainty maps, gzipped
NIfTI: prediction, three maps, truth, brain mask), then in one run times

- (a) loading those same files with nibabel and nothing else (``np.asarray(img.dataobj)``);
- (b) ``medimg uncertainty score SUB --truth TRUTH -o scores.csv`` as a subprocess (interpreter
  start, discovery, validation, scoring on every core, CSV writing), and the library call
  ``score_submission`` in this process;

and prints the ratios b / a (target <= 2.0). The official script needs about 24 s per case.

Usage (repository root): python -m tests.benchmarks.bench_qubrats [--cases 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (240, 240, 155)


def generate(root: Path, n_cases: int) -> list[Path]:
    """Write ``n_cases`` full-size cases; returns every file written."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE], indexing="ij")
    files = []
    for i in range(n_cases):
        case_id = f"BraTS20_Validation_{i:03d}"
        center = np.array([120, 120, 77]) + rng.integers(-20, 20, 3)
        r = np.sqrt((zz - center[0]) ** 2 + (yy - center[1]) ** 2 + ((xx - center[2]) * 1.2) ** 2)
        truth = np.zeros(SHAPE, np.uint8)
        truth[r < 28] = 2
        truth[r < 17] = 4
        truth[r < 9] = 1
        noise = rng.random(SHAPE, dtype=np.float32)
        prediction = truth.copy()
        prediction[(r > 25) & (r < 31) & (noise < 0.3)] = 2
        brain = (np.sqrt(((zz - 120) / 100) ** 2 + ((yy - 120) / 85) ** 2 + ((xx - 77) / 70) ** 2) < 1).astype(np.uint8)
        boundary = np.clip(100 - np.abs(r - 28) * 6, 0, 100)
        arrays = {
            f"sub/{case_id}.nii.gz": prediction,
            f"truth/{case_id}/{case_id}_seg.nii.gz": truth,
            f"truth/{case_id}/{case_id}_brainmask.nii.gz": brain,
        }
        for suffix, scale in (("whole", 1.0), ("core", 0.8), ("enhance", 0.6)):
            unc = np.clip(boundary * scale + noise * 10, 0, 100).astype(np.uint8)
            arrays[f"sub/{case_id}_unc_{suffix}.nii.gz"] = unc
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        for rel, array in arrays.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), str(path))
            files.append(path)
    return files


def load_only(files: list[Path]) -> int:
    total = 0
    for path in files:
        total += np.asarray(nib.load(str(path)).dataobj).size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from uncertainty.scoring import score_submission

    medimg = Path(sys.executable).with_name("medimg")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        files = generate(root, args.cases)
        print(f"generated {args.cases} cases of {SHAPE} ({len(files)} files) in {time.perf_counter() - t:.1f} s")
        io_times, cli_times, lib_times = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            load_only(files)
            io_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(
                [
                    str(medimg),
                    "uncertainty",
                    "score",
                    str(root / "sub"),
                    "--truth",
                    str(root / "truth"),
                    "-o",
                    str(root / "scores.csv"),
                    "-q",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            cli_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = score_submission(root / "sub", root / "truth")
            lib_times.append(time.perf_counter() - t)
            assert result.ok and len(result.cases) == args.cases
        io, cli, lib = min(io_times), min(cli_times), min(lib_times)
        print(f"cores: {os.cpu_count()}")
        print(f"(a) nibabel load of the same {len(files)} files: {io:.2f} s (best of {args.repeats})")
        print(f"(b) medimg uncertainty score (CLI, subprocess): {cli:.2f} s; score_submission in-process: {lib:.2f} s")
        print(f"ratio CLI / load = {cli / io:.2f}; library / load = {lib / io:.2f}  (target <= 2.0)")
        print(f"per case: {cli / args.cases:.2f} s (official script: about 24 s per case)")


if __name__ == "__main__":
    main()
