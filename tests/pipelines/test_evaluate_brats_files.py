"""``medimg evaluate brats --predictions --truth``: the official sample outputs, and bad input."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from real_data import real_path
from typer.testing import CliRunner

from medimg.cli import app
from pipelines.brats_evaluation import case_id_from_name

runner = CliRunner()

# Tolerances of the acceptance test against the official summary, per column kind.
TOLERANCE = {"dsc": 1e-6, "f1": 1e-6, "hd95": 1e-3, "nsd": 1e-3}


def _tolerance(column: str) -> float:
    if "_tp_" in column or "_fp_" in column or "_fn_" in column:
        return 0.0  # instance counts: exactly
    return next(value for key, value in TOLERANCE.items() if f"_{key}_" in column)


def _number(text: str) -> float:
    return math.nan if text == "" else float(text)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def official_differences(ours: list[dict[str, str]], official: list[dict[str, str]]) -> dict[str, float]:
    """Largest |ours - official| per column kind; raises AssertionError on a mismatch of NaN or tolerance."""
    assert [row["case_id"] for row in ours] == ["00132-000", "00217-000", "00630-001", "01325-000", "mean", "std"]
    worst: dict[str, float] = {}
    for mine, theirs in zip(ours, official, strict=True):
        for column, text in theirs.items():
            if column == "subject_id":
                continue
            expected, got = _number(text), _number(mine[column])
            where = f"{theirs['subject_id']} {column}: ours {got}, official {expected}"
            assert math.isnan(expected) == math.isnan(got), where
            if not math.isnan(expected):
                assert abs(got - expected) <= _tolerance(column), where
                kind = column.rsplit("_", 1)[0]
                worst[kind] = max(worst.get(kind, 0.0), abs(got - expected))
    return worst


def test_official_sample_outputs_are_reproduced(tmp_path: Path) -> None:
    folder = real_path("brats-eval")
    official = _read_csv(folder / "sample_mets_summary.csv")
    start = time.perf_counter()
    result = runner.invoke(
        app,
        [
            "evaluate",
            "brats",
            "--predictions",
            str(folder / "pred"),
            "--truth",
            str(folder / "ref"),
            "-o",
            str(tmp_path),
        ],
    )
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    ours = _read_csv(tmp_path / "cases.csv")
    worst = official_differences(ours, official)
    print(f"max |ours - official| per column kind: {worst}; {seconds:.1f} s for 4 cases")
    assert _read_csv(tmp_path / "errors.csv") == []
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_cases"] == 4 and metrics["challenge"] == "mets"
    # the check can fail: a count off by one, or an HD95 off by 2e-3, is caught
    ours[0]["all_instance_fp_et"] = "2.0"
    with pytest.raises(AssertionError, match="all_instance_fp_et"):
        official_differences(ours, official)
    ours = _read_csv(tmp_path / "cases.csv")
    ours[2]["lesionwise_hd95_mean_wt"] = str(float(ours[2]["lesionwise_hd95_mean_wt"]) + 2e-3)
    with pytest.raises(AssertionError, match="lesionwise_hd95_mean_wt"):
        official_differences(ours, official)


def test_header_spacing_changes_only_anisotropic_cases(tmp_path: Path) -> None:
    folder = real_path("brats-eval")
    for name in ("00132-000.nii.gz", "BraTS-MET-00630-001.nii.gz"):
        (tmp_path / "pred").mkdir(exist_ok=True)
        (tmp_path / "pred" / name).symlink_to(folder / "pred" / name)
    args = ["evaluate", "brats", "--predictions", str(tmp_path / "pred"), "--truth", str(folder / "ref")]
    runner.invoke(app, [*args, "-o", str(tmp_path / "official")])
    runner.invoke(app, [*args, "-o", str(tmp_path / "header"), "--header-spacing"])
    official = _read_csv(tmp_path / "official" / "cases.csv")
    header = _read_csv(tmp_path / "header" / "cases.csv")
    # the two missing predictions are listed and scored as missing: 0, HD95 373
    assert [r["status"] for r in official[:4]] == ["ok", "missing prediction", "ok", "missing prediction"]
    assert official[1]["lesionwise_hd95_mean_et"] == "373.0" and official[1]["all_instance_tp_et"] == "0.0"
    assert official[0] == header[0]  # 1 mm isotropic
    assert official[2]["lesionwise_hd95_mean_et"] != header[2]["lesionwise_hd95_mean_et"]  # 0.86 x 0.86 x 1.5 mm


# --- bad input ------------------------------------------------------------------------------


def _write(path: Path, array: np.ndarray, zooms: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*zooms, 1.0])), path)
    return path


def _labels(shape: tuple[int, int, int] = (16, 16, 8), dtype: type = np.uint16) -> np.ndarray:
    array = np.zeros(shape, dtype=dtype)
    array[3:8, 3:8, 2:6] = 3
    array[9:12, 9:12, 2:5] = 2
    return array


def _invoke(tmp_path: Path, out: Path, *extra: str):
    files = ["--predictions", str(tmp_path / "pred"), "--truth", str(tmp_path / "ref")]
    return runner.invoke(app, ["evaluate", "brats", *files, "-o", str(out), *extra])


def _evaluate(tmp_path: Path, *extra: str) -> tuple[int, str, list[dict[str, str]], list[dict[str, str]]]:
    out = tmp_path / "out"
    result = _invoke(tmp_path, out, *extra)
    return result.exit_code, result.output, _read_csv(out / "cases.csv"), _read_csv(out / "errors.csv")


def test_bad_files_are_listed_and_the_others_scored(tmp_path: Path) -> None:
    _write(tmp_path / "ref" / "BraTS-MET-00001-000-seg.nii.gz", _labels())
    _write(tmp_path / "pred" / "00001-000.nii.gz", _labels(dtype=np.float32))  # integral floats: fine
    _write(tmp_path / "ref" / "BraTS-MET-00002-000-seg.nii.gz", _labels())
    _write(tmp_path / "pred" / "BraTS-MET-00002-000.nii.gz", _labels((16, 16, 9)))  # another grid
    _write(tmp_path / "ref" / "BraTS-MET-00003-000-seg.nii.gz", _labels())
    fractional = _labels(dtype=np.float32)
    fractional[0, 0, 0] = 0.5
    _write(tmp_path / "pred" / "SEG-00003-000.nii.gz", fractional)
    _write(tmp_path / "pred" / "BraTS-MET-00004-000.nii.gz", _labels())  # no truth
    _write(tmp_path / "pred" / "a-00005-000.nii.gz", _labels())  # two candidates for one case
    _write(tmp_path / "pred" / "b-00005-000.nii.gz", _labels())
    _write(tmp_path / "ref" / "BraTS-MET-00005-000-seg.nii.gz", _labels())
    _write(tmp_path / "pred" / "no-id.nii.gz", _labels())
    _write(tmp_path / "ref" / "BraTS-MET-00006-000-seg.nii.gz", _labels())
    _write(tmp_path / "pred" / "BraTS-MET-00006-000.nii.gz", _labels(), zooms=(2.0, 2.0, 2.0))  # same shape, other grid
    code, output, cases, errors = _evaluate(tmp_path, "--metrics", "legacy,lesionwise")
    assert code == 1, output
    ok = [row for row in cases if row["status"] == "ok"]
    assert [row["case_id"] for row in ok] == ["00001-000"]
    assert ok[0]["lesionwise_dsc_mean_et"] == "1.0" and ok[0]["legacy_dice_wt"] == "1.0"
    problems = {Path(e["file"]).name: e["problem"] for e in errors}
    grid = problems["BraTS-MET-00002-000.nii.gz"]
    assert "(16, 16, 9)" in grid and "(16, 16, 8)" in grid
    assert "whole numbers" in problems["SEG-00003-000.nii.gz"] and "0.5" in problems["SEG-00003-000.nii.gz"]
    assert "no truth file for case 00004-000" in problems["BraTS-MET-00004-000.nii.gz"]
    assert "2 prediction files for case 00005-000" in problems["a-00005-000.nii.gz"]
    assert "b-00005-000.nii.gz" in problems["a-00005-000.nii.gz"]
    assert "no BraTS case ID" in problems["no-id.nii.gz"]
    assert "affine differs" in problems["BraTS-MET-00006-000.nii.gz"]
    assert "no prediction for this truth" in problems["BraTS-MET-00005-000-seg.nii.gz"]
    assert "Traceback" not in output


def test_all_good_exits_zero_and_a_bad_metric_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "ref" / "BraTS-GLI-00001-000-seg.nii.gz", _labels())
    _write(tmp_path / "pred" / "BraTS-GLI-00001-000.nii.gz", _labels(dtype=np.int32))
    code, output, cases, errors = _evaluate(tmp_path, "--challenge", "gli2023")
    assert code == 0, output
    assert errors == [] and cases[0]["lesionwise_dsc_mean_tc"] == "1.0"
    assert _invoke(tmp_path, tmp_path / "x", "--metrics", "bogus").exit_code == 2


@pytest.mark.parametrize(
    ("name", "case_id"),
    [
        ("BraTS-MET-00132-000-seg.nii.gz", "00132-000"),
        ("00132-000.nii.gz", "00132-000"),
        ("SEG-00217-000.nii.gz", "00217-000"),
        ("BraTS-MET_01325-000.nii.gz", "01325-000"),
        ("site2024-00132-000.nii.gz", "00132-000"),  # a year beside the ID does not take its place
        ("BraTS2021_00495.nii.gz", "00495"),  # the official looser forms
        ("scan.nii.gz", None),
    ],
)
def test_case_id_from_name(name: str, case_id: str | None) -> None:
    assert case_id_from_name(name) == case_id


def test_model_route_adds_lesionwise_columns(tmp_path: Path) -> None:
    from checkpoints import untrained_brats_checkpoint

    from medimg.synth import generate_sample_data

    generate_sample_data(tmp_path, only=["brain"], count=1, seed=8)
    weights = untrained_brats_checkpoint(tmp_path / "w.pt", tumour_bias=0.5, spacing=(2.0, 2.0, 2.0))
    out = tmp_path / "out"
    args = ["evaluate", "brats", str(tmp_path / "brain" / "nifti"), "--weights", str(weights), "-o", str(out)]
    result = runner.invoke(app, [*args, "--metrics", "lesionwise", "--challenge", "gli2023"])
    assert result.exit_code == 0, result.output
    (row,) = _read_csv(out / "cases.csv")
    assert "dice_wt" not in row  # legacy not asked for
    assert {"all_instance_tp_wt", "lesionwise_dsc_mean_et", "lesionwise_hd95_mean_tc"} <= set(row)
    assert float(row["all_instance_tp_wt"]) + float(row["all_instance_fn_wt"]) >= 1  # the phantom has a tumour
    assert runner.invoke(app, [*args, "--metrics", "dice"]).exit_code == 2
