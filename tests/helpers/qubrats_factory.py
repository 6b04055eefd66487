"""Small QU-BraTS cases for tests: arrays, NIfTI writing, and a direct spec implementation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

REGION_FILES = {"WT": "whole", "TC": "core", "ET": "enhance"}
EPS32 = np.float32(np.finfo(np.float32).eps)


def make_case(rng: np.random.Generator, shape=(12, 10, 8), *, float_maps: bool = False) -> dict:
    """Nested tumour labels (truth and a perturbed prediction), maps in [0, 100], a brain mask."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    truth = np.zeros(shape, np.uint8)
    truth[r < 0.7] = 2
    truth[r < 0.45] = 4
    truth[r < 0.25] = 1
    prediction = truth.copy()
    flip = rng.random(shape) < 0.15
    prediction[flip] = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=int(flip.sum()))
    maps = {}
    for region in REGION_FILES:
        base = np.where(flip, 80.0, 20.0) + rng.normal(0, 15, shape)
        base = np.clip(base, 0, 100)
        maps[region] = base if float_maps else np.round(base).astype(np.uint8)
    brain = (r < 0.95).astype(np.uint8)
    return {"truth": truth, "prediction": prediction, "maps": maps, "brain": brain}


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


def write_submission(folder: Path, case_id: str, case: dict, *, skip: tuple[str, ...] = ()) -> None:
    """``{ID}.nii.gz`` and ``{ID}_unc_*.nii.gz`` in ``folder`` (roles in ``skip`` left out)."""
    if "prediction" not in skip:
        write_nifti(folder / f"{case_id}.nii.gz", case["prediction"])
    for region, suffix in REGION_FILES.items():
        if region not in skip:
            write_nifti(folder / f"{case_id}_unc_{suffix}.nii.gz", case["maps"][region])


def write_truth(folder: Path, case_id: str, case: dict, *, layout: str = "flat", mask: str = "brainmask") -> None:
    """``{ID}_seg`` plus a brain mask (``brainmask``), a T1 image (``t1``) or nothing (``none``)."""
    target = folder / case_id if layout == "brats" else folder
    write_nifti(target / f"{case_id}_seg.nii.gz", case["truth"])
    if mask == "brainmask":
        write_nifti(target / f"{case_id}_brainmask.nii.gz", case["brain"])
    elif mask == "t1":
        t1 = case["brain"].astype(np.float32) * 300.0 + 0.0
        write_nifti(target / f"{case_id}_t1.nii.gz", t1)


def direct_score(prediction, maps, truth, brain, taus) -> dict:
    """Threshold-by-threshold transcription of the official scorer's rules: the slow reference."""
    masks = {
        "WT": lambda a: a > 0,
        "TC": lambda a: (a == 1) | (a == 4),
        "ET": lambda a: a == 4,
    }
    brain = np.asarray(brain) > 0
    out = {}
    for region, to_mask in masks.items():
        g, p, u = to_mask(truth), to_mask(prediction), np.asarray(maps[region], dtype=np.float64)
        dsc, ftp, ftn = [], [], []
        tp_all = np.float32((g & p & brain).sum())
        tn_all = np.float32((~g & ~p & brain).sum())
        for tau in taus:
            keep = ~(u > tau)
            gk, pk = g & keep, p & keep
            inter, union = (gk & pk).sum(), gk.sum() + pk.sum()
            dsc.append(1.0 if inter == 0 and union == 0 else 2.0 * inter / union)
            tp_kept = np.float32((g & p & brain & keep).sum())
            tn_kept = np.float32((~g & ~p & brain & keep).sum())
            ftp.append(np.float32((tp_all - tp_kept) / (tp_all + EPS32)))
            ftn.append(np.float32((tn_all - tn_kept) / (tn_all + EPS32)))

        def auc(curve):
            c = np.asarray(curve, dtype=np.float64)
            return float(sum((taus[i] - taus[i + 1]) * (c[i] + c[i + 1]) / 2 for i in range(len(taus) - 1)) / 100)

        a_d, a_p, a_n = auc(dsc), auc(ftp), auc(ftn)
        out[region] = {
            "dsc": np.array(dsc),
            "ftp": np.array(ftp),
            "ftn": np.array(ftn),
            "dsc_auc": a_d,
            "ftp_auc": a_p,
            "ftn_auc": a_n,
            "score": (a_d + 1 - a_p + 1 - a_n) / 3,
        }
    return out
