"""BraTS label volumes -> DICOM SEG on the source MR series -> the same labels back."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from pydicom.uid import generate_uid

from medimg import __version__
from medimg.dicom import load_series
from medimg.dicom.seg import BRATS_SEGMENTS, read_seg, write_seg

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
# the synthetic cases use a one-component PatientName ("BraTS2021_00000"); highdicom warns about it
pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")


def _series(folder: Path, **kwargs) -> tuple[list[str], object]:
    """6 slices of 8 rows x 10 columns, InstanceNumber shuffled against position; loaded."""
    paths, _ = write_series(
        folder, n=6, shape=(8, 10), instance_numbers=[4, 1, 6, 2, 5, 3], extra={"FrameOfReferenceUID": generate_uid()}
    )
    volume = load_series(paths)
    return list(volume.meta["source_files"]), volume


def _toy_labels(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)  # (X=10, Y=8, Z=6); slices 0 and 5 stay empty
    labels[2:5, 1:4, 1] = 2
    labels[3, 2, 1] = 1
    labels[0, 7, 2] = 4  # first column, last row: catches a rows/columns swap
    labels[9, 0, 3] = 1
    labels[4:6, 3:6, 4] = 4
    labels[6, 3, 4] = 2
    return labels


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_round_trip_and_valid_seg(tmp_path: Path, seg_type: str) -> None:
    files, volume = _series(tmp_path / "mr")
    assert tuple(volume.shape) == (1, 10, 8, 6)
    labels = _toy_labels(tuple(volume.shape[1:]))
    out = write_seg(labels, files, tmp_path / "seg" / "brats.dcm", seg_type=seg_type)
    assert out == tmp_path / "seg" / "brats.dcm"
    assert [p.name for p in out.parent.iterdir()] == ["brats.dcm"]  # atomic: no temporary left

    back = read_seg(out, files)
    assert back.shape == labels.shape and back.dtype == np.uint8
    assert np.array_equal(back, labels)
    assert not back[..., 0].any() and not back[..., 5].any()

    source = pydicom.dcmread(files[0])
    ds = pydicom.dcmread(out)
    sop_class = SEGMENTATION_STORAGE if seg_type == "binary" else LABELMAP_SEGMENTATION_STORAGE
    assert ds.SOPClassUID == sop_class and ds.file_meta.MediaStorageSOPClassUID == sop_class
    assert ds.Modality == "SEG" and ds.SegmentationType == seg_type.upper()
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
    (ref_series,) = ds.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == source.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in ref_series.ReferencedInstanceSequence} == set(
        volume.meta["SOPInstanceUIDs"]
    )
    assert ds.SeriesNumber == 900 and ds.InstanceNumber == 1
    assert ds.SeriesDescription == "medimg brain tumour segmentation - not for clinical use"
    assert ds.Manufacturer == "medimg" and ds.ManufacturerModelName == "medimg"
    assert ds.SoftwareVersions == __version__ and ds.DeviceSerialNumber == "0"
    assert ds.PatientID == source.PatientID

    segments = list(ds.SegmentSequence)
    if seg_type == "labelmap":  # highdicom describes the background as segment 0
        assert int(segments[0].SegmentNumber) == 0 and segments[0].SegmentLabel == "Background"
        segments = segments[1:]
    assert [int(s.SegmentNumber) for s in segments] == [1, 2, 3]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in segments] == ["6574001", "79654002", "108369006"]
    for item in segments:
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        (algorithm,) = item.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # DCM Artificial Intelligence
        assert algorithm.AlgorithmName == "medimg" and algorithm.AlgorithmVersion == __version__

    # empty frames are omitted: one frame per non-empty (slice, segment) pair (BINARY) / slice (LABELMAP)
    if seg_type == "binary":
        expected_frames = sum(len(set(np.unique(labels[..., k])) - {0}) for k in range(6))
    else:
        expected_frames = sum(bool(labels[..., k].any()) for k in range(6))
    assert int(ds.NumberOfFrames) == expected_frames


def test_read_places_frames_by_referenced_instance(tmp_path: Path) -> None:
    files, volume = _series(tmp_path / "mr")
    labels = _toy_labels(tuple(volume.shape[1:]))
    out = write_seg(labels, files, tmp_path / "seg.dcm")
    order = [3, 0, 5, 1, 4, 2]
    np.testing.assert_array_equal(read_seg(out, [files[k] for k in order]), labels[..., order])
    np.testing.assert_array_equal(read_seg(out, files[2:4]), labels[..., 2:4])  # a subset of the series
    # frames are stored in highdicom's order, not necessarily the slice order; the mapping still holds
    ds = pydicom.dcmread(out)
    per_frame = [
        fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for fg in ds.PerFrameFunctionalGroupsSequence
    ]
    assert set(per_frame) <= set(volume.meta["SOPInstanceUIDs"])


def test_all_empty_and_subset_of_labels(tmp_path: Path) -> None:
    files, volume = _series(tmp_path / "mr")
    empty = np.zeros(tuple(volume.shape[1:]), dtype=np.int16)
    np.testing.assert_array_equal(read_seg(write_seg(empty, files, tmp_path / "empty.dcm"), files), empty)

    labels = _toy_labels(tuple(volume.shape[1:]))
    labels[labels == 1] = 0
    out = write_seg(
        labels[None].astype(np.float32),  # (1, X, Y, Z) float with integral values is accepted
        files,
        tmp_path / "sub.dcm",
        label_values=(4, 2),
        segment_names=("ET", "ED"),
    )
    ds = pydicom.dcmread(out)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["ET", "ED"]
    np.testing.assert_array_equal(read_seg(out, files), labels)
    # explicit label values override the code lookup: segment 1 -> 7, segment 2 -> 300
    explicit = read_seg(out, files, label_values=(7, 300))
    assert explicit.dtype == np.uint16
    np.testing.assert_array_equal(explicit, np.select([labels == 4, labels == 2], [7, 300], 0))


def test_shape_and_label_errors(tmp_path: Path) -> None:
    files, volume = _series(tmp_path / "mr")
    labels = _toy_labels(tuple(volume.shape[1:]))
    out = tmp_path / "seg.dcm"
    with pytest.raises(ValueError, match=r"6 slices .* 5 source files"):
        write_seg(labels, files[:5], out)
    with pytest.raises(ValueError, match=r"IM00\d: image is 8 rows x 10 columns.*\(10, 8, 6\), got \(8, 10, 6\)"):
        write_seg(labels.transpose(1, 0, 2), files, out)
    with pytest.raises(ValueError, match=r"shape \(X, Y, Z\)"):
        write_seg(labels[..., 0], files, out)
    bad = labels.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"value\(s\) \[3\] outside 0 and label_values \[1, 2, 4\]"):
        write_seg(bad, files, out)
    with pytest.raises(ValueError, match=r"outside 0 and label_values \[1, 2\]"):
        write_seg(labels, files, out, label_values=(1, 2))
    with pytest.raises(ValueError, match="non-integer"):
        write_seg(labels + 0.5, files, out)
    with pytest.raises(ValueError, match=r"label value\(s\) \[3\] have no segment definition"):
        write_seg(labels, files, out, label_values=(1, 2, 3))
    with pytest.raises(ValueError, match="2 segment_names for 3 label_values"):
        write_seg(labels, files, out, segment_names=("a", "b"))
    with pytest.raises(ValueError, match="seg_type"):
        write_seg(labels, files, out, seg_type="fractional")
    with pytest.raises(ValueError, match="same SOPInstanceUID"):
        write_seg(labels, [*files[:5], files[0]], out)
    assert not out.exists()


def test_wrong_sources_raise(tmp_path: Path) -> None:
    files, volume = _series(tmp_path / "mr")
    other, _ = _series(tmp_path / "other")
    out = write_seg(_toy_labels(tuple(volume.shape[1:])), files, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match=r"seg\.dcm: does not reference 6 of the 6 source file\(s\), e\.g\. .*other"):
        read_seg(out, other)
    with pytest.raises(ValueError, match=r"does not reference 1 of the 6"):
        read_seg(out, [*files[:5], other[0]])
    with pytest.raises(ValueError, match=r"IM000\.missing: cannot read"):
        read_seg(out, [tmp_path / "mr" / "IM000.missing"])
    with pytest.raises(ValueError, match=r"IM000: cannot read as DICOM SEG"):
        read_seg(files[0], files)


# --------------------------------------------------------------------------------------------
# the synthetic BraTS case: 96 x 96 x 64 MR series and its BraTS seg.nii.gz


@pytest.fixture(scope="module")
def brain_case(synth_brain: Path) -> tuple[list[str], np.ndarray]:
    case = "BraTS2021_00000"
    (series_dir,) = (synth_brain / "dicom" / case).glob("*_t1")
    volume = load_series(sorted(series_dir.iterdir()))
    nifti = synth_brain / "nifti" / case
    seg_image = nib.load(nifti / f"{case}_seg.nii.gz")
    labels = np.asarray(seg_image.dataobj)
    # the NIfTI grid is the load_series grid: same affine, and the T1 intensities agree voxel for voxel
    np.testing.assert_allclose(seg_image.affine, volume.affine.numpy(), atol=1e-4)
    t1 = np.asarray(nib.load(nifti / f"{case}_t1.nii.gz").dataobj)
    np.testing.assert_allclose(volume[0].numpy(), t1, atol=1e-3)
    assert labels.shape == tuple(volume.shape[1:]) == (96, 96, 64)
    return list(volume.meta["source_files"]), labels


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_brats_case_round_trip(tmp_path: Path, brain_case, seg_type: str) -> None:
    files, labels = brain_case
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    empty_slices = [k for k in range(labels.shape[2]) if not labels[..., k].any()]
    assert empty_slices  # the tumour does not fill the field of view
    out = write_seg(labels, files, tmp_path / "brats_seg.dcm", seg_type=seg_type)
    back = read_seg(out, files)
    assert back.dtype == np.uint8 and np.array_equal(back, labels)

    seg = hd.seg.segread(out)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    # highdicom's own reader agrees (its volume is in its own frame order; compare per source instance)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    lut = np.zeros(4, dtype=np.uint8)
    lut[1:] = list(BRATS_SEGMENTS)
    np.testing.assert_array_equal(lut[numbers].transpose(2, 1, 0), labels)


def test_the_same_segmentation_gets_the_same_uids_and_another_gets_others(tmp_path: Path) -> None:
    """A rerun rewrites the SEG with the same UIDs (a PACS is not sent a duplicate); other labels differ."""
    files, volume = _series(tmp_path / "mr")
    labels = _toy_labels(tuple(volume.shape[1:]))
    first = pydicom.dcmread(write_seg(labels, files, tmp_path / "a.dcm"))
    again = pydicom.dcmread(write_seg(labels, files, tmp_path / "b.dcm"))
    labels[8, 1, 0] = 1
    other = pydicom.dcmread(write_seg(labels, files, tmp_path / "c.dcm"))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert other.SOPInstanceUID != first.SOPInstanceUID and other.SeriesInstanceUID != first.SeriesInstanceUID
