"""Series/instance decoding: geometric slice order, affine, LUTs, multi-frame, codecs."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import PYDICOM_TEST_FILES, write_image, write_series

from medimg.dicom import DecodeError, SeriesError, load_instance, load_series, scan_folder
from medimg.dicom.decode import window

# Files pydicom ships broken on purpose (its README's decode matrix): a
# misplaced JPEG marker, and a sequence delimiter embedded in the JPEG 2000 codestream.
KNOWN_CORRUPT = {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"}


def _world_lps(ipp, iop, spacing, c, r) -> np.ndarray:
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    return np.asarray(ipp) + c * spacing[1] * row + r * spacing[0] * col


@pytest.mark.parametrize(
    "orientation",
    [
        (1, 0, 0, 0, 1, 0),  # axial
        (0, 1, 0, 0, 0, -1),  # sagittal
        (1, 0, 0, 0, 0, -1),  # coronal
        (0.8660254, 0.5, 0, -0.5, 0.8660254, 0),  # rotated axial
    ],
)
def test_shuffled_instance_numbers_give_geometric_order(tmp_path: Path, orientation) -> None:
    n = 7
    numbers = list(range(1, n + 1))
    random.Random(3).shuffle(numbers)
    paths, expected = write_series(tmp_path, n=n, orientation=orientation, instance_numbers=numbers, spacing=2.5)
    files = list(paths)
    random.Random(1).shuffle(files)
    volume = load_series(files)
    assert volume.shape == (1, 10, 8, n)  # (C, columns, rows, slices)
    np.testing.assert_array_equal(volume[0].numpy(), expected.transpose(1, 0, 2))
    assert volume.meta["slice_spacing"] == pytest.approx(2.5)
    # affine: voxel (c, r, k) -> RAS position of that pixel
    affine = volume.affine.numpy()
    ds0 = pydicom.dcmread(paths[0])
    for c, r, k in [(0, 0, 0), (3, 5, 0), (9, 7, 6), (2, 1, 4)]:
        normal = np.cross(orientation[:3], orientation[3:])
        ipp = np.asarray(ds0.ImagePositionPatient) + k * 2.5 * normal
        lps = _world_lps(ipp, orientation, (1.0, 1.0), c, r)
        ras = affine @ np.array([c, r, k, 1.0])
        np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-4)
    assert volume.meta["space"] == "RAS"


def test_inconsistent_series_raise_naming_the_series(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "gap", n=5, skip=[2], description="GAPPY")
    with pytest.raises(SeriesError, match=r"GAPPY.*missing slices"):
        load_series(paths)
    paths, _ = write_series(tmp_path / "dup", n=4, duplicate=1, description="DUPS")
    with pytest.raises(SeriesError, match=r"DUPS.*duplicate slice positions"):
        load_series(paths)
    paths, _ = write_series(tmp_path / "mixed", n=3, description="MIXED")
    ds = pydicom.dcmread(paths[0])
    odd = write_image(
        tmp_path / "mixed" / "odd",
        np.zeros((4, 4)),
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        position=(0, 0, 99),
        description="MIXED",
    )
    with pytest.raises(SeriesError, match=r"MIXED.*mixed image sizes"):
        load_series([*paths, odd])


def test_projection_images_without_geometry_are_not_stacked(tmp_path: Path) -> None:
    a = write_image(
        tmp_path / "a",
        np.ones((4, 6)),
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        position=None,
        orientation=None,
        modality="CR",
    )
    b = write_image(
        tmp_path / "b",
        np.ones((4, 6)),
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        position=None,
        orientation=None,
        modality="CR",
        instance_number=2,
    )
    with pytest.raises(SeriesError, match="load them one at a time"):
        load_series([a, b])
    image = load_instance(a)
    assert image.shape == (1, 6, 4) and image.meta["geometry"] == "projection"


def test_rescale_monochrome1_and_window(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    extra = {"BitsStored": 12, "HighBit": 11, "WindowCenter": 2048, "WindowWidth": 4096}
    p2 = write_image(
        tmp_path / "m2", pixels, study_uid="1.2", series_uid="1.2.1", slope=2.0, intercept=-100, extra=extra
    )
    v2 = load_instance(p2)[0, :, :, 0].numpy().T  # back to (rows, cols)
    np.testing.assert_allclose(v2, pixels * 2.0 - 100)
    p1 = write_image(
        tmp_path / "m1", pixels, study_uid="1.2", series_uid="1.2.2", photometric="MONOCHROME1", extra=extra
    )
    v1 = load_instance(p1)[0, :, :, 0].numpy().T
    np.testing.assert_allclose(v1, 4095 - pixels)  # inverted within the 12-bit range
    w1 = load_instance(p1, voi=True)[0, :, :, 0].numpy().T
    w2 = load_instance(p2, voi=(2048, 4096))[0, :, :, 0].numpy().T
    assert w1.min() >= 0 and w1.max() <= 1
    assert w1[0, 0] > w1[1, 1]  # MONOCHROME1: stored 0 is white after inversion
    assert 0 <= w2.min() and w2.max() <= 1


def test_window_functions() -> None:
    x = np.array([0.0, 50.0, 100.0])
    # PS3.3 C.11.2.1.2.1: LINEAR maps c - 0.5 - (w - 1)/2 -> 0 and c - 0.5 + (w - 1)/2 -> 1
    np.testing.assert_allclose(window(x, 50.5, 101), [0.0, 0.5, 1.0], atol=1e-6)
    assert window(np.array([50.0]), 50, 101)[0] == pytest.approx(0.505)
    np.testing.assert_allclose(window(x, 50, 100, "LINEAR_EXACT"), [0.0, 0.5, 1.0], atol=1e-6)
    sig = window(x, 50, 100, "SIGMOID")
    assert sig[1] == pytest.approx(0.5) and sig[0] < 0.2 and sig[2] > 0.8


def test_enhanced_multiframe_matches_its_source_series(tmp_path: Path) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    numbers = [3, 1, 4, 2, 5]
    paths, expected = write_series(tmp_path / "legacy", n=5, instance_numbers=numbers, spacing=3.0)
    legacy = [pydicom.dcmread(p) for p in paths]
    enhanced = LegacyConvertedEnhancedMRImage(
        legacy_datasets=legacy,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=2,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    out = tmp_path / "enhanced.dcm"
    enhanced.save_as(out)
    volume = load_instance(out)
    reference = load_series(paths)
    assert volume.shape == reference.shape == (1, 10, 8, 5)
    np.testing.assert_array_equal(volume.numpy(), reference.numpy())
    np.testing.assert_allclose(volume.affine.numpy(), reference.affine.numpy(), atol=1e-4)
    scan = scan_folder(tmp_path)
    enhanced_series = next(s for _, s in scan.iter_series() if s.files == [str(out)])
    assert enhanced_series.num_frames == 5 and enhanced_series.slice_spacing == pytest.approx(3.0)


def test_rtdose_grid_frame_offsets() -> None:
    dose = load_instance(PYDICOM_TEST_FILES / "rtdose.dcm")
    assert dose.shape == (1, 10, 10, 15)
    assert dose.meta["slice_spacing"] == pytest.approx(5.0)


def test_compressed_syntaxes_decode_like_uncompressed() -> None:
    reference = load_instance(PYDICOM_TEST_FILES / "MR_small.dcm").numpy()
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ):
        np.testing.assert_array_equal(load_instance(PYDICOM_TEST_FILES / name).numpy(), reference, err_msg=name)


def test_every_indexed_pydicom_file_decodes(tmp_path: Path) -> None:
    root = tmp_path / "files"
    shutil.copytree(PYDICOM_TEST_FILES, root)
    result = scan_folder(root)
    decoded = 0
    for _, series in result.iter_series():
        for inst in series.instances:
            name = Path(inst.path).name
            if not series.decodable:
                continue
            if name in KNOWN_CORRUPT:
                with pytest.raises(DecodeError, match=name):
                    load_instance(inst.path)
                continue
            image = load_instance(inst.path)
            assert np.isfinite(image.numpy()).all(), name
            assert image.shape[1:3] == (inst.columns, inst.rows), name
            decoded += 1
    assert decoded >= 40
