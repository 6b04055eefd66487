"""BraTS inputs: naming conventions, NIfTI = DICOM on one grid, resampling, labels, inference grid."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medimg.dicom import load_rules, scan_folder, select
from medimg.models import build_network
from medimg.synth import generate_sample_data
from pipelines.brats import (
    CaseInputError,
    channels_to_labels,
    find_nifti_cases,
    labels_to_channels,
    load_case,
    region_volumes_ml,
    segment,
)

CASE = "BraTS2021_00000"


@pytest.fixture(scope="module")
def brain(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brain")
    generate_sample_data(root, only=["brain"], count=1, seed=4)
    return root / "brain"


def test_find_cases_2021_and_2023_naming(brain: Path, tmp_path: Path) -> None:
    cases, errors = find_nifti_cases(brain / "nifti")
    assert list(cases) == [CASE] and not errors
    assert set(cases[CASE]) == {"t1", "t1ce", "t2", "flair", "seg"}
    renamed = tmp_path / "gli" / "BraTS-GLI-00000-000"
    renamed.mkdir(parents=True)
    for old, new in (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f")):
        shutil.copy(cases[CASE][old], renamed / f"BraTS-GLI-00000-000-{new}.nii.gz")
    gli, errors = find_nifti_cases(tmp_path / "gli", naming="brats2023")
    assert list(gli) == ["BraTS-GLI-00000-000"] and not errors and "seg" not in gli["BraTS-GLI-00000-000"]
    # the 2021 naming does not see these files as a case: nothing is guessed
    assert find_nifti_cases(tmp_path / "gli")[0] == {}
    (renamed / "BraTS-GLI-00000-000-t2w.nii.gz").unlink()
    _, errors = find_nifti_cases(tmp_path / "gli", naming="brats2023")
    assert len(errors) == 1 and "missing sequence(s): BraTS-GLI-00000-000-t2w.nii.gz" in str(errors[0])
    with pytest.raises(ValueError, match="unknown naming"):
        find_nifti_cases(tmp_path, naming="brats1999")


def test_dicom_and_nifti_give_the_same_case(brain: Path) -> None:
    cases, _ = find_nifti_cases(brain / "nifti")
    from_nifti = load_case(CASE, cases[CASE])
    scan = scan_folder(brain / "dicom")
    chosen = select(scan.studies[0], load_rules("brain_mr"))
    from_dicom = load_case(CASE, {name: items[0][0].files for name, items in chosen.picked.items()})
    assert from_nifti.shape == from_dicom.shape == (4, 96, 96, 64)
    torch.testing.assert_close(from_nifti.as_tensor(), from_dicom.as_tensor(), atol=1e-4, rtol=0)
    torch.testing.assert_close(from_nifti.affine, from_dicom.affine, atol=1e-4, rtol=0)


def test_sequences_on_other_grids_are_resampled_and_disjoint_fields_refused(brain: Path, tmp_path: Path) -> None:
    cases, _ = find_nifti_cases(brain / "nifti")
    flair = nib.load(cases[CASE]["flair"])
    coarse = nib.Nifti1Image(np.asarray(flair.dataobj)[::2, ::2, ::2], flair.affine @ np.diag([2, 2, 2, 1]))
    nib.save(coarse, tmp_path / "flair_coarse.nii.gz")
    case = load_case(CASE, {**cases[CASE], "flair": tmp_path / "flair_coarse.nii.gz"})
    assert case.shape == (4, 96, 96, 64)  # on the T1ce grid
    reference = load_case(CASE, cases[CASE])
    inside = reference[3] > 0
    correlation = np.corrcoef(case[3][inside].numpy(), reference[3][inside].numpy())[0, 1]
    assert correlation > 0.9
    far = nib.Nifti1Image(
        np.asarray(flair.dataobj),
        flair.affine @ np.array([[1, 0, 0, 1000], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float),
    )
    nib.save(far, tmp_path / "flair_far.nii.gz")
    with pytest.raises(CaseInputError, match="does not overlap"):
        load_case(CASE, {**cases[CASE], "flair": tmp_path / "flair_far.nii.gz"})
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(CaseInputError, match="cannot read NIfTI"):
        load_case(CASE, {**cases[CASE], "t2": tmp_path / "broken.nii.gz"})


def test_label_conventions_and_volumes() -> None:
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0] = 2
    labels[1, :2] = 1
    labels[1, 2:] = 4
    tc, wt, et = labels_to_channels(labels)
    assert wt.sum() == 32 and tc.sum() == 16 and et.sum() == 8
    np.testing.assert_array_equal(channels_to_labels(np.stack([tc, wt, et])), labels)
    gli = np.where(labels == 4, 3, labels).astype(np.uint8)
    np.testing.assert_array_equal(labels_to_channels(gli, "brats2023"), np.stack([tc, wt, et]))
    with pytest.raises(ValueError, match="not in the brats2020 convention"):
        labels_to_channels(gli)
    volumes = region_volumes_ml(labels, np.diag([2.0, 2.0, 2.0, 1.0]))  # 8 mm^3 per voxel
    assert volumes == pytest.approx({"WT_ml": 32 * 0.008, "TC_ml": 16 * 0.008, "ET_ml": 8 * 0.008})


def test_segment_returns_probabilities_on_the_source_grid(brain: Path) -> None:
    cases, _ = find_nifti_cases(brain / "nifti")
    case = load_case(CASE, cases[CASE])
    torch.manual_seed(0)
    model = build_network("segresnet-compact", spatial_dims=3, in_channels=4, out_channels=3).eval()
    prob = segment(model, case, roi_size=(48, 48, 48), spacing=(3.0, 3.0, 3.0))
    assert prob.shape == (3, 96, 96, 64) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
