"""A mammogram's laterality and view from the pixels, the tags, a naming rule or a user's table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medimg.mammo_laterality import laterality_from_pixels
from medimg.mammo_views import (
    ViewRule,
    normalise_laterality,
    normalise_view,
    place_image,
    read_view_header,
    read_view_table,
    view_from_tags,
)
from medimg.synth.common import item_rng
from medimg.synth.mammo import film_patient_id, render_breast, write_film_mammogram


def _breast(laterality: str, view: str, seed: int, shape: tuple[int, int] = (160, 128)) -> np.ndarray:
    rng = item_rng(seed, "test-mammo-views", laterality, view)
    image, _, _ = render_breast(rng, shape, 0.1 * 3062 / shape[0], laterality=laterality, view=view, density="C")
    return image


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_chest_wall_edge_gives_the_side_and_flips_follow(view: str, seed: int) -> None:
    left, right = _breast("L", view, seed), _breast("R", view, seed)
    # A left breast has its chest wall on the image's left edge (DICOM orientation A\R).
    assert laterality_from_pixels(left).laterality == "L"
    assert laterality_from_pixels(right).laterality == "R"
    assert laterality_from_pixels(left[:, ::-1]).laterality == "R"  # mirrored: the other side
    assert laterality_from_pixels(right[:, ::-1]).laterality == "L"
    assert laterality_from_pixels(left[::-1]).laterality == "L"  # upside down: same side
    assert laterality_from_pixels(right[::-1] * 3000.0 + 100.0).laterality == "R"  # any scale


def test_a_burned_in_label_apart_from_the_breast_is_ignored() -> None:
    image = _breast("L", "CC", 3)
    rows, cols = image.shape
    image[:, int(0.86 * cols) :] = 0.0
    image[5 : rows - 5, int(0.88 * cols) :] = 1.0  # a scanned film's label strip along the far edge
    assert laterality_from_pixels(image).laterality == "L"


def test_edge_contact_decides_when_the_breast_fills_the_width() -> None:
    image = _breast("L", "MLO", 0)
    depth = int(np.flatnonzero((image > 0.2).any(axis=0)).max())
    cropped = image[:, : int(0.8 * depth)]  # the breast reaches the far edge: its mass is more even
    assert abs(laterality_from_pixels(cropped).asymmetry) < 0.3
    # With the mass not counted, the edge the breast is cut by still says the side ...
    assert laterality_from_pixels(cropped, min_asymmetry=1.1).laterality == "L"
    assert laterality_from_pixels(cropped[:, ::-1], min_asymmetry=1.1).laterality == "R"
    # ... and with neither counted nothing does.
    assert laterality_from_pixels(cropped, min_asymmetry=1.1, min_edge=1.1).laterality == ""


def test_mass_and_edge_contact_that_disagree_are_unknown() -> None:
    image = np.zeros((128, 128))
    image[10:118, 8:64] = 1.0  # most tissue on the left, clear of the left edge
    image[:, 120:] = 1.0  # ... joined to a strip along the whole right edge
    image[60:64, 64:120] = 1.0
    assert "contradictory" in laterality_from_pixels(image).reason


def test_weak_or_absent_evidence_is_unknown() -> None:
    rows, cols = np.mgrid[0:160, 0:128]
    centred = (((rows - 80) / 60.0) ** 2 + ((cols - 64) / 40.0) ** 2 < 1).astype(float)
    result = laterality_from_pixels(centred)
    assert result.laterality == "" and "weak" in result.reason and abs(result.asymmetry) < 0.05
    assert laterality_from_pixels(np.full((64, 64), 7.0)).laterality == ""
    noise = np.random.default_rng(0).normal(size=(128, 128))
    assert laterality_from_pixels(noise).laterality == ""
    speckle = np.zeros((128, 128))
    speckle[:, :64] = np.random.default_rng(1).uniform(size=(128, 64))  # one-sided, but full of holes
    assert "no solid breast" in laterality_from_pixels(speckle).reason
    with pytest.raises(ValueError, match="2-D"):
        laterality_from_pixels(np.zeros((3, 64, 64)))


def test_words_and_codes_are_normalised() -> None:
    assert [normalise_laterality(v) for v in ("l", " LEFT ", "Right", "R", "B", None, "")] == [
        "L",
        "L",
        "R",
        "R",
        "",
        "",
        "",
    ]
    assert [normalise_view(v) for v in ("cc", "Medio-Lateral  Oblique", "ml", None)] == ["CC", "MLO", "ML", ""]
    assert view_from_tags({"ViewCodes": ["399368009"]}) == "MLO"
    assert view_from_tags({"ViewPosition": "CC", "ViewCodes": ["399368009"]}) == "CC"
    assert view_from_tags({"ViewCodes": ["123"]}) == ""


def test_a_cbis_ddsm_style_rule_reads_side_and_view() -> None:
    rule = ViewRule.parse("PatientID:_(?P<laterality>LEFT|RIGHT)_(?P<view>CC|MLO)$")
    assert rule.source == "rule:PatientID"
    assert rule.apply({"PatientID": "Calc-Test_P_00038_LEFT_CC"}) == {"laterality": "L", "view": "CC"}
    assert rule.apply({"PatientID": "Mass-Training_P_01234_RIGHT_MLO"}) == {"laterality": "R", "view": "MLO"}
    assert rule.apply({"PatientID": "P_00038"}) == {} and rule.apply({}) == {}
    only_side = ViewRule.parse("SeriesDescription:^(?P<laterality>[LR]) ")
    assert only_side.apply({"SeriesDescription": "R CC"}) == {"laterality": "R"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PatientID", "Keyword:regex"),
        ("NotAKeyword:(?P<view>CC)", "not a DICOM keyword"),
        ("PatientID:(?P<view>CC", "bad regular expression"),
        ("PatientID:(LEFT|RIGHT)", "name a group"),
    ],
)
def test_bad_rules_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViewRule.parse(text)


def test_the_precedence_is_table_tags_rule_pixels() -> None:
    rule = ViewRule.parse("PatientID:_(?P<laterality>LEFT|RIGHT)_(?P<view>CC|MLO)")
    header = {"PatientID": "X_RIGHT_MLO", "ImageLaterality": "L", "ViewPosition": "CC"}
    asked = []

    def pixels() -> str:
        asked.append(1)
        return "R"

    placed = place_image(header, table_entry=("R", ""), rules=[rule], pixel_laterality=pixels)
    assert (placed.laterality, placed.laterality_source, placed.view, placed.view_source) == ("R", "csv", "CC", "tag")
    placed = place_image(header, rules=[rule], pixel_laterality=pixels)
    assert (placed.laterality_source, placed.view_source) == ("tag", "tag") and not asked
    placed = place_image({"PatientID": "X_RIGHT_MLO"}, rules=[rule], pixel_laterality=pixels)
    assert (placed.laterality, placed.view, placed.laterality_source) == ("R", "MLO", "rule:PatientID")
    assert not asked  # the pixels are only looked at when nothing else says
    placed = place_image({"PatientID": "P_1"}, rules=[rule], pixel_laterality=pixels)
    assert (placed.laterality, placed.laterality_source, placed.view_source) == ("R", "pixels", "unknown")
    placed = place_image({}, pixel_laterality=lambda: "")
    assert (placed.laterality, placed.laterality_source) == ("", "unknown")


def test_a_views_table_by_uid_or_by_path(tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    (dicom / "a").mkdir(parents=True)
    table = tmp_path / "views.csv"
    table.write_text(
        "SOPInstanceUID,path,Laterality,View\n1.2.3,,left,cc\n,a/1-1.dcm,R,\n1.2.3,,L,CC\n", encoding="utf-8"
    )
    views = read_view_table(table, base=dicom)
    assert len(views) == 2
    assert views.lookup("1.2.3", None) == ("L", "CC")
    assert views.lookup("9.9", dicom / "a" / "1-1.dcm") == ("R", "")
    assert views.lookup("9.9", dicom / "b" / "1-1.dcm") is None
    cbis = tmp_path / "cbis.csv"
    cbis.write_text("patient_id,left or right breast,image view,image file path\nP_1,RIGHT,MLO,a/1-1.dcm\n")
    assert read_view_table(cbis, base=dicom).lookup("", dicom / "a" / "1-1.dcm") == ("R", "MLO")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("uid,laterality\n1,L\n", "SOPInstanceUID or path column"),
        ("SOPInstanceUID,density\n1,B\n", "laterality or view column"),
        ("SOPInstanceUID,laterality\n1,L\n2,both\n", "line 3: laterality 'both'"),
        ("SOPInstanceUID,laterality\n1,L\n1,R\n", "line 3: 1 already has"),
        ("SOPInstanceUID,path,laterality\n,,L\n", "line 2: neither"),
    ],
)
def test_a_bad_views_table_names_the_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    table = tmp_path / "views.csv"
    table.write_text(content)
    with pytest.raises(ValueError, match=message) as caught:
        read_view_table(table)
    assert str(table) in str(caught.value)
    with pytest.raises(ValueError, match="cannot read"):
        read_view_table(tmp_path / "absent.csv")


def test_a_film_file_has_no_placement_tags_but_its_name(tmp_path: Path) -> None:
    path = write_film_mammogram(tmp_path / "f.dcm", seed=0, laterality="R", view="MLO", case=38)
    header = read_view_header(path, ["PatientID", "SOPClassUID"])
    assert header["PatientID"] == film_patient_id(38, "R", "MLO") == "Calc-Test_P_00038_RIGHT_MLO"
    assert header["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.7"
    assert not {"ImageLaterality", "Laterality", "ViewPosition"} & set(header) and header["ViewCodes"] == []
    assert read_view_header(tmp_path / "missing.dcm") == {}


def test_the_view_code_sequence_of_a_file_gives_the_view(tmp_path: Path) -> None:
    import pydicom

    from medimg.synth.dicomio import code_item, sequence

    path = write_film_mammogram(tmp_path / "f.dcm", seed=0, laterality="L", view="MLO")
    ds = pydicom.dcmread(path)
    ds.ImageLaterality = "L"
    ds.ViewCodeSequence = sequence(code_item("399368009", "SCT", "medio-lateral oblique"))
    ds.save_as(path)
    placed = place_image(read_view_header(path))
    assert (placed.laterality, placed.view, placed.laterality_source, placed.view_source) == ("L", "MLO", "tag", "tag")
