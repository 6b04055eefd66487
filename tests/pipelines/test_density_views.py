"""`medimg run density` on mammograms without laterality or view tags (CBIS-DDSM-style Secondary
Capture exports): selection, placement by table > tags > rule > pixels, per-breast exams."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medimg.cli import app
from medimg.dicom import load_rules, scan_folder, select
from medimg.synth import generate_sample_data
from medimg.synth.mammo import film_patient_id, generate_film_mammo, write_film_mammogram

runner = CliRunner()
RULE = "PatientID:_(?P<laterality>LEFT|RIGHT)_(?P<view>CC|MLO)$"
SIDES = {"LEFT": "L", "RIGHT": "R"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _truth(row: dict[str, str]) -> tuple[str, str]:
    """Side and view from the image's folder name (``Calc-Test_P_00000_LEFT_CC``)."""
    *_, side, view = ["", "", *Path(row["source_file"]).parent.name.split("_")]
    return SIDES.get(side, ""), view


def _weak_copy(source: Path, target: Path) -> None:
    """A copy of a film whose pixels are a centred disc (no chest wall) and whose name says nothing."""
    ds = pydicom.dcmread(source)
    rows, cols = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
    disc = ((rows - ds.Rows / 2) / (0.35 * ds.Rows)) ** 2 + ((cols - ds.Columns / 2) / (0.3 * ds.Columns)) ** 2 < 1
    ds.PixelData = (disc * 3000 + 50).astype(np.uint16).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["weak"])
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["weak-series"])
    ds.PatientID = "Calc-Test_P_00000_UNKNOWN"
    target.parent.mkdir(parents=True)
    ds.save_as(target)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tagless four-view film exams (MONOCHROME2, MONOCHROME1), a mirrored film, a film of
    modality OT, a weak-evidence image in exam 0, a chest capture (not a mammogram), a tagless
    lateral (ML) view and one tagged VinDr-style exam."""
    root = tmp_path_factory.mktemp("tagless")
    generate_film_mammo(root / "film", seed=3, count=2)
    write_film_mammogram(root / "film" / film_patient_id(2, "L", "CC") / "1-1.dcm", seed=3, laterality="L", view="CC",
                         case=2, mirrored=True)  # fmt: skip
    write_film_mammogram(root / "film" / film_patient_id(3, "R", "MLO") / "1-1.dcm", seed=3, laterality="R",
                         view="MLO", case=3, modality="OT", monochrome1=True)  # fmt: skip
    _weak_copy(root / "film" / film_patient_id(0, "L", "CC") / "1-1.dcm", root / "film" / "weak" / "1-1.dcm")
    other = root / "film" / film_patient_id(3, "R", "MLO") / "1-1.dcm"
    chest = pydicom.dcmread(other)
    chest.SeriesDescription = "scan 1"  # only BodyPartExamined says it shows the breast
    chest.save_as(other)
    del chest.BodyPartExamined
    chest.SeriesDescription, chest.PatientID = "CHEST PA", "chest-1"
    chest.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["chest"])
    chest.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["chest-series"])
    chest.SOPInstanceUID = chest.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["c"])
    (root / "chest").mkdir()
    chest.save_as(root / "chest" / "1.dcm")
    lateral = write_film_mammogram(root / "lateral" / "1.dcm", seed=3, laterality="L", view="CC", case=9)
    ds = pydicom.dcmread(lateral)
    ds.ViewPosition = "ML"  # a lateral view without laterality: not for density
    ds.save_as(lateral)
    generate_sample_data(root / "sample", only=["mammo"], count={"mammo": 1}, seed=5)
    shutil.copytree(root / "sample" / "mammo" / "site_a" / "images", root / "film" / "tagged")
    shutil.rmtree(root / "sample")
    return root


def test_the_rules_take_tagless_mg_and_breast_secondary_captures(folder: Path) -> None:
    rules = load_rules("mammography")
    taken: dict[str, list[str]] = {}
    skipped = []
    for study in scan_folder(folder, workers=1).studies:
        for decision in select(study, rules).decisions:
            if decision.taken_by is None:
                skipped.append(decision.reason)
            else:
                taken.setdefault(decision.taken_by, []).append(decision.label)
    assert sorted(taken) == ["L-CC", "L-MLO", "R-CC", "R-MLO", "unplaced"]  # the tagged exam as before
    assert all(len(taken[name]) == 1 for name in ("L-CC", "L-MLO", "R-CC", "R-MLO"))
    assert len(taken["unplaced"]) == 8 + 3  # two exams, the mirrored, the OT and the weak film
    assert len(skipped) == 2 and all("not 'unplaced'" in reason for reason in skipped)  # the chest, the ML view
    assert any("ViewPosition 'ML'" in reason for reason in skipped)


@pytest.fixture(scope="module")
def plain_run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "out"
    result = runner.invoke(app, ["run", "density", str(folder), "-o", str(out), "-q"])  # the demo weights
    assert result.exit_code == 0, result.output
    return out


def test_without_options_the_pixels_give_the_side_and_the_view_stays_unknown(plain_run: Path) -> None:
    rows = _rows(plain_run / "results.csv")
    assert len(rows) == 4 + 11
    tagged = [r for r in rows if r["selection"] != "unplaced"]
    assert {(r["laterality_source"], r["view_source"]) for r in tagged} == {("tag", "tag")}
    assert all(r["selection"] == f"{r['ImageLaterality']}-{r['ViewPosition']}" for r in tagged)
    films = [r for r in rows if r["selection"] == "unplaced"]
    named = [r for r in films if _truth(r)[0] and "00002" not in r["source_file"]]
    assert len(named) == 9  # both exams (MONOCHROME2 and MONOCHROME1) and the OT capture
    assert all((r["ImageLaterality"], r["laterality_source"]) == (_truth(r)[0], "pixels") for r in named)
    assert {(r["ViewPosition"], r["view_source"]) for r in films} == {("", "unknown")}
    mirrored = next(r for r in films if "00002" in r["source_file"])
    assert (mirrored["ImageLaterality"], mirrored["laterality_source"]) == ("R", "pixels")  # the film's mirror
    weak = next(r for r in films if "weak" in r["source_file"])
    assert (weak["ImageLaterality"], weak["laterality_source"]) == ("", "unknown")


def test_exams_are_scored_per_breast_and_the_unplaced_image_joins_no_side(plain_run: Path) -> None:
    rows = _rows(plain_run / "results.csv")
    exams = {e["StudyInstanceUID"]: e for e in _rows(plain_run / "exams.csv")}
    first = next(r for r in rows if "weak" in r["source_file"])["StudyInstanceUID"]
    assert exams[first]["n_images"] == "5" and exams[first]["n_unplaced"] == "1"
    for side in "LR":
        views = [r for r in rows if r["StudyInstanceUID"] == first and r["ImageLaterality"] == side]
        assert len(views) == 2
        mean = np.mean([[float(v[f"prob_{c}"]) for c in "ABCD"] for v in views], axis=0)
        assert exams[first][f"{side}_density"] == "ABCD"[int(mean.argmax())]
    assert all(e["L_density"] and e["R_density"] for e in exams.values() if int(e["n_images"]) >= 4)


def test_a_rule_on_patient_id_places_cbis_ddsm_names_and_a_table_overrides(folder: Path, tmp_path: Path) -> None:
    mirrored = pydicom.dcmread(folder / "film" / film_patient_id(2, "L", "CC") / "1-1.dcm", stop_before_pixels=True)
    table = tmp_path / "views.csv"
    table.write_text(
        "SOPInstanceUID,path,laterality,view\n"
        f"{mirrored.SOPInstanceUID},,R,MLO\n"  # the table wins over the name
        ",film/weak/1-1.dcm,left,\n"  # a path relative to the DICOM folder; the view left blank
    )
    out = tmp_path / "out"
    args = ["run", "density", str(folder), "-o", str(out), "-q", "--view-rule", RULE, "--views", str(table)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["source_file"]: r for r in _rows(out / "results.csv")}
    films = [r for r in rows.values() if r["selection"] == "unplaced"]
    by_rule = [r for r in films if r["laterality_source"] == "rule:PatientID"]
    assert len(by_rule) == 9 and all((r["ImageLaterality"], r["ViewPosition"]) == _truth(r) for r in by_rule)
    assert all(r["view_source"] == "rule:PatientID" for r in by_rule)
    over = rows[str(folder / "film" / film_patient_id(2, "L", "CC") / "1-1.dcm")]
    assert (over["ImageLaterality"], over["ViewPosition"], over["laterality_source"], over["view_source"]) == (
        "R",
        "MLO",
        "csv",
        "csv",
    )
    weak = rows[str(folder / "film" / "weak" / "1-1.dcm")]
    assert (weak["ImageLaterality"], weak["laterality_source"], weak["view_source"]) == ("L", "csv", "unknown")
    assert {r["laterality_source"] for r in rows.values() if r["selection"] != "unplaced"} == {"tag"}
    # The table and the rules decide the results: a rerun with the same ones resumes, without them is refused.
    assert runner.invoke(app, args).exit_code == 0
    refused = runner.invoke(app, args[:-4])
    assert refused.exit_code == 2 and "view_rules" in refused.output and "views_table_sha256" in refused.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--view-rule", "PatientID:(LEFT|RIGHT)"], "name a group"),
        (["--views", "absent.csv"], "cannot read the views table"),
    ],
)
def test_bad_view_options_exit_2_with_the_reason(folder: Path, tmp_path: Path, extra: list, message: str) -> None:
    result = runner.invoke(app, ["run", "density", str(folder), "-o", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_view_options_are_refused_for_other_pipelines(folder: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "pneumonia", str(folder), "-o", str(tmp_path / "o"), "--view-rule", RULE])
    assert result.exit_code == 2 and "apply to density" in result.output
