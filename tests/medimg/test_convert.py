"""DICOM -> NIfTI: geometry round trip, rules, failures reported, resume."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import write_series

from medimg.dicom import convert_folder, load_rules, load_series


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (0.6, 0.8, 0, 0, 0, -1)])
def test_nifti_round_trip_keeps_geometry(tmp_path: Path, orientation) -> None:
    paths, expected = write_series(tmp_path / "dicom", n=5, orientation=orientation, instance_numbers=[5, 3, 1, 2, 4])
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    assert result.ok and len(result.written) == 1
    image = nib.load(result.written[0]["output"])
    volume = load_series(paths)
    # same grid as load_series once both are in the closest canonical orientation
    # (the NIfTI is stored in dcm2niix's voxel order, rows bottom-up)
    canonical = nib.as_closest_canonical(image)
    reference = nib.as_closest_canonical(nib.Nifti1Image(volume[0].numpy(), volume.affine.numpy()))
    np.testing.assert_allclose(canonical.affine, reference.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(canonical.dataobj), np.asarray(reference.dataobj))
    # every DICOM pixel (row r, column c of slice k) is stored at the voxel its world position maps to
    data = np.asarray(image.dataobj)
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    inverse = np.linalg.inv(image.affine)
    for r, c, k in [(0, 0, 0), (3, 2, 4), (7, 9, 1)]:
        lps = np.array([-10.0, 20.0, 30.0]) + k * 2.0 * normal + c * row + r * col
        ijk = np.rint((inverse @ np.append(lps * [-1, -1, 1], 1.0))[:3]).astype(int)
        assert data[tuple(ijk)] == expected[r, c, k]


def test_failing_series_is_reported_and_others_converted(tmp_path: Path) -> None:
    write_series(tmp_path / "dicom" / "good", n=4, description="GOOD")
    write_series(tmp_path / "dicom" / "bad", n=5, skip=[2], description="BAD", patient_id="P2")
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    assert len(result.written) == 1 and not result.ok
    (failure,) = result.failures
    assert "missing slices" in failure["error"]
    report = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert len(report["failures"]) == 1 and len(report["written"]) == 1


def test_rules_and_resume(tmp_path: Path) -> None:
    study = None
    for desc in ("t1", "t1ce", "t2", "flair", "localizer"):
        paths, _ = write_series(tmp_path / "dicom" / desc, n=3, description=desc, study_uid=study)
        if study is None:
            import pydicom

            study = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    rules = load_rules("brain_mr")
    first = convert_folder(tmp_path / "dicom", tmp_path / "out", rules=rules)
    names = sorted(Path(r["output"]).name for r in first.written)
    assert names == ["flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"]
    again = convert_folder(tmp_path / "dicom", tmp_path / "out", rules=rules)
    assert not again.written and len(again.skipped) == 4
    leftovers = [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]
    assert leftovers == []
