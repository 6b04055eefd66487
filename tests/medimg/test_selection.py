"""Declarative series selection: operators, exclusivity, preference, reasons, bundled rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import write_image, write_series

from medimg.dicom import RuleError, load_rules, scan_folder, select
from medimg.dicom.index import InstanceHeader, Series, Study
from medimg.dicom.selection import SelectionRules


def _series(uid: str, number: int, **attributes) -> Series:
    attrs = {"SeriesNumber": number, "SOPInstanceUID": f"{uid}.1", "Rows": 4, "Columns": 4, **attributes}
    return Series(uid, [InstanceHeader(path=f"/x/{uid}", attributes=attrs, transfer_syntax="1.2.840.10008.1.2.1")])


def _brain_study(*descriptions: str) -> Study:
    series = [_series(f"1.{i}", i, Modality="MR", SeriesDescription=d) for i, d in enumerate(descriptions, 1)]
    return Study("1", "P", series)


def test_brain_rules_pick_each_sequence_once_with_reasons() -> None:
    study = _brain_study("Localizer", "AX T1", "AX T1 POST GD", "Ax T2 FLAIR", "AX T2 FSE", "DWI")
    chosen = select(study, load_rules("brain_mr"))
    picked = {name: items[0][0].SeriesDescription for name, items in chosen.picked.items()}
    assert picked == {"t1ce": "AX T1 POST GD", "flair": "Ax T2 FLAIR", "t2": "AX T2 FSE", "t1": "AX T1"}
    assert chosen.complete
    reasons = {d.label: d.reason for d in chosen.decisions}
    assert "does not match" in reasons["series 1 'Localizer'"]
    assert reasons["series 3 'AX T1 POST GD'"] == "taken by 't1ce'"
    assert reasons["series 4 'Ax T2 FLAIR'"] == "taken by 'flair'"
    assert reasons["series 6 'DWI'"].count("; not '") == 3  # one reason per selection (4)


def test_brain_rules_accept_brats_2023_names_and_report_missing() -> None:
    chosen = select(_brain_study("t1n", "t1c", "t2w", "t2f"), load_rules("brain_mr"))
    assert {n: i[0][0].SeriesDescription for n, i in chosen.picked.items()} == {
        "t1ce": "t1c",
        "flair": "t2f",
        "t2": "t2w",
        "t1": "t1n",
    }
    incomplete = select(_brain_study("t1", "t2"), load_rules("brain_mr"))
    assert sorted(incomplete.missing) == ["flair", "t1ce"]


def test_operators() -> None:
    rules = SelectionRules.from_dict(
        {
            "selections": [
                {"name": "range", "conditions": {"EchoTime": {"range": [80, None]}}},
                {"name": "contains", "conditions": {"ImageType": {"contains": ["ORIGINAL", "PRIMARY"]}}},
                {"name": "negated", "conditions": {"Modality": {"not": {"in": ["CT", "PT"]}}}},
                {"name": "either", "any": [{"BodyPartExamined": "HEAD"}, {"Orientation": "sagittal"}]},
            ]
        }
    )
    study = Study(
        "1",
        "P",
        [
            _series("1.1", 1, Modality="MR", EchoTime=100.0),
            _series("1.2", 2, Modality="MR", EchoTime=10.0, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]),
            _series("1.3", 3, Modality="CT", ImageType=["DERIVED"]),
            _series("1.4", 4, Modality="MR", EchoTime=10.0),
            _series("1.5", 5, Modality="PT", BodyPartExamined="head"),
        ],
    )
    chosen = select(study, rules)
    got = {n: [s.SeriesInstanceUID for s, _ in items] for n, items in chosen.picked.items()}
    assert got == {"range": ["1.1"], "contains": ["1.2"], "negated": ["1.4"], "either": ["1.5"]}


def test_preference_and_pick_all() -> None:
    study = Study(
        "1",
        "P",
        [
            _series("1.1", 1, Modality="CR", ViewPosition="AP", Rows=100),
            _series("1.2", 2, Modality="CR", ViewPosition="PA", Rows=50),
            _series("1.3", 3, Modality="CR", ViewPosition="LL", Rows=200),
        ],
    )
    chosen = select(study, load_rules("chest_xray"))
    ((series, image),) = chosen.picked["frontal"]
    assert series.SeriesInstanceUID == "1.2"  # PA preferred over a larger AP
    reasons = {d.SeriesInstanceUID: d.reason for d in chosen.decisions}
    assert "was preferred" in reasons["1.1"]
    assert "ViewPosition 'LL' does not match" in reasons["1.3"]
    every = SelectionRules.from_dict({"selections": [{"name": "cr", "pick": "all", "conditions": {"Modality": "CR"}}]})
    assert len(select(study, every).picked["cr"]) == 3


def test_mammography_views_at_instance_level(tmp_path: Path) -> None:
    for lat in ("L", "R"):
        for k, view in enumerate(("CC", "MLO")):
            write_image(
                tmp_path / f"{lat}{view}",
                np.zeros((4, 4)),
                study_uid="1.2.3",
                series_uid="1.2.3.1",  # one series holding all four views
                instance_number=k + (1 if lat == "L" else 3),
                position=None,
                orientation=None,
                modality="MG",
                extra={"ImageLaterality": lat, "ViewPosition": view},
            )
    scan = scan_folder(tmp_path)
    chosen = select(scan.studies[0], load_rules("mammography"))
    got = {name: Path(items[0][1].path).name for name, items in chosen.picked.items() if items}
    assert got == {"L-CC": "LCC", "L-MLO": "LMLO", "R-CC": "RCC", "R-MLO": "RMLO"}
    assert chosen.picked["unplaced"] == []  # every image had its tags: none left for the tagless selection


def test_rules_from_files_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"name": "x", "selections": [{"name": "a", "conditions": {"Modality": "MR"}}]}))
    assert load_rules(path).selections[0].name == "a"
    yaml_path = tmp_path / "r.yaml"
    yaml_path.write_text("name: y\nselections:\n  - name: b\n    conditions: {Modality: {regex: '(?i)mr'}}\n")
    assert load_rules(yaml_path).name == "y"
    with pytest.raises(RuleError, match="unknown operator"):
        SelectionRules.from_dict({"selections": [{"name": "a", "conditions": {"Modality": {"like": "MR"}}}]})
    with pytest.raises(RuleError, match="bad regex"):
        SelectionRules.from_dict({"selections": [{"name": "a", "conditions": {"Modality": {"regex": "("}}}]})
    with pytest.raises(RuleError, match="non-empty list"):
        SelectionRules.from_dict({"selections": []})
    with pytest.raises(RuleError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_rule_on_attribute_outside_the_index_reads_the_file(tmp_path: Path) -> None:
    write_series(tmp_path / "a", n=2, description="A", extra={"ReceiveCoilName": "HEAD32"})
    write_series(tmp_path / "b", n=2, description="B", extra={"ReceiveCoilName": "BODY"})
    scan = scan_folder(tmp_path)
    rules = SelectionRules.from_dict(
        {"selections": [{"name": "head", "conditions": {"ReceiveCoilName": {"regex": "HEAD"}}}]}
    )
    by_patient = [select(study, rules) for study in scan.studies]
    picked = [c.picked["head"][0][0].SeriesDescription for c in by_patient if c.picked["head"]]
    assert picked == ["A"]
