"""Synthetic QU-BraTS submissions: naming, determinism, and what each team style means."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medimg.synth.submissions import generate_submission
from uncertainty.scoring import score_submission


@pytest.fixture
def brats(synth_brain: Path) -> Path:
    return synth_brain / "nifti"


def test_submission_files_and_determinism(brats: Path, tmp_path: Path) -> None:
    a = generate_submission(brats, tmp_path / "a", style="calibrated", seed=3)
    b = generate_submission(brats, tmp_path / "b", style="calibrated", seed=3)
    assert sorted(p.name for p in a) == [
        "BraTS2021_00000.nii.gz",
        "BraTS2021_00000_unc_core.nii.gz",
        "BraTS2021_00000_unc_enhance.nii.gz",
        "BraTS2021_00000_unc_whole.nii.gz",
    ]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(nib.load(x).dataobj), np.asarray(nib.load(y).dataobj))
    with pytest.raises(ValueError, match="unknown team style"):
        generate_submission(brats, tmp_path / "c", style="psychic")


def test_calibrated_maps_are_high_where_the_errors_are(brats: Path, tmp_path: Path) -> None:
    files = generate_submission(brats, tmp_path / "s", style="calibrated", seed=0)
    case = "BraTS2021_00000"
    truth = np.asarray(nib.load(brats / case / f"{case}_seg.nii.gz").dataobj)
    prediction = np.asarray(nib.load(tmp_path / "s" / f"{case}.nii.gz").dataobj)
    unc = np.asarray(nib.load(tmp_path / "s" / f"{case}_unc_whole.nii.gz").dataobj)
    wrong = (truth > 0) != (prediction > 0)
    assert wrong.any() and files
    assert unc[wrong].mean() > 2.5 * unc[~wrong & (truth > 0)].mean()  # 78 vs 28 for seed 0


def test_team_styles_score_as_the_metric_predicts(brats: Path, tmp_path: Path) -> None:
    scores = {}
    for style in ("calibrated", "overconfident", "random"):
        generate_submission(brats, tmp_path / style, style=style, seed=0)
        result = score_submission(tmp_path / style, brats, workers=1)
        assert result.ok, result.errors
        scores[style] = result.cases[0]["WT"]
    zero = scores["overconfident"]
    assert zero.ftp_auc == 0 and zero.ftn_auc == 0 and zero.score == pytest.approx((zero.dsc_auc + 2) / 3)
    assert scores["calibrated"].score > scores["random"].score
    assert scores["calibrated"].dsc_auc > zero.dsc_auc  # filtering the uncertain boundary helps DSC
