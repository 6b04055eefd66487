"""``medimg run`` on DICOM inputs writes its results as DICOM objects (SR, SC; the brats SEG listed too),
lists them in run.json ``dicom_results``, and a rerun neither duplicates nor loses them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from checkpoints import untrained_brats_checkpoint
from PIL import Image
from typer.testing import CliRunner

from medimg.cli import app
from medimg.dicom.results import read_report
from pipelines.brats import BratsPipeline
from pipelines.density import DensityPipeline
from pipelines.dicom_outputs import dicom_results
from pipelines.runner import run_pipeline

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
KEYS = {"path", "kind", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
SR, SC = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
PROBABILITY = ("DCM", "122157")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _objects(out: Path) -> list[Path]:
    return sorted((out / "dicom").rglob("*.dcm"))


@pytest.fixture(scope="module")
def cxr_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pneumonia run over the sample CXR studies with the demo weights (default)."""
    out = tmp_path_factory.mktemp("cxr") / "out"
    result = runner.invoke(app, ["run", "pneumonia", str(SAMPLE / "cxr"), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


def test_pneumonia_run_lists_an_sr_and_an_sc_per_radiograph(cxr_run: Path) -> None:
    run = json.loads((cxr_run / "run.json").read_text())
    rows = _rows(cxr_run / "results.csv")
    listed = run["dicom_results"]
    assert len(rows) == 8 and sorted(e["kind"] for e in listed) == ["sc"] * 8 + ["sr"] * 8
    assert all(set(e) == KEYS for e in listed)
    assert sorted(cxr_run / e["path"] for e in listed) == _objects(cxr_run)
    threshold = run["weights"]["training"]["operating_threshold"]
    by_source = {r["SOPInstanceUID"]: r for r in rows}
    boxes = {}
    for line in _rows(cxr_run / "submission.csv"):
        numbers = [float(v) for v in line["PredictionString"].split()]
        boxes[line["patientId"]] = [numbers[k : k + 5] for k in range(0, len(numbers), 5)]
    assert any(boxes.values())  # the demo weights find boxes on the sample
    for entry in (e for e in listed if e["kind"] == "sr"):
        sr, groups, notes = read_report(cxr_run / entry["path"])
        assert sr.SOPInstanceUID == entry["SOPInstanceUID"] and sr.SOPClassUID == SR
        assert entry["path"].startswith(f"dicom/{sr.StudyInstanceUID}/sr-")
        (source,) = groups[0].source_images
        row = by_source[source]
        assert sr.StudyInstanceUID == row["StudyInstanceUID"] == entry["StudyInstanceUID"]
        assert sr.PatientID == row["PatientID"]
        assert groups[0].measurements[PROBABILITY][0] == pytest.approx(float(row["probability"]), abs=1e-14)
        decision = ("DCM", "121053") if float(row["probability"]) >= threshold else ("DCM", "121054")
        assert groups[0].evaluations[("SCT", "233604007")] == decision
        # each box of submission.csv ("confidence x y width height" groups) is a region around it
        found = [[r.measurements[PROBABILITY][0], *r.region[0], *(r.region[2] - r.region[0])] for r in groups[1:]]
        assert len(found) == int(row["n_boxes"]) == len(boxes[row["PatientID"]])
        np.testing.assert_allclose(np.reshape(found, (-1, 5)), np.reshape(boxes[row["PatientID"]], (-1, 5)), atol=5e-5)
        assert "NOT FOR CLINICAL USE" in sr.SeriesDescription and any("NOT FOR CLINICAL USE" in n for n in notes)
    assert {e["SOPClassUID"] for e in listed if e["kind"] == "sc"} == {SC}


def test_a_rerun_resumes_without_duplicates_and_the_reader_agrees(cxr_run: Path) -> None:
    before = json.loads((cxr_run / "run.json").read_text())["dicom_results"]
    files = _objects(cxr_run)
    result = runner.invoke(app, ["run", "pneumonia", str(SAMPLE / "cxr"), "-o", str(cxr_run), "-q"])
    assert result.exit_code == 0, result.output
    after = json.loads((cxr_run / "run.json").read_text())
    assert after["counts"]["studies_resumed"] == 8
    assert sorted(map(json.dumps, after["dicom_results"])) == sorted(map(json.dumps, before))
    assert _objects(cxr_run) == files
    read = dicom_results(cxr_run)
    assert [{k: e[k] for k in KEYS} for e in read] == after["dicom_results"]
    assert all(Path(e["file"]).is_file() and Path(e["file"]).is_absolute() for e in read)


def test_a_rerun_without_dicom_results_still_lists_the_objects_it_resumes(cxr_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(cxr_run, out)
    result = runner.invoke(app, ["run", "pneumonia", str(SAMPLE / "cxr"), "-o", str(out), "-q", "--no-dicom-results"])
    assert result.exit_code == 0, result.output
    listed = json.loads((out / "run.json").read_text())["dicom_results"]
    assert listed == json.loads((cxr_run / "run.json").read_text())["dicom_results"] and len(listed) == 16


def test_overwrite_rewrites_the_same_uids(cxr_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(cxr_run, out)
    result = runner.invoke(app, ["run", "pneumonia", str(SAMPLE / "cxr"), "-o", str(out), "-q", "--overwrite"])
    assert result.exit_code == 0, result.output
    uids = {e["SOPInstanceUID"] for e in json.loads((out / "run.json").read_text())["dicom_results"]}
    assert uids == {e["SOPInstanceUID"] for e in json.loads((cxr_run / "run.json").read_text())["dicom_results"]}
    assert len(_objects(out)) == 16


def test_no_dicom_results_writes_none(untrained_weights: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", "pneumonia", str(SAMPLE / "cxr"), "-o", str(out), "-q", "--no-dicom-results"]
    result = runner.invoke(app, [*args, "--weights", str(untrained_weights["pneumonia"])])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["dicom_results"] == []
    assert not (out / "dicom").exists() and dicom_results(out) == []


def test_png_inputs_write_no_dicom_objects(untrained_weights: dict[str, Path], tmp_path: Path) -> None:
    pictures = tmp_path / "png"
    pictures.mkdir()
    Image.new("L", (64, 64), 100).save(pictures / "a.png")
    Image.radial_gradient("L").save(pictures / "b.png")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["run", "pneumonia", str(pictures), "-o", str(out), "-q", "--weights", str(untrained_weights["pneumonia"])]
    )
    assert result.exit_code == 0, result.output
    assert len(_rows(out / "results.csv")) == 2
    assert json.loads((out / "run.json").read_text())["dicom_results"] == [] and not (out / "dicom").exists()
    assert not any("DICOM" in e["reason"] for e in _rows(out / "errors.csv"))


def test_density_run_writes_one_sr_per_exam(untrained_weights: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_pipeline(
        DensityPipeline(), SAMPLE / "mammo" / "site_a", out, weights=untrained_weights["density"], write_report=False
    )
    assert not summary.failed
    exams = {e["StudyInstanceUID"]: e for e in _rows(out / "exams.csv")}
    listed = dicom_results(out)
    assert len(listed) == len(exams) >= 1 and {e["kind"] for e in listed} == {"sr"}
    rows = _rows(out / "results.csv")
    for entry in listed:
        sr, groups, notes = read_report(entry["file"])
        exam = exams[sr.StudyInstanceUID]
        by_label = {g.label: g for g in groups}
        codes = {"A": "129716005", "B": "129717001", "C": "129718006", "D": "129719003"}
        assert by_label["exam"].evaluations[("SCT", "129715009")] == ("SCT", codes[exam["exam_density"]])
        for side, name in (("L", "left breast"), ("R", "right breast")):
            if exam[f"{side}_density"]:
                assert by_label[name].evaluations[("SCT", "129715009")] == ("SCT", codes[exam[f"{side}_density"]])
        for row in (r for r in rows if r["StudyInstanceUID"] == sr.StudyInstanceUID):
            group = by_label[f"image {row['SOPInstanceUID']}"[:64]]
            assert group.source_images == [row["SOPInstanceUID"]]
            for c, code in codes.items():
                assert group.measurements[("SCT", code)][0] == pytest.approx(float(row[f"prob_{c}"]), abs=1e-14)
        # untrained test weights: no demo disclaimer
        assert "NOT FOR CLINICAL USE" not in sr.SeriesDescription


def test_brats_run_lists_the_seg_and_an_sr_of_its_volumes(tmp_path: Path) -> None:
    weights = untrained_brats_checkpoint(tmp_path / "brats.pt", tumour_bias=0.5, roi_size=(96, 96, 64))
    out = tmp_path / "out"
    summary = run_pipeline(BratsPipeline(), SAMPLE / "brain" / "dicom", out, weights=weights, write_report=False)
    assert not summary.failed
    (row,) = _rows(out / "results.csv")
    listed = {e["kind"]: e for e in dicom_results(out)}
    assert set(listed) == {"seg", "sr"}
    assert listed["seg"]["path"] == f"{summary.folders[row['StudyInstanceUID']]}/{row['seg_file']}"
    sr, groups, _ = read_report(listed["sr"]["file"])
    volumes = [g.measurements[("SCT", "118565006")] for g in groups]
    assert volumes == [(pytest.approx(float(row[f"{r}_ml"]), rel=1e-12, abs=1e-9), "mL") for r in ("WT", "TC", "ET")]
    assert all(g.source_images == [listed["seg"]["SOPInstanceUID"]] for g in groups)
    assert sr.StudyInstanceUID == listed["seg"]["StudyInstanceUID"] == row["StudyInstanceUID"]


def test_a_study_whose_objects_fail_is_an_error_and_is_retried(
    untrained_weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medimg.dicom.results.pneumonia_sr as module

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("no SR today")

    monkeypatch.setattr(module, "build_pneumonia_sr", broken)
    out = tmp_path / "out"
    args = [
        "run",
        "pneumonia",
        str(SAMPLE / "cxr"),
        "-o",
        str(out),
        "-q",
        "--weights",
        str(untrained_weights["pneumonia"]),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    errors = [e for e in _rows(out / "errors.csv") if e["kind"] == "error"]
    assert len(errors) == 8
    for error in errors:  # the reason names the study's source file
        assert error["reason"] == f"cannot write the DICOM results: {error['path']}: ValueError: no SR today"
    assert not list((out / "studies").glob("*/study.json"))
    monkeypatch.undo()
    assert runner.invoke(app, args).exit_code == 0
    assert len(dicom_results(out)) == 16


def test_the_reader_refuses_an_entry_outside_out(tmp_path: Path) -> None:
    entry = dict.fromkeys(KEYS, "x") | {"path": "../elsewhere.dcm"}
    (tmp_path / "run.json").write_text(json.dumps({"dicom_results": [entry]}))
    with pytest.raises(ValueError, match=r"dicom_results\[0\].*outside"):
        dicom_results(tmp_path)
    with pytest.raises(ValueError, match="cannot read"):
        dicom_results(tmp_path / "missing")
