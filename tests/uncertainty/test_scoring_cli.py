"""Scoring folders: discovery, validation errors, outputs, the CLI and the reference cases."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from qubrats_factory import make_case, write_nifti, write_submission, write_truth
from typer.testing import CliRunner

from medimg.cli import app
from uncertainty.scoring import CURVE_COLUMNS, SCORE_COLUMNS, score_submission

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "qubrats-reference"
runner = CliRunner()


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


@pytest.fixture()
def challenge(tmp_path: Path) -> tuple[Path, Path, dict]:
    """Three good cases: submission flat, truth in BraTS per-case folders."""
    rng = np.random.default_rng(0)
    cases = {f"BraTS20_Validation_{i:03d}": make_case(rng) for i in range(3)}
    for case_id, case in cases.items():
        write_submission(tmp_path / "sub", case_id, case)
        write_truth(tmp_path / "truth", case_id, case, layout="brats")
    return tmp_path / "sub", tmp_path / "truth", cases


def test_score_folder_outputs(challenge, tmp_path: Path) -> None:
    sub, truth, cases = challenge
    out = tmp_path / "o" / "scores.csv"
    result = runner.invoke(
        app,
        [
            "uncertainty",
            "score",
            str(sub),
            "--truth",
            str(truth),
            "-o",
            str(out),
            "--curves",
            str(tmp_path / "o" / "curves.csv"),
            "--report",
            str(tmp_path / "o" / "report.html"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert tuple(rows[0]) == SCORE_COLUMNS and len(rows) == 9
    assert tuple(_rows(tmp_path / "o" / "curves.csv")[0]) == CURVE_COLUMNS
    assert _rows(tmp_path / "o" / "errors.csv") == []
    assert "mean score" in result.output and "WT" in result.output
    html = (tmp_path / "o" / "report.html").read_text()
    assert html.count("data:image/png;base64") == 2 and "BraTS20_Validation_001" in html
    assert not [p for p in (tmp_path / "o").iterdir() if ".tmp" in p.name]


def test_parallel_and_serial_agree(challenge) -> None:
    sub, truth, _ = challenge
    a = score_submission(sub, truth, workers=1)
    b = score_submission(sub, truth, workers=2)
    assert [c.case_id for c in a.cases] == [c.case_id for c in b.cases]
    assert [r.score for c in a.cases for r in c.regions] == [r.score for c in b.cases for r in c.regions]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_unc", "missing file(s): {id}_unc_core.nii.gz"),
        ("shape", "shape (12, 10, 7) differs from the truth's"),
        ("affine", "affine differs from the truth's"),
        ("nan", "NaN value(s) in the uncertainty map"),
        ("range", "uncertainty values outside [0, 100]"),
        ("labels", "labels other than 0/1/2/4: 3"),
        ("truth_labels", "labels other than 0/1/2/4: 5"),
    ],
)
def test_each_validation_error_names_case_and_file(challenge, tmp_path: Path, damage: str, message: str) -> None:
    sub, truth, cases = challenge
    bad_id = "BraTS20_Validation_001"
    case = cases[bad_id]
    if damage == "missing_unc":
        (sub / f"{bad_id}_unc_core.nii.gz").unlink()
        bad_file = sub / f"{bad_id}_unc_core.nii.gz"
    elif damage == "shape":
        bad_file = write_nifti(sub / f"{bad_id}_unc_whole.nii.gz", case["maps"]["WT"][:, :, :-1])
    elif damage == "affine":
        bad_file = write_nifti(sub / f"{bad_id}.nii.gz", case["prediction"], np.diag([1.0, 1.0, 2.0, 1.0]))
    elif damage == "nan":
        bad = case["maps"]["ET"].astype(np.float32)
        bad[0, 0, 0] = np.nan
        bad_file = write_nifti(sub / f"{bad_id}_unc_enhance.nii.gz", bad)
    elif damage == "range":
        bad_file = write_nifti(sub / f"{bad_id}_unc_enhance.nii.gz", case["maps"]["ET"].astype(np.int16) + 50)
    elif damage == "labels":
        pred = case["prediction"].copy()
        pred[0, 0, 0] = 3
        bad_file = write_nifti(sub / f"{bad_id}.nii.gz", pred)
    else:
        seg = case["truth"].copy()
        seg[1, 1, 1] = 5
        bad_file = write_nifti(truth / bad_id / f"{bad_id}_seg.nii.gz", seg)
    out = tmp_path / "o" / "scores.csv"
    result = runner.invoke(app, ["uncertainty", "score", str(sub), "--truth", str(truth), "-o", str(out), "-q"])
    assert result.exit_code == 1
    errors = _rows(out.with_name("errors.csv"))
    assert len(errors) == 1
    assert errors[0]["case_id"] == bad_id and errors[0]["file"] == str(bad_file)
    assert message.format(id=bad_id) in errors[0]["error"]
    assert bad_id in result.output and message.format(id=bad_id) in result.output
    scored = {row["case_id"] for row in _rows(out)}
    assert scored == set(cases) - {bad_id}  # the others are still scored


def test_unknown_duplicate_and_missing_cases(challenge, tmp_path: Path) -> None:
    sub, truth, cases = challenge
    extra = make_case(np.random.default_rng(9))
    write_submission(sub, "NotInTruth", extra)
    first = next(iter(cases))
    write_nifti(sub / f"{first}.nii", cases[first]["prediction"])  # duplicate of the .nii.gz
    last = sorted(cases)[-1]
    for path in sub.glob(f"{last}*"):
        path.unlink()
    result = score_submission(sub, truth)
    errors = {(e.case_id, str(e).split(":")[0]) for e in result.errors}
    assert ("NotInTruth", "unknown case ID") in errors
    assert (first, "duplicate case ID 'BraTS20_Validation_000'") in errors
    assert (last, "no submission for this case") in errors
    assert [c.case_id for c in result.cases] == sorted(set(cases) - {first, last})


def test_empty_submission_folder(tmp_path: Path, challenge) -> None:
    _, truth, _ = challenge
    (tmp_path / "empty").mkdir()
    result = score_submission(tmp_path / "empty", truth)
    assert not result.cases and "empty submission" in str(result.errors[0])


def test_brain_mask_sources(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    case = make_case(rng)
    write_submission(tmp_path / "sub", "A", case)
    write_submission(tmp_path / "sub", "B", case)
    write_truth(tmp_path / "truth", "A", case, mask="t1")
    write_truth(tmp_path / "truth", "B", case, mask="none")
    result = score_submission(tmp_path / "sub", tmp_path / "truth")
    assert [c.case_id for c in result.cases] == ["A"]
    assert result.brain_mask_sources["A"] == "A_t1.nii.gz > 0"
    assert "no brain mask" in str(result.errors[0]) and result.errors[0].case_id == "B"
    whole = score_submission(tmp_path / "sub", tmp_path / "truth", brain_mask="none")
    assert [c.case_id for c in whole.cases] == ["A", "B"] and whole.ok
    # the T1 mask gives the same score as the brain mask it was made from
    write_truth(tmp_path / "truth2", "A", case, mask="brainmask")
    (tmp_path / "sub2").mkdir()
    write_submission(tmp_path / "sub2", "A", case)
    masked = score_submission(tmp_path / "sub2", tmp_path / "truth2")
    assert masked.cases[0]["WT"].score == result.cases[0]["WT"].score


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared QU-BraTS reference cases not present")
def test_cli_on_the_reference_cases(tmp_path: Path) -> None:
    cases = REFERENCE / "cases"
    out = tmp_path / "scores.csv"
    result = runner.invoke(
        app,
        [
            "uncertainty",
            "score",
            str(cases),
            "--truth",
            str(cases),
            "-o",
            str(out),
            "--curves",
            str(tmp_path / "curves.csv"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    got, expected = _rows(out), _rows(REFERENCE / "expected_scores.csv")
    assert [(r["case_id"], r["region"]) for r in got] == [(r["case_id"], r["region"]) for r in expected]
    for a, b in zip(got, expected, strict=True):
        for key in SCORE_COLUMNS[2:]:
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6)
    got_curves, expected_curves = _rows(tmp_path / "curves.csv"), _rows(REFERENCE / "expected_curves.csv")
    assert list(got_curves[0]) == list(expected_curves[0])
    for a, b in zip(got_curves, expected_curves, strict=True):
        assert a["case_id"] == b["case_id"]
        for key in CURVE_COLUMNS[1:]:
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6)
