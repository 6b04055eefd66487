"""Measurement: QU-BraTS scores of each uncertainty method next to two baselines, same cases.

Generates fresh brain cases (a seed training never saw), segments them with the brats demo
weights, and scores with our QU-BraTS scorer:

- ``tta``, ``mc-dropout``: the pipeline's methods (``--samples`` passes);
- ``ensemble``: the demo checkpoint with the training run's last checkpoint (a two-member
  snapshot ensemble), when ``build/demo-runs/brats/last.pt`` exists;
- baselines on the TTA segmentation: ``all-zero`` maps (never filter) and ``random`` maps
  (uniform 0-100, seeded).

Prints a markdown table (mean score per region, and Dice of the segmentation) for the README.

Usage (repository root): python -m tests.benchmarks.compare_uncertainty [--cases 6] [--seed 200] [--samples 4]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


def _mean_scores(result) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {r: float(np.mean([c[r].score for c in result.cases])) for r in ("WT", "TC", "ET")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()

    from medimg.synth import generate_sample_data
    from pipelines import get_pipeline
    from pipelines.brats import quiet_monai
    from pipelines.runner import default_weights, run_pipeline
    from uncertainty.scoring import score_submission

    weights = default_weights("brats")
    if weights is None:
        raise SystemExit("no sample_data/weights/brats.pt: run make demo-weights-brats")
    snapshot = Path("build/demo-runs/brats/last.pt")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, quiet_monai():
        root = Path(tmp)
        generate_sample_data(root / "data", only=["brain"], count=args.cases, seed=args.seed)
        truth = root / "data" / "brain" / "nifti"
        methods = {"tta": {}, "mc-dropout": {}}
        if snapshot.is_file():
            methods["ensemble"] = {"ensemble_weights": [str(snapshot)]}
        dice = {}
        for method, options in methods.items():
            pipeline = get_pipeline("brats").configure(uncertainty=method, samples=args.samples, **options)
            run_pipeline(pipeline, truth, root / method, weights=weights, write_report=False)
            result = score_submission(root / method, truth, workers=1)
            rows.append((method, _mean_scores(result)))
            dice[method] = _dice(root / method, truth)
        rng = np.random.default_rng(0)
        for baseline in ("all-zero", "random"):
            folder = root / baseline
            shutil.copytree(root / "tta", folder)
            for path in folder.rglob("*_unc_*.nii.gz"):
                image = nib.load(path)
                values = np.zeros(image.shape) if baseline == "all-zero" else rng.integers(0, 101, image.shape)
                nib.save(nib.Nifti1Image(values.astype(np.uint8), image.affine), str(path))
            rows.append(
                (f"{baseline} (baseline, TTA segmentation)", _mean_scores(score_submission(folder, truth, workers=1)))
            )
    print(f"{args.cases} fresh cases (seed {args.seed}), {args.samples} samples for tta / mc-dropout")
    print("| uncertainty | QU-BraTS WT | TC | ET | Dice WT / TC / ET of its segmentation |")
    print("| --- | --- | --- | --- | --- |")
    for name, scores in rows:
        d = dice.get(name.split(" ")[0], dice["tta"])
        print(
            f"| {name} | {scores['WT']:.3f} | {scores['TC']:.3f} | {scores['ET']:.3f} | "
            f"{d['WT']:.3f} / {d['TC']:.3f} / {d['ET']:.3f} |"
        )


def _dice(out: Path, truth: Path) -> dict[str, float]:
    from pipelines.brats import labels_to_channels

    values: dict[str, list[float]] = {"TC": [], "WT": [], "ET": []}
    for case in sorted(p for p in out.iterdir() if p.is_dir()):
        pred = np.asarray(nib.load(case / f"{case.name}.nii.gz").dataobj)
        true = np.asarray(nib.load(truth / case.name / f"{case.name}_seg.nii.gz").dataobj)
        for region, p, t in zip(("TC", "WT", "ET"), labels_to_channels(pred), labels_to_channels(true), strict=True):
            total = p.sum() + t.sum()
            values[region].append(1.0 if total == 0 else 2 * (p & t).sum() / total)
    return {r: float(np.mean(v)) for r, v in values.items()}


if __name__ == "__main__":
    main()
