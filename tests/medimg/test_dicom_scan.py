"""Folder scan: grouping, quarantine reasons, every file exactly once, bad input never raises."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import PYDICOM_TEST_FILES, write_series

from medimg.dicom import scan_folder
from medimg.dicom.header import read_instance_header


def _all_paths(result) -> list[str]:
    paths = [f for _, s in result.iter_series() for f in s.files]
    return paths + [q.path for q in result.quarantine]


def _regular_files(root: Path) -> set[str]:
    out = set()
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.add(path)
    return out


def test_groups_patient_study_series(tmp_path: Path) -> None:
    paths_a, _ = write_series(tmp_path / "a", n=4, description="T1")
    study = pydicom_study(paths_a[0])
    write_series(tmp_path / "b", n=3, description="FLAIR", study_uid=study)
    write_series(tmp_path / "c", n=2, description="T2", patient_id="P2")
    result = scan_folder(tmp_path)
    assert sorted(result.patients) == ["P1", "P2"]
    p1 = result.patients["P1"]
    assert len(p1) == 1 and len(p1[0].series) == 2
    assert sorted(s.SeriesDescription for s in p1[0].series) == ["FLAIR", "T1"]
    t1 = next(s for s in p1[0].series if s.SeriesDescription == "T1")
    assert t1.orientation == "axial" and t1.slice_spacing == pytest.approx(2.0)
    assert t1.image_size == (8, 10) and t1.decodable and t1.problems == []
    assert not result.quarantine


def pydicom_study(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"skip": [3]}, "missing slices"),
        ({"duplicate": 2}, "duplicate slice positions"),
    ],
)
def test_series_problems_are_reported(tmp_path: Path, kwargs: dict, problem: str) -> None:
    write_series(tmp_path, n=6, **kwargs)
    result = scan_folder(tmp_path)
    (_, series), *_ = list(result.iter_series())
    assert any(problem in p for p in series.problems), series.problems


def test_mixed_sizes_reported(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "s", n=3)
    study = pydicom_study(paths[0])
    import pydicom

    series_uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    from dicom_factory import write_image

    write_image(
        tmp_path / "s" / "odd", np.zeros((4, 4)), study_uid=study, series_uid=series_uid, position=(-10, 20, 36)
    )
    result = scan_folder(tmp_path)
    (_, series), *_ = list(result.iter_series())
    assert any("mixed image sizes" in p for p in series.problems)


def test_bad_inputs_are_quarantined_with_reasons(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path / "ok", n=3)
    data = Path(paths[0]).read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) - 50])
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "empty").write_bytes(b"")
    shutil.copy(PYDICOM_TEST_FILES / "rtplan.dcm", tmp_path / "plan")
    shutil.copy(PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR", tmp_path / "DICOMDIR")
    shutil.copy(paths[1], tmp_path / "copy_of_slice")  # same SOPInstanceUID
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "does-not-exist")
    os.mkfifo(tmp_path / "fifo")

    result = scan_folder(tmp_path)
    reasons = {Path(q.path).name: q.reason for q in result.quarantine}
    assert reasons["truncated.dcm"].startswith("truncated")
    assert reasons["notes.txt"].startswith("not DICOM")
    assert reasons["empty"].startswith("not DICOM")
    assert reasons["plan"].startswith("no pixel data")
    assert reasons["DICOMDIR"].startswith("DICOMDIR")
    assert reasons["loop"].startswith("directory symlink loop")
    assert reasons["dangling"].startswith("broken symbolic link")
    assert reasons["fifo"].startswith("not a regular file")
    dup_reason = reasons.get("copy_of_slice") or reasons.get(Path(paths[1]).name)
    assert dup_reason and dup_reason.startswith("duplicate instance")
    # every regular file exactly once
    listed = _all_paths(result)
    assert len(listed) == len(set(listed))
    assert _regular_files(tmp_path) <= set(listed)


def test_unreadable_file_is_quarantined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, _ = write_series(tmp_path, n=1)
    real_open = open

    def deny(path, *args, **kwargs):  # root ignores chmod, so simulate EACCES
        if str(path) == str(paths[0]):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    entry = read_instance_header(str(paths[0]))
    assert entry.reason == "unreadable: Permission denied"


def test_empty_folder(tmp_path: Path) -> None:
    result = scan_folder(tmp_path)
    assert result.studies == [] and result.quarantine == []


def test_not_a_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        scan_folder(tmp_path / "missing")


def test_parallel_scan_matches_serial(tmp_path: Path) -> None:
    for i in range(5):
        write_series(tmp_path / f"s{i}", n=90, shape=(4, 4), patient_id=f"P{i}")
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 300)
    serial = scan_folder(tmp_path, workers=1)
    parallel = scan_folder(tmp_path, workers=2)
    assert serial.to_dict() == parallel.to_dict()
    assert len(_all_paths(parallel)) == 451


def test_pydicom_test_files_all_indexed_or_quarantined(tmp_path: Path) -> None:
    root = tmp_path / "test_files"
    shutil.copytree(PYDICOM_TEST_FILES, root)
    result = scan_folder(root)
    listed = _all_paths(result)
    assert len(listed) == len(set(listed))
    assert set(listed) == _regular_files(root)
    assert all(q.reason for q in result.quarantine)
    reasons = {Path(q.path).name: q.reason for q in result.quarantine}
    assert reasons["MR_truncated.dcm"].startswith("truncated")
    assert reasons["rtstruct.dcm"].startswith("no pixel data")
    assert reasons["README.txt"].startswith("not DICOM")
    assert reasons["DICOMDIR-bigEnd"].startswith("DICOMDIR")
    # the files that are indexed: a CT with geometry, and multi-frame objects
    by_name = {Path(s.files[0]).name: s for _, s in result.iter_series()}
    assert by_name["CT_small.dcm"].orientation == "axial"
    assert by_name["rtdose.dcm"].num_frames == 15 and by_name["rtdose.dcm"].slice_spacing == pytest.approx(5.0)
    assert by_name["examples_ybr_color.dcm"].num_frames == 30
