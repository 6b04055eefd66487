"""Hostile or broken inputs are refused before compute (issue 17): NaN values, huge declared sizes,
YAML alias bombs, colour and blank radiographs, leftover temporary files in a submission."""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from medimg.cli import app
from medimg.dicom import load_instance
from medimg.limits import InputLimitError, NonFiniteError

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_radiograph(path: Path, pixels: np.ndarray, *, patient: str = "P1", extra: dict | None = None) -> Path:
    """A frontal DX image: uint16 grey, float32 grey (Float Pixel Data) or uint8 RGB (rows, cols, 3)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName = patient, f"{patient}^Test"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Modality, ds.ViewPosition, ds.SeriesDescription = "DX", "PA", "CHEST PA"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.PixelSpacing = [0.5, 0.5]
    if pixels.ndim == 3:  # RGB
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.astype(np.uint8).tobytes()
    elif pixels.dtype.kind == "f":  # Float Pixel Data (7FE0,0008): can carry NaN
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = 32
        ds.FloatPixelData = pixels.astype(np.float32).tobytes()
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _chest(seed: int = 0, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(100, 3000, shape)


def _run(pipeline: str, folder: Path, out: Path, weights: Path):
    return runner.invoke(app, ["run", pipeline, str(folder), "-o", str(out), "--weights", str(weights), "-q"])


# --- NaN / inf ------------------------------------------------------------------------------


def test_nan_in_a_nifti_flair_is_an_error_not_an_empty_segmentation(tmp_path: Path) -> None:
    data = tmp_path / "nifti"
    shutil.copytree(ROOT / "sample_data" / "brain" / "nifti", data)
    case = next(p for p in data.iterdir() if p.is_dir())
    flair = case / f"{case.name}_flair.nii.gz"
    image = nib.load(flair)
    values = np.asarray(image.get_fdata(dtype=np.float32))
    values[10, 10, 10:14] = np.nan
    nib.save(nib.Nifti1Image(values, image.affine), flair)
    out = tmp_path / "out"
    result = _run("brats", data, out, ROOT / "sample_data" / "weights" / "brats.pt")
    assert result.exit_code == 1, result.output
    assert not _rows(out / "results.csv")  # no 0.0 mL row
    reasons = [e["reason"] for e in _rows(out / "errors.csv") if e["kind"] == "error"]
    assert len(reasons) == 1 and "4 non-finite voxel values (NaN/inf)" in reasons[0], reasons
    assert flair.name in reasons[0]


def test_nan_patch_in_a_float_radiograph_is_an_error(tmp_path: Path, untrained_weights: dict[str, Path]) -> None:
    pixels = _chest().astype(np.float32)
    pixels[20:30, 20:30] = np.nan
    write_radiograph(tmp_path / "pacs" / "nan.dcm", pixels)
    with pytest.raises(NonFiniteError, match=r"100 non-finite pixel values \(NaN/inf\) in .*nan\.dcm"):
        load_instance(tmp_path / "pacs" / "nan.dcm")
    out = tmp_path / "out"
    result = _run("pneumonia", tmp_path / "pacs", out, untrained_weights["pneumonia"])
    assert result.exit_code == 1, result.output  # not p = nan classified "no_pneumonia"
    assert not _rows(out / "results.csv")
    errors = _rows(out / "errors.csv")
    assert len(errors) == 1 and "100 non-finite pixel values" in errors[0]["reason"]


def test_rescale_to_inf_is_an_error(tmp_path: Path) -> None:
    path = write_radiograph(tmp_path / "inf.dcm", _chest(), extra={"RescaleSlope": "1e308", "RescaleIntercept": 0})
    with pytest.raises(NonFiniteError, match="non-finite pixel values"):
        load_instance(path)


# --- colour and blank radiographs -------------------------------------------------------------


def test_rgb_and_constant_radiographs_are_processed_with_a_note(
    tmp_path: Path, untrained_weights: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    rgb = np.repeat(_chest()[..., None] / 3000 * 255, 3, axis=-1)
    rgb[..., 0] = 255  # not grey: a colour screenshot of a radiograph
    write_radiograph(tmp_path / "pacs" / "rgb.dcm", rgb, patient="RGB")
    write_radiograph(tmp_path / "pacs" / "blank.dcm", np.zeros((64, 64)), patient="BLANK")
    write_radiograph(tmp_path / "pacs" / "normal.dcm", _chest(1), patient="OK")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="medimg.dicom.volume"):
        result = _run("pneumonia", tmp_path / "pacs", out, untrained_weights["pneumonia"])
    assert result.exit_code == 0, result.output
    rows = {r["PatientID"]: r for r in _rows(out / "results.csv")}
    assert set(rows) == {"RGB", "BLANK", "OK"}
    assert rows["BLANK"]["warning"] == "constant image"
    assert rows["OK"]["warning"] == "" and rows["RGB"]["warning"] == ""
    assert any("rgb.dcm: colour image converted to grey" in m for m in caplog.messages), caplog.messages
    image = load_instance(tmp_path / "pacs" / "rgb.dcm", grey=True)
    assert image.shape == (1, 64, 64) and image.meta["converted_to_grey"]
    assert load_instance(tmp_path / "pacs" / "rgb.dcm").shape == (3, 64, 64)  # colour kept unless asked


# --- sizes declared in headers -----------------------------------------------------------------

_REFUSE_HUGE_DICOM = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))
from medimg.dicom import load_instance
from medimg.limits import InputLimitError
start = time.perf_counter()
try:
    load_instance(sys.argv[1])
except InputLimitError as exc:
    print("REFUSED", round(time.perf_counter() - start, 3), exc)
"""


def test_a_dicom_declaring_12000_by_12000_is_refused_from_its_header(tmp_path: Path) -> None:
    from io import BytesIO

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    jpeg = BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(jpeg, format="JPEG")
    path = write_radiograph(tmp_path / "huge.dcm", np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows = ds.Columns = 12000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    assert path.stat().st_size < 10_000
    start = time.perf_counter()
    with pytest.raises(InputLimitError, match=r"huge\.dcm: declared image size 12000 x 12000 = 144,000,000"):
        load_instance(path)
    assert time.perf_counter() - start < 5.0
    # In a process limited to 2 GiB of address space: refused, never a MemoryError.
    done = subprocess.run(
        [sys.executable, "-c", _REFUSE_HUGE_DICOM, str(path)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0 and done.stdout.startswith("REFUSED"), done.stdout + done.stderr


def test_the_pixel_limit_can_be_changed_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_radiograph(tmp_path / "x.dcm", _chest())
    monkeypatch.setenv("MEDIMG_MAX_PIXELS", "1000")
    with pytest.raises(InputLimitError, match="64 x 64 = 4,096 values exceeds the limit of 1,000 .MEDIMG_MAX_PIXELS"):
        load_instance(path)
    monkeypatch.delenv("MEDIMG_MAX_PIXELS")
    assert load_instance(path).shape == (1, 64, 64)


def _huge_nifti(path: Path) -> Path:
    """A ~1 KB .nii.gz whose header declares 2048^3 float32 values (32 GiB)."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\x00" * 4 + b"\x00" * 64))
    return path


def test_qubrats_scorer_refuses_a_nifti_header_claiming_gigabytes(tmp_path: Path) -> None:
    from qubrats_factory import make_case, write_submission, write_truth

    from uncertainty.scoring import score_submission

    case = make_case(np.random.default_rng(0))
    write_submission(tmp_path / "sub", "BraTS20_Validation_001", case)
    write_truth(tmp_path / "truth", "BraTS20_Validation_001", case)
    target = next((tmp_path / "sub").glob("*_unc_whole.nii.gz"))
    _huge_nifti(target)
    assert target.stat().st_size < 2000
    start = time.perf_counter()
    result = score_submission(tmp_path / "sub", tmp_path / "truth", workers=1)
    assert time.perf_counter() - start < 10
    assert not result.cases
    messages = [str(e) for e in result.errors]
    assert len(messages) == 1 and "2048 x 2048 x 2048 = 8,589,934,592 values exceeds the limit" in messages[0]
    assert target.name in messages[0]


def test_brats_loader_refuses_a_nifti_header_claiming_gigabytes(tmp_path: Path) -> None:
    from pipelines.brats import CaseInputError, load_case

    data = tmp_path / "nifti"
    shutil.copytree(ROOT / "sample_data" / "brain" / "nifti", data)
    case = next(p for p in data.iterdir() if p.is_dir())
    sources = {s: case / f"{case.name}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}
    _huge_nifti(sources["t2"])
    with pytest.raises(CaseInputError, match="exceeds the limit"):
        load_case(case.name, sources)


# --- YAML rules -------------------------------------------------------------------------------

_BOMB = """name: bomb
level: instance
selections:
  - name: s
    conditions:
      A: &a {any: [{equals: X}, {equals: X}, {equals: X}, {equals: X}, {equals: X}, {equals: X}]}
      B: &b {any: [*a, *a, *a, *a, *a, *a, *a, *a, *a]}
      C: &c {any: [*b, *b, *b, *b, *b, *b, *b, *b, *b]}
      D: &d {any: [*c, *c, *c, *c, *c, *c, *c, *c, *c]}
      E: &e {any: [*d, *d, *d, *d, *d, *d, *d, *d, *d]}
      F: &f {any: [*e, *e, *e, *e, *e, *e, *e, *e, *e]}
      G: &g {any: [*f, *f, *f, *f, *f, *f, *f, *f, *f]}
      H: &h {any: [*g, *g, *g, *g, *g, *g, *g, *g, *g]}
"""

_LOAD_RULES = """
import sys, time
from medimg.dicom.selection import RuleError, load_rules
start = time.perf_counter()
try:
    load_rules(sys.argv[1])
except RuleError as exc:
    print("REFUSED", round(time.perf_counter() - start, 3), exc)
"""


def test_a_yaml_alias_bomb_in_rules_is_refused_fast(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_BOMB)
    assert path.stat().st_size < 1000
    try:  # a subprocess, so that the old behaviour (minutes of expansion) fails instead of hanging
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_RULES, str(path)], capture_output=True, text=True, timeout=30, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the alias bomb was not refused within 30 s")
    assert done.stdout.startswith("REFUSED"), done.stdout + done.stderr
    assert "bomb.yaml" in done.stdout and "alias" in done.stdout
    assert float(done.stdout.split()[1]) < 2.0


def test_rules_files_over_the_size_limit_are_refused(tmp_path: Path) -> None:
    from medimg.dicom.selection import RuleError, load_rules

    path = tmp_path / "big.yaml"
    path.write_text("name: big\n" + "# padding\n" * 200_000)
    with pytest.raises(RuleError, match=r"big\.yaml: rules file of 2,000,010 bytes is over the limit"):
        load_rules(path)
    for name in ("chest_xray", "mammography", "brain_mr"):  # the bundled rules (mammography has aliases)
        assert load_rules(name).selections


# --- leftover temporary files ----------------------------------------------------------------


def test_scorer_ignores_leftover_temporary_files(tmp_path: Path) -> None:
    from qubrats_factory import make_case, write_nifti, write_submission, write_truth

    from uncertainty.scoring import score_submission
    from uncertainty.submission import find_submission

    case = make_case(np.random.default_rng(0))
    case_id = "BraTS20_Validation_001"
    write_submission(tmp_path / "sub", case_id, case)
    write_truth(tmp_path / "truth", case_id, case)
    # what a writer killed inside medimg.writers.atomic_path leaves behind (its naming scheme)
    for name in (f"{case_id}_unc_whole.nii.gz", f"{case_id}.nii.gz"):
        write_nifti(tmp_path / "sub" / f".{name}.abcd1234.tmp.nii.gz", case["prediction"])
    assert {p.name for p in find_submission(tmp_path / "sub").cases[case_id].files.values()} == {
        f"{case_id}.nii.gz",
        f"{case_id}_unc_whole.nii.gz",
        f"{case_id}_unc_core.nii.gz",
        f"{case_id}_unc_enhance.nii.gz",
    }
    assert set(find_submission(tmp_path / "sub").cases) == {case_id}
    result = score_submission(tmp_path / "sub", tmp_path / "truth", workers=1)
    assert not result.errors and [c.case_id for c in result.cases] == [case_id]


def test_max_pixels_option_refuses_every_image_over_it(
    tmp_path: Path, untrained_weights: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--max-pixels`` lowers the header-size limit for one run: each image over it is an error line."""
    from typer.testing import CliRunner

    from medimg.cli import app

    monkeypatch.setenv("MEDIMG_MAX_PIXELS", str(2**28))  # undone after the test, whatever the option sets
    sample = Path(__file__).resolve().parents[2] / "sample_data" / "cxr"
    weights = str(untrained_weights["pneumonia"])
    result = CliRunner().invoke(
        app,
        ["run", "pneumonia", str(sample), "-o", str(tmp_path / "o"), "--weights", weights, "--max-pixels", "100", "-q"],
    )
    assert result.exit_code == 1, result.output
    errors = (tmp_path / "o" / "errors.csv").read_text()
    assert "exceeds the limit of 100" in errors
    assert (tmp_path / "o" / "results.csv").read_text().count("\n") == 1  # the header only
