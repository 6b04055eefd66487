"""``convert`` against dcm2niix: the 30 series of its regression suites, 4-D order, messages, diffusion.

The real suites (Siemens mosaics in every plane, GE and Siemens multi-volume EPI, a GE 3-D
MP-RAGE) are compared with dcm2niix's shipped output (``Ref/``), or with dcm2niix run live
where no reference ships. Generated series check what the suites do not hold: volume order,
the messages for broken 4-D series, and FSL b-vectors in the image frame.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import write_image, write_series
from pydicom.uid import generate_uid
from real_data import dcm2niix_binary, real_path

from medimg.dicom import convert_folder, scan_folder

#: (suite, folder converted, folder of dcm2niix's output or None to run dcm2niix live)
SUITES = (("dcm_qa", "In", "Ref"), ("dcm_qa_nih", "In", "Ref"), ("dcm_qa_ge", "In", None))


def references(folder: Path) -> dict[tuple[int, str], Path]:
    """dcm2niix's NIfTI files by (SeriesNumber, SeriesDescription), read from their JSON sidecars."""
    out = {}
    for nifti in sorted(folder.glob("*.nii*")):
        sidecar = json.loads(Path(str(nifti).split(".nii")[0] + ".json").read_text())
        out[(int(sidecar["SeriesNumber"]), sidecar["SeriesDescription"])] = nifti
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path | None, Path]]:
    """(label, medimg's NIfTI or None, dcm2niix's NIfTI) for every series dcm2niix converts."""
    root = real_path("dcm2niix")
    work = tmp_path_factory.mktemp("dcm2niix_parity")
    out = []
    for suite, source, ref in SUITES:
        scan = scan_folder(root / suite / source, workers=1)
        result = convert_folder(scan, work / suite)
        assert result.ok, result.failures
        if ref is None:
            ref_folder = work / f"{suite}_dcm2niix"
            ref_folder.mkdir()
            command = [dcm2niix_binary(), "-z", "y", "-f", "%s_%d", "-o", str(ref_folder), str(root / suite / source)]
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        else:
            ref_folder = root / suite / ref
        mine = {}
        for record in result.written:
            series = scan.find_series(record["SeriesInstanceUID"])
            mine[(int(series.get("SeriesNumber")), series.SeriesDescription)] = Path(record["output"])
        for key, reference in references(ref_folder).items():
            out.append((f"{suite} series {key[0]} {key[1]!r}", mine.get(key), reference))
    return out


def differences(mine: nib.Nifti1Image, ref: nib.Nifti1Image) -> list[str]:
    """What differs: shape, stored voxels (dcm2niix's voxel order), canonical voxels, canonical affine."""
    if mine.shape != ref.shape:
        return [f"shape {mine.shape} != {ref.shape}"]
    problems = []
    if not np.array_equal(np.asanyarray(mine.dataobj), np.asanyarray(ref.dataobj)):
        problems.append("stored voxels differ")
    a, b = nib.as_closest_canonical(mine), nib.as_closest_canonical(ref)
    if not np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)):
        problems.append("canonical voxels differ")
    error = float(np.abs(a.affine - b.affine).max())
    if error > 1e-4:
        problems.append(f"canonical affines differ by {error:.3g} mm")
    return problems


def test_every_suite_series_converts(pairs) -> None:
    assert len(pairs) == 30
    assert [label for label, mine, _ in pairs if mine is None] == []


def test_voxels_and_affines_equal_dcm2niix(pairs) -> None:
    found = {label: differences(nib.load(mine), nib.load(ref)) for label, mine, ref in pairs}
    assert {label: problems for label, problems in found.items() if problems} == {}
    four_d = [label for label, mine, _ in pairs if len(nib.load(mine).shape) == 4]
    assert len(four_d) == 29  # every EPI series is a time series; only the MP-RAGE is 3-D


def test_side_files_match_dcm2niix(pairs) -> None:
    for label, mine, ref in pairs:
        ours, theirs = (str(p).split(".nii")[0] for p in (mine, ref))
        # "j-" names a voxel axis: equal only because the voxel order is dcm2niix's
        phase = json.loads(Path(f"{theirs}.json").read_text()).get("PhaseEncodingDirection")
        if phase is not None:
            assert json.loads(Path(f"{ours}.json").read_text()).get("PhaseEncodingDirection") == phase, label
        # no .bval/.bvec for the EPI time series, as dcm2niix writes none
        for suffix in (".bval", ".bvec"):
            assert Path(ours + suffix).exists() == Path(theirs + suffix).exists(), (label, suffix)


def test_the_comparison_catches_errors(pairs) -> None:
    label, mine, ref = next(p for p in pairs if "ax_asc_35sl" in str(p[2]) or "ax asc 35" in p[0])
    image, reference = nib.load(mine), nib.load(ref)
    data = np.asanyarray(image.dataobj)
    assert differences(image, reference) == []
    flipped = nib.Nifti1Image(data[::-1], image.affine)  # one axis flipped, geometry unchanged
    assert "stored voxels differ" in differences(flipped, reference)
    swapped = nib.Nifti1Image(data[..., ::-1], image.affine)  # volumes in the wrong order
    assert "canonical voxels differ" in differences(swapped, reference)
    # the mosaic corner instead of slice 1's position: off by half the tile grid
    corner = image.affine.copy()
    corner[:3, 3] -= corner[:3, :2] @ np.array([160.0, 160.0])
    assert any("affines differ" in p for p in differences(nib.Nifti1Image(data, corner), reference))
    assert differences(nib.Nifti1Image(data[:, :, :-1], image.affine), reference)[0].startswith("shape")


# ---------------------------------------------------------------------------------------------
# generated series


def write_4d(
    folder: Path, *, volumes: int = 3, slices: int = 4, drop: tuple[int, int] | None = None, slice_major: bool = False
) -> np.ndarray:
    """Axial 4-D series, slice k of volume t = 1000 t + 100 k + ramp; files named against acquisition order.

    Returns the expected volumes, (T, rows, columns, slices).
    """
    study, series = generate_uid(), generate_uid()
    ramp = np.arange(6 * 8, dtype=np.uint16).reshape(6, 8)
    expected = np.stack([np.stack([ramp + 1000 * t + 100 * k for k in range(slices)], -1) for t in range(volumes)])
    n_files = volumes * slices
    for t in range(volumes):
        for k in range(slices):
            if (t, k) == drop:
                continue
            number = k * volumes + t + 1 if slice_major else t * slices + k + 1
            extra = {} if slice_major else {"AcquisitionNumber": t + 1}
            write_image(
                folder / f"IM{n_files - number:03d}",  # file names in reverse acquisition order
                expected[t, ..., k],
                study_uid=study,
                series_uid=series,
                instance_number=number,
                position=(-10.0, 20.0, 30.0 + 2.0 * k),
                extra=extra,
            )
    return expected


@pytest.mark.parametrize("slice_major", [False, True])
def test_4d_volumes_in_acquisition_order(tmp_path: Path, slice_major: bool) -> None:
    expected = write_4d(tmp_path / "dicom", slice_major=slice_major)
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    assert result.ok, result.failures
    data = np.asanyarray(nib.load(result.written[0]["output"]).dataobj)
    assert data.shape == (8, 6, 4, 3)
    for t in range(3):  # dcm2niix's voxel order: (column, row from the bottom, slice)
        np.testing.assert_array_equal(data[..., t], expected[t].transpose(1, 0, 2)[:, ::-1, :])


def test_missing_slice_is_named(tmp_path: Path) -> None:
    write_series(tmp_path / "dicom", n=6, skip=[2])  # slices at z = 30, 32, _, 36, ...
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    (failure,) = result.failures
    assert "missing slices: no slice at 34.0 mm along the slice normal" in failure["error"]


def test_volume_with_a_missing_slice_is_named(tmp_path: Path) -> None:
    write_4d(tmp_path / "dicom", volumes=3, slices=5, drop=(1, 3))  # volume 2 lacks z = 36
    message = "volume 2 of 3 has 4 slices, the others 5 (no slice at 36.0 mm)"
    (series,) = [s for _, s in scan_folder(tmp_path / "dicom", workers=1).iter_series()]
    assert series.problems == [message]
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    (failure,) = result.failures
    assert failure["error"].endswith(message) and not result.written


def test_mosaic_without_csa_header_is_a_clear_error(tmp_path: Path) -> None:
    extra = {"ImageType": ["ORIGINAL", "PRIMARY", "M", "MOSAIC"], "Manufacturer": "SIEMENS"}
    write_series(tmp_path / "dicom", n=2, extra=extra)
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    assert len(result.failures) == 1 and not result.written
    assert "IM00" in result.failures[0]["error"] and "NumberOfImagesInMosaic" in result.failures[0]["error"]


#: b-values and gradient directions (LPS) of the generated diffusion series.
GRADIENTS = [(0, None), (1000, (0.6, 0.8, 0.0)), (1000, (0.0, 0.0, 1.0)), (1000, (0.0, 0.6, 0.8))]

#: The bvecs, computed by hand: component along each stored voxel axis (x along the row
#: direction, y along the column direction reversed, z along row x column), x negated when the
#: voxel-to-world determinant is positive. Axial (1,0,0 / 0,1,0): axes L, A, S, det < 0.
#: Oblique (0.6,0.8,0 / 0,0,-1): axes (0.6,0.8,0), (0,0,1), (-0.8,0.6,0) in LPS, det < 0.
HAND_BVECS = {
    (1, 0, 0, 0, 1, 0): [[0, 0.6, 0, 0], [0, -0.8, 0, -0.6], [0, 0, 1, 0.8]],
    (0.6, 0.8, 0, 0, 0, -1): [[0, 1, 0, 0.48], [0, 0, 1, 0.8], [0, 0, 0, 0.36]],
}


def write_dwi(folder: Path, orientation: tuple[float, ...]) -> None:
    study, series = generate_uid(), generate_uid()
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    ramp = np.arange(48, dtype=np.uint16).reshape(6, 8)
    for v, (bval, direction) in enumerate(GRADIENTS):
        for k in range(4):
            extra = {
                "DiffusionBValue": bval,
                "DiffusionGradientOrientation": list(direction or (0.0, 0.0, 0.0)),
                "AcquisitionNumber": v + 1,
                "MRAcquisitionType": "2D",
                "PatientPosition": "HFS",
            }
            write_image(
                folder / f"IM{v * 4 + k:03d}",
                ramp + 100 * v + 10 * k,
                study_uid=study,
                series_uid=series,
                instance_number=v * 4 + k + 1,
                position=np.array([-10.0, 20.0, 30.0]) + 3.0 * k * normal,
                orientation=orientation,
                extra=extra,
            )


@pytest.mark.parametrize("orientation", list(HAND_BVECS))
def test_bval_bvec_in_the_image_frame(tmp_path: Path, orientation) -> None:
    write_dwi(tmp_path / "dicom", orientation)
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    assert result.ok, result.failures
    (record,) = result.written
    assert record["shape"] == [8, 6, 4, 4]
    np.testing.assert_array_equal(np.loadtxt(record["bval"]), [0, 1000, 1000, 1000])
    np.testing.assert_allclose(np.loadtxt(record["bvec"]), HAND_BVECS[orientation], atol=1e-6)


@pytest.mark.parametrize("orientation", [*HAND_BVECS, (0, 1, 0, 0, 0, -1), (0.8, 0, 0.6, 0, 1, 0)])
def test_diffusion_equals_live_dcm2niix(tmp_path: Path, orientation) -> None:
    binary = dcm2niix_binary()
    write_dwi(tmp_path / "dicom", orientation)
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    (record,) = result.written
    (tmp_path / "ref").mkdir()
    command = [binary, "-z", "y", "-f", "dwi", "-o", str(tmp_path / "ref"), str(tmp_path / "dicom")]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    ref = tmp_path / "ref" / "dwi"
    assert differences(nib.load(record["output"]), nib.load(f"{ref}.nii.gz")) == []
    np.testing.assert_array_equal(np.loadtxt(record["bval"]), np.loadtxt(f"{ref}.bval"))
    np.testing.assert_allclose(np.loadtxt(record["bvec"]), np.loadtxt(f"{ref}.bvec"), atol=1e-4)


def test_load_series_says_a_4d_series_is_4d(tmp_path: Path) -> None:
    from medimg.dicom import SeriesError, load_series

    write_4d(tmp_path)
    with pytest.raises(SeriesError, match=r"a 4-D series \(3 volumes of 4 slices\).*medimg convert"):
        load_series(sorted(tmp_path.iterdir()))


def csa_header(tags: dict[str, tuple[str, list[float]]]) -> bytes:
    """A minimal Siemens CSA2 image header ("SV10") holding ``tags``: name -> (VR, values)."""
    out = b"SV10\x04\x03\x02\x01" + struct.pack("<2I", len(tags), 77)
    for name, (vr, values) in tags.items():
        out += struct.pack("<64si4s3i", name.encode(), len(values), vr.encode(), 0, len(values), 77)
        for value in values:
            text = f"{value}".encode() + b"\x00"
            out += struct.pack("<4i", len(text), len(text), 77, len(text)) + text + b"\x00" * (-len(text) % 4)
    return out


def test_siemens_csa_diffusion(tmp_path: Path) -> None:
    orientation = (1, 0, 0, 0, 1, 0)
    write_dwi(tmp_path / "dicom", orientation)
    for n, path in enumerate(sorted((tmp_path / "dicom").iterdir())):  # standard tags -> CSA only
        ds = pydicom.dcmread(path)
        del ds.DiffusionBValue, ds.DiffusionGradientOrientation
        bval, direction = GRADIENTS[n // 4]
        tags = {"B_value": ("IS", [bval])}
        if direction:
            tags["DiffusionGradientDirection"] = ("FD", list(direction))
        ds.Manufacturer = "SIEMENS"
        ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", csa_header(tags))
        ds.save_as(path)
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    (record,) = result.written
    np.testing.assert_array_equal(np.loadtxt(record["bval"]), [0, 1000, 1000, 1000])
    np.testing.assert_allclose(np.loadtxt(record["bvec"]), HAND_BVECS[orientation], atol=1e-6)
    (tmp_path / "ref").mkdir()
    command = [dcm2niix_binary(), "-z", "y", "-f", "dwi", "-o", str(tmp_path / "ref"), str(tmp_path / "dicom")]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    np.testing.assert_allclose(np.loadtxt(record["bvec"]), np.loadtxt(tmp_path / "ref" / "dwi.bvec"), atol=1e-4)


def test_bad_gradient_fails_that_series_only(tmp_path: Path) -> None:
    write_dwi(tmp_path / "dicom" / "dwi", (1, 0, 0, 0, 1, 0))
    write_series(tmp_path / "dicom" / "t1", n=3, patient_id="P2")
    bad = sorted((tmp_path / "dicom" / "dwi").iterdir())[4]  # first slice of volume 2
    ds = pydicom.dcmread(bad)
    ds.DiffusionGradientOrientation = [0.6, 0.8]
    ds.save_as(bad)
    result = convert_folder(tmp_path / "dicom", tmp_path / "out")
    assert len(result.written) == 1 and len(result.failures) == 1
    assert f"{bad}: the diffusion gradient direction has 2 values, not 3" in result.failures[0]["error"]
    # nothing half-written for the failed series: no NIfTI (a rerun would skip it), no side files
    assert len(list((tmp_path / "out").rglob("*.nii.gz"))) == 1
    assert len(list((tmp_path / "out").rglob("*.json"))) == 2  # the T1's sidecar, conversion.json
