"""``medimg run`` on hostile inputs and output folders: every run finishes its bookkeeping (one bad
file, image or study is an error line, never a traceback), reruns are honest (other weights into
the same OUT are refused unless --overwrite), one run at a time per OUT, no stale temporaries."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from medimg.cli import app
from pipelines.pneumonia import PneumoniaPipeline
from pipelines.run_state import describe_error

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
WEIGHTS = SAMPLE / "weights"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def cxr(tmp_path: Path) -> Path:
    folder = tmp_path / "pacs"
    shutil.copytree(SAMPLE / "cxr" / "stage_2_train_images", folder)
    return folder


def _run(folder: Path, out: Path, *extra: str, weights: str = "pneumonia.pt"):
    args = ["run", "pneumonia", str(folder), "-o", str(out), "--weights", str(WEIGHTS / weights), "-q", *extra]
    return runner.invoke(app, args)


def _assert_bookkeeping(out: Path, n_results: int) -> list[dict]:
    for name in ("results.csv", "errors.csv", "report.html", "run.json"):
        assert (out / name).is_file(), name
    assert len(_rows(out / "results.csv")) == n_results
    errors = _rows(out / "errors.csv")
    assert all("object at 0x" not in e["reason"] for e in errors), errors
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    return errors


def test_describe_error_unwraps_monai_and_drops_reprs() -> None:
    try:
        try:
            raise ValueError("pixel data has 10 bytes, 4 096 expected")
        except ValueError as exc:
            raise RuntimeError("applying transform <monai.transforms.Compose object at 0x7f00aa>") from exc
    except RuntimeError as wrapped:
        assert describe_error(wrapped) == "pixel data has 10 bytes, 4 096 expected"
    assert describe_error(KeyError("PixelData")) == "KeyError: 'PixelData'"
    assert describe_error(ValueError("a\x00b\nc" + "x" * 10_000), limit=20) == "a b cxxxxxxxxxxxxxx…"


def _variant(source: Path, target: Path, suffix: str, **changes: object) -> None:
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.SOPInstanceUID + suffix
    ds.StudyInstanceUID = ds.StudyInstanceUID + suffix
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(target)


@pytest.mark.filterwarnings("ignore:The value length")
def test_undecodable_rgb_and_oversized_headers_are_error_lines(
    cxr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    import medimg.dicom.transforms as dicom_transforms

    files = sorted(cxr.glob("*.dcm"))
    _variant(files[0], cxr / "undecodable.dcm", ".9", PatientID="undecodable")
    rows, cols = pydicom.dcmread(files[0]).Rows, pydicom.dcmread(files[0]).Columns
    rgb = {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0, "BitsAllocated": 8}
    rgb.update(BitsStored=8, HighBit=7, PixelRepresentation=0, PixelData=np.zeros((rows, cols, 3), "u1").tobytes())
    _variant(files[0], cxr / "rgb.dcm", ".8", **rgb)  # an RGB chest radiograph
    _variant(files[0], cxr / "huge.dcm", ".7" + "3" * 10_000, PatientID="P" * 300 + "\x00")
    load = dicom_transforms.load_instance

    def failing_load(path, *args, **kwargs):  # decoding fails inside the MONAI transforms
        if Path(path).name == "undecodable.dcm":
            raise ValueError("JPEG stream ends before the last scan")
        return load(path, *args, **kwargs)

    monkeypatch.setattr(dicom_transforms, "load_instance", failing_load)
    out = tmp_path / "out"
    result = _run(cxr, out, "--batch-size", "16")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    done = {Path(r["source_file"]).name for r in _rows(out / "results.csv")}
    errors = _assert_bookkeeping(out, len(done))
    assert {f.name for f in files} <= done
    failed = {Path(e["path"]).name: e["reason"] for e in errors if e["kind"] == "error"}
    assert "JPEG stream ends before the last scan" in failed["undecodable.dcm"], failed
    assert "applying transform" not in failed["undecodable.dcm"]
    assert "rgb.dcm" in done or "rgb.dcm" in failed
    assert "huge.dcm" in failed or "huge.dcm" in done


def test_a_step_that_raises_for_one_image_is_an_error_line(
    cxr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted(cxr.glob("*.dcm"))
    victims = {str(files[0]), str(files[1])}
    write = PneumoniaPipeline.write_image_outputs
    postprocess = PneumoniaPipeline.postprocess

    def failing_write(self, study_dir, result):  # e.g. an unsafe output path refused by a writer
        if result.row.get("source_file") == str(files[0]):
            raise ValueError("refusing to write outside the output folder")
        return write(self, study_dir, result)

    def failing_postprocess(self, images, prob, extras, items, meta):  # e.g. non-finite pixels
        if any(item["source_file"] == str(files[1]) for item in items):
            raise ValueError("image has non-finite pixels")
        return postprocess(self, images, prob, extras, items, meta)

    monkeypatch.setattr(PneumoniaPipeline, "write_image_outputs", failing_write)
    monkeypatch.setattr(PneumoniaPipeline, "postprocess", failing_postprocess)
    out = tmp_path / "out"
    result = _run(cxr, out, "--batch-size", "4")
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, ValueError)
    errors = _assert_bookkeeping(out, len(files) - 2)
    reasons = {e["path"]: e["reason"] for e in errors if e["kind"] == "error"}
    assert set(reasons) == victims, errors
    assert "refusing to write outside the output folder" in reasons[str(files[0])]
    assert "non-finite pixels" in reasons[str(files[1])]


def test_rerun_with_other_weights_is_refused_unless_overwrite(cxr: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(cxr, out).exit_code == 0
    first = (out / "results.csv").read_text()
    again = _run(cxr, out)  # same settings: resumes
    assert again.exit_code == 0 and json.loads((out / "run.json").read_text())["counts"]["studies_resumed"] == 8

    other = _run(cxr, out, weights="pneumonia_replica2.pt")
    assert other.exit_code == 2, other.output
    assert "weights_sha256" in other.output and "--overwrite" in other.output
    assert (out / "results.csv").read_text() == first  # nothing touched

    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    run = json.loads((out / "run.json").read_text())
    run["outputs"].append("../outside.txt")  # a hostile run.json never makes --overwrite reach outside OUT
    (out / "run.json").write_text(json.dumps(run))
    stale = next((out / "studies").iterdir()) / "stale.png"
    stale.write_bytes(b"old")
    redo = _run(cxr, out, "--overwrite", weights="pneumonia_replica2.pt")
    assert redo.exit_code == 0, redo.output
    assert outside.read_text() == "keep" and not stale.exists()
    run = json.loads((out / "run.json").read_text())
    assert run["result_settings"]["weights_sha256"] == run["weights"]["sha256"]
    assert run["counts"]["images_processed"] == 8 and run["counts"]["studies_resumed"] == 0


def test_a_held_lock_refuses_a_second_run_and_a_stale_one_does_not(cxr: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".medimg.lock"
    lock.write_text("999999\n")  # left by a killed run: not locked any more
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run is writing here
        held = _run(cxr, out)
        assert held.exit_code == 2, held.output
        assert ".medimg.lock" in held.output.replace("\n", "")
        assert not (out / "results.csv").exists()
    finally:
        os.close(fd)
    free = _run(cxr, out)
    assert free.exit_code == 0, free.output
    assert not lock.exists()  # released at the end


def test_stale_temporaries_are_removed(cxr: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "studies" / "x").mkdir(parents=True)
    stale = [out / ".results.csv.ab12cd_3.tmp.csv", out / "studies" / "x" / ".a_overlay.png.zz99zz99.tmp.png"]
    for path in stale:
        path.write_text("half written")
    mine = out / "notes.tmp"
    mine.write_text("not ours")
    assert _run(cxr, out).exit_code == 0
    assert not any(p.exists() for p in stale) and mine.read_text() == "not ours"


def test_output_that_is_a_file_is_a_clean_error(cxr: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("mine")
    result = _run(cxr, target)
    assert result.exit_code == 2, result.output
    assert "is a file" in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert target.read_text() == "mine"


def test_rerun_rule_names_uncertainty_and_ensemble_differences(tmp_path: Path) -> None:
    from pipelines import get_pipeline
    from pipelines.run_state import RunRefused, check_rerun, result_settings

    task = get_pipeline("brats")
    before = result_settings(task, "a" * 64)
    (tmp_path / "run.json").write_text(json.dumps({"pipeline": "brats", "result_settings": before}))
    check_rerun(tmp_path, before)  # same settings: a resume
    check_rerun(tmp_path, {**before})
    task.configure(uncertainty="tta", samples=4)
    with pytest.raises(RunRefused, match="uncertainty: None before, 'tta' now; samples: None before, 4 now"):
        check_rerun(tmp_path, result_settings(task, "a" * 64))
    task.configure(uncertainty="ensemble", ensemble_weights=[str(WEIGHTS / "brats.pt")])
    with pytest.raises(RunRefused, match="ensemble_weights_sha256"):
        check_rerun(tmp_path, result_settings(task, "a" * 64))
