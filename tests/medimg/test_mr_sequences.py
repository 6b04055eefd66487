"""Brain MR sequences identified by their physics: derived attributes and the bundled brain_mr rules.

The naming table holds real-world series names (Siemens, GE, Philips, Canon, German, French and
Spanish sites, empty names), each with the acquisition parameters such a series has at its field
strength. ``ROLE_TABLE`` is also what the old-vs-new measurement in the docs runs on.
"""

from __future__ import annotations

from typing import Any

import pytest

from medimg.dicom import load_rules, select
from medimg.dicom.index import InstanceHeader, Series, Study
from medimg.dicom.mr_physics import (
    contrast_evidence,
    field_strength,
    mr_contrast,
    named_contrast,
    named_phase,
    post_contrast,
)
from medimg.dicom.selection import SelectionRules, StudySelection


def seq(
    scanning: str, variant: str, acq: str, tr: float, te: float, ti: float | None = None, **extra: Any
) -> dict[str, Any]:
    """Acquisition parameters as a header holds them."""
    out: dict[str, Any] = {
        "ScanningSequence": scanning.split("\\") if "\\" in scanning else scanning,
        "SequenceVariant": variant.split("\\") if "\\" in variant else variant,
        "MRAcquisitionType": acq,
        "RepetitionTime": tr,
        "EchoTime": te,
    }
    if ti is not None:
        out["InversionTime"] = ti
    return {**out, **extra}


# Typical parameters (vendor protocol defaults). TR/TE/TI in ms.
LOC = seq("GR", "SP", "2D", 8.6, 4.0)
SIEMENS_MPRAGE_3T = seq("GR\\IR", "SK\\SP\\MP", "3D", 2300, 2.32, 900)
SIEMENS_MPRAGE_15T = seq("GR\\IR", "SK\\SP\\MP", "3D", 2200, 2.67, 1000)
SE_T1_15T = seq("SE", "SK\\SP", "2D", 500, 8.9)
SE_T1_3T = seq("SE", "SK\\SP", "2D", 650, 9.1)
TSE_T2 = seq("SE", "SK\\SP\\OSP", "2D", 6000, 99)
TSE_T2_15T = seq("SE", "SK\\SP", "2D", 4000, 95)
FLAIR_2D_3T = seq("SE\\IR", "SK\\SP\\MP", "2D", 9000, 81, 2500)
FLAIR_2D_15T = seq("SE\\IR", "SK\\SP\\MP", "2D", 8500, 110, 2200)
FLAIR_3D = seq("SE\\IR", "SK\\SP\\MP\\OSP", "3D", 5000, 387, 1800)
STIR_15T = seq("SE\\IR", "SK\\SP\\MP", "2D", 5000, 60, 150)
DWI = seq("EP", "SK\\SP", "2D", 5600, 89)
SWI = seq("GR", "SP", "3D", 49, 40)
GE_FRFSE = seq("SE", "SK", "2D", 5000, 102)
GE_CUBE_FLAIR = seq("SE\\IR", "SK", "3D", 6000, 120, 1750)
GE_BRAVO = seq("GR\\IR", "SS\\SK", "3D", 8.2, 3.2, 450)
GE_SPGR = seq("GR", "SS\\SP", "3D", 7.5, 3.0)
GE_DWI = seq("EP\\SE", "SK", "2D", 8000, 80)
PHILIPS_TFE = seq("GR", "SK", "3D", 8.1, 3.7)
PHILIPS_T2 = seq("SE", "SK", "2D", 3000, 80)
PHILIPS_FLAIR = seq("SE\\IR", "SK", "2D", 11000, 125, 2800)
CANON_FLAIR = seq("IR", "SK", "2D", 10000, 110, 2500)
CANON_T1 = seq("SE", "NONE", "2D", 500, 12)
CANON_MPRAGE = seq("GR\\IR", "SP", "3D", 8.0, 3.5, 1000)
GAD = {"ContrastBolusAgent": "GADOVIST", "ContrastBolusRoute": "IV"}

Row = tuple[str, "str | None", dict[str, Any]]

#: study name -> (shared attributes, rows of (SeriesDescription, expected role or None, parameters)).
ROLE_TABLE: dict[str, tuple[dict[str, Any], list[Row]]] = {
    "siemens-3T": (
        {"Manufacturer": "SIEMENS", "MagneticFieldStrength": 3},
        [
            ("localizer", None, LOC),
            ("t1_mprage_sag_p2_iso", "t1", SIEMENS_MPRAGE_3T),
            ("t2_tse_tra", "t2", TSE_T2),
            ("t2_tirm_tra_dark-fluid", "flair", FLAIR_2D_3T),
            ("ep2d_diff_3scan_trace", None, DWI),
            ("t2_swi_tra_p2", None, SWI),
            ("t1_mprage_sag_p2_iso_KM", "t1ce", SIEMENS_MPRAGE_3T),
        ],
    ),
    "siemens-1.5T": (
        {"Manufacturer": "SIEMENS", "MagneticFieldStrength": 1.5},
        [
            ("t1_se_tra", "t1", SE_T1_15T),
            ("t2_tirm_cor_stir", None, STIR_15T),
            ("t2_tse_tra", "t2", TSE_T2_15T),
            ("t2_spc_da-fl_sag_p2_iso", "flair", FLAIR_3D),
            ("t1_se_tra_KM", "t1ce", {**SE_T1_15T, **GAD}),
        ],
    ),
    "ge-3T": (
        {"Manufacturer": "GE MEDICAL SYSTEMS", "MagneticFieldStrength": 3},
        [
            ("3Plane Loc", None, LOC),
            ("Sag T1 BRAVO", "t1", GE_BRAVO),
            ("Ax T2 FRFSE", "t2", GE_FRFSE),
            ("Sag T2 FLAIR CUBE", "flair", GE_CUBE_FLAIR),
            ("Ax DWI 1000b", None, GE_DWI),
            ("Ax T1 BRAVO +C", "t1ce", {**GE_BRAVO, "ContrastBolusAgent": "MULTIHANCE"}),
        ],
    ),
    "ge-1.5T": (
        {"Manufacturer": "GE MEDICAL SYSTEMS", "MagneticFieldStrength": 15000},  # gauss, as old headers say
        [
            ("Ax T1 SE", "t1", SE_T1_15T),
            ("Ax T2 FRFSE", "t2", GE_FRFSE),
            ("Ax T2 FLAIR", "flair", FLAIR_2D_15T),
            ("3D SPGR POST", "t1ce", GE_SPGR),
        ],
    ),
    "philips-3T": (
        {"Manufacturer": "Philips", "MagneticFieldStrength": 3},
        [
            ("SURVEY", None, LOC),
            ("T1W_3D_TFE", "t1", PHILIPS_TFE),
            ("T2W_TSE", "t2", PHILIPS_T2),
            ("T2W_FLAIR", "flair", PHILIPS_FLAIR),
            ("DWI_SENSE", None, DWI),
            ("T1W_3D_TFE_Gd", "t1ce", PHILIPS_TFE),
        ],
    ),
    "canon-1.5T": (
        {"Manufacturer": "CANON_MEC", "MagneticFieldStrength": 1.5},
        [
            ("T1WI", "t1", CANON_T1),
            ("T2WI", "t2", TSE_T2_15T),
            ("FLAIR", "flair", CANON_FLAIR),
            ("3D MPRAGE", "t1ce", {**CANON_MPRAGE, **GAD}),
        ],
    ),
    "german-1.5T": (
        {"Manufacturer": "SIEMENS", "MagneticFieldStrength": 1.5},
        [
            ("T1 SE tra nativ", "t1", SE_T1_15T),
            ("T2 TSE tra", "t2", TSE_T2_15T),
            ("t2_tirm_tra_dark-fluid", "flair", FLAIR_2D_15T),
            ("T1 SE tra Kontrast", "t1ce", SE_T1_15T),
        ],
    ),
    "german-km-3T": (
        {"Manufacturer": "SIEMENS", "MagneticFieldStrength": 3},
        [
            ("t1_se_tra", "t1", SE_T1_3T),
            ("t2_tse_tra", "t2", TSE_T2),
            ("t2_flair_tra", "flair", FLAIR_2D_3T),
            ("t1_mprage_KM", "t1ce", SIEMENS_MPRAGE_3T),
        ],
    ),
    "french-1.5T": (
        {"Manufacturer": "GE MEDICAL SYSTEMS", "MagneticFieldStrength": 1.5},
        [
            ("T1 SE sans gado", "t1", SE_T1_15T),
            ("T2 FSE axial", "t2", GE_FRFSE),
            ("FLAIR axial", "flair", FLAIR_2D_15T),
            ("T1 SE gado", "t1ce", SE_T1_15T),
        ],
    ),
    "spanish-1.5T": (
        {"Manufacturer": "Philips", "MagneticFieldStrength": 1.5},
        [
            ("T1 SE sin contraste", "t1", SE_T1_15T),
            ("T2 TSE axial", "t2", PHILIPS_T2),
            ("FLAIR axial", "flair", PHILIPS_FLAIR),
            ("T1 SE con contraste", "t1ce", SE_T1_15T),
        ],
    ),
    "empty-names-3T": (
        {"Manufacturer": "SIEMENS", "MagneticFieldStrength": 3},
        [
            ("", "t1", SIEMENS_MPRAGE_3T),
            ("", "t2", TSE_T2),
            ("", "flair", FLAIR_2D_3T),
            ("", None, DWI),
            ("", "t1ce", {**SIEMENS_MPRAGE_3T, **GAD}),
        ],
    ),
}


def make_study(name: str, shared: dict[str, Any], rows: list[Row]) -> Study:
    """One in-memory MR study, series numbered in acquisition order."""
    series = []
    for number, (description, _, params) in enumerate(rows, 1):
        uid = f"1.{number}"
        attrs = {
            "Modality": "MR",
            "SeriesNumber": number,
            "SeriesDescription": description,
            "SOPInstanceUID": f"{uid}.1",
            "ImageType": ["ORIGINAL", "PRIMARY", "M"],
            "Rows": 4,
            "Columns": 4,
            **shared,
            **params,
        }
        series.append(Series(uid, [InstanceHeader(path=f"/x/{name}/{uid}", attributes=attrs, transfer_syntax="")]))
    return Study(name, name, series)


def roles(chosen: StudySelection) -> dict[str, str | None]:
    """SeriesInstanceUID -> the role that took it (None: not taken)."""
    return {d.SeriesInstanceUID: d.taken_by for d in chosen.decisions}


def table_score(rules: SelectionRules) -> tuple[int, int, list[str]]:
    """(rows right, rows, wrong rows) of ROLE_TABLE under ``rules``."""
    right, total, wrong = 0, 0, []
    for name, (shared, rows) in ROLE_TABLE.items():
        got = roles(select(make_study(name, shared, rows), rules))
        for number, (description, expected, _) in enumerate(rows, 1):
            total += 1
            if got[f"1.{number}"] == expected:
                right += 1
            else:
                wrong.append(f"{name} {description!r}: expected {expected}, got {got[f'1.{number}']}")
    return right, total, wrong


@pytest.fixture(scope="module")
def rules() -> SelectionRules:
    return load_rules("brain_mr")


@pytest.mark.parametrize("name", list(ROLE_TABLE))
def test_naming_table_roles(name: str, rules: SelectionRules) -> None:
    shared, rows = ROLE_TABLE[name]
    study = make_study(name, shared, rows)
    chosen = select(study, rules)
    got = roles(chosen)
    assert {d: got[f"1.{n}"] for n, (d, _, _) in enumerate(rows, 1) if d} == {d: e for d, e, _ in rows if d}
    assert [got[f"1.{n}"] for n in range(1, len(rows) + 1)] == [e for _, e, _ in rows]
    assert chosen.complete, chosen.failure_reasons()
    for decision in chosen.decisions:  # every decision keeps the physics and name evidence
        assert any(e.startswith("MRContrast '") for e in decision.evidence), decision
        assert any(e.startswith("PostContrast '") for e in decision.evidence), decision


def test_flair_is_never_taken_as_t2(rules: SelectionRules) -> None:
    for name, (shared, rows) in ROLE_TABLE.items():
        chosen = select(make_study(name, shared, rows), rules)
        for t2, _ in chosen.picked["t2"]:
            assert mr_contrast(t2.instances[0].attributes.get).value != "flair", name


def test_table_score_is_complete(rules: SelectionRules) -> None:
    right, total, wrong = table_score(rules)
    assert (right, wrong) == (total, [])
    assert total >= 50


@pytest.mark.parametrize(
    ("params", "expected", "words"),
    [
        ({**FLAIR_2D_3T, "MagneticFieldStrength": 3}, "flair", ["TI 2500 ms", "TR 9000 ms", "FLAIR"]),
        ({**FLAIR_3D, "MagneticFieldStrength": 1.5}, "flair", ["TI 1800 ms", "FLAIR"]),
        (TSE_T2, "t2", ["TR 6000 ms", "TE 99 ms", "T2"]),
        (SIEMENS_MPRAGE_3T, "t1-ir-gre", ["GR/IR", "3D", "TI 900 ms", "MP-RAGE"]),
        (GE_BRAVO, "t1-ir-gre", ["TI 450 ms"]),
        (PHILIPS_TFE, "t1", ["spoiled gradient echo"]),
        (SE_T1_15T, "t1", ["TR 500 ms"]),
        (seq("SE", "SK", "2D", 3000, 15), "pd", ["proton density"]),
        (STIR_15T, "other", ["STIR"]),
        (DWI, "other", ["echo planar"]),
        (SWI, "other", ["T2*"]),
        (seq("SE\\IR", "SK", "2D", 2200, 12, 860), "t1", ["T1-FLAIR"]),
        ({}, "unknown", ["no RepetitionTime"]),
    ],
)
def test_mr_contrast_values_carry_reasons(params: dict[str, Any], expected: str, words: list[str]) -> None:
    derived = mr_contrast(params.get)
    assert derived.value == expected, derived
    assert all(w in derived.reason for w in words), derived.reason


def test_field_strength_matters() -> None:
    t1_at_3t = seq("SE", "SK", "2D", 900, 10)
    assert mr_contrast({**t1_at_3t, "MagneticFieldStrength": 3}.get).value == "t1"
    at_15 = mr_contrast({**t1_at_3t, "MagneticFieldStrength": 1.5}.get)
    assert at_15.value == "other" and "1.5 T" in at_15.reason
    assert field_strength(15000) == 1.5 and field_strength("3") == 3.0 and field_strength(None) is None
    stir_3t = seq("SE\\IR", "SK", "2D", 5000, 20, 280)
    assert mr_contrast({**stir_3t, "MagneticFieldStrength": 3}.get).value == "other"
    assert mr_contrast({**stir_3t, "MagneticFieldStrength": 1.5}.get).value == "t1"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("t2_tirm_tra_dark-fluid", "flair"),
        ("t2_spc_da-fl_sag_p2_iso", "flair"),
        ("T2 dark fluid tra", "flair"),
        ("Sag T2 FLAIR CUBE", "flair"),
        ("T2W_FLAIR", "flair"),
        ("t2f", "flair"),
        ("Ax T1 FLAIR", "t1"),
        ("T1W_3D_TFE_Gd", "t1"),
        ("t1_mprage_sag_p2_iso", "t1"),
        ("3D SPGR", "t1"),
        ("T1WI", "t1"),
        ("Ax T2 FRFSE", "t2"),
        ("T2W_TSE", "t2"),
        ("t2w", "t2"),
        ("ep2d_diff_3scan_trace", "other"),
        ("t2_swi_tra", "other"),
        ("T2* GRE", "other"),
        ("localizer", "other"),
        ("", "unknown"),
        ("series 7", "unknown"),
    ],
)
def test_named_contrast(name: str, expected: str) -> None:
    assert named_contrast({"SeriesDescription": name}.get).value == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Ax T1 BRAVO +C", "post"),
        ("T1 C+", "post"),
        ("t1_se_tra_KM", "post"),
        ("T1 SE tra Kontrast", "post"),
        ("T1W_3D_TFE_Gd", "post"),
        ("AX T1 POST GAD", "post"),
        ("T1 SE gado", "post"),
        ("T1 SE con contraste", "post"),
        ("T1 CE", "post"),
        ("t1ce", "post"),
        ("MPR post", "post"),
        ("T1 SE sin contraste", "pre"),
        ("T1 SE sans gado", "pre"),
        ("T1 ohne KM", "pre"),
        ("t1n", "pre"),
        ("T1 pre", "pre"),
        ("BRAIN W WO CONTRAST", "none"),
        ("T1 postop", "none"),
        ("t1_se_tra", "none"),
    ],
)
def test_named_phase(name: str, expected: str) -> None:
    assert named_phase({"SeriesDescription": name}.get).value == expected


def test_post_contrast_needs_tags_or_an_earlier_t1() -> None:
    pre = {**SE_T1_15T, "SeriesNumber": 2, "SeriesDescription": "T1"}
    post = {**SE_T1_15T, "SeriesNumber": 5, "SeriesDescription": "T1 +C"}
    assert post_contrast(post.get, [pre.get]).value == "true"
    assert "acquired after the T1 series 2 'T1'" in post_contrast(post.get, [pre.get]).reason
    assert post_contrast(post.get, []).value == "unknown"
    early = {**post, "SeriesNumber": 1}
    assert post_contrast(early.get, [pre.get]).value == "unknown"
    assert post_contrast({**post, "SeriesNumber": 2}.get, [pre.get]).value == "true"  # order not known
    timed = {**post, "SeriesNumber": 1, "AcquisitionTime": "101500"}
    assert post_contrast(timed.get, [{**pre, "AcquisitionTime": "100000"}.get]).value == "true"
    tagged = {**SE_T1_15T, "ContrastBolusAgent": "GADOVIST"}
    assert post_contrast(tagged.get, []).value == "true"
    assert post_contrast({**tagged, "ContrastBolusAgent": "NONE"}.get, []).value == "false"
    assert post_contrast({**tagged, "SeriesDescription": "T1 nativ"}.get, []).value == "unknown"


def test_contrast_evidence() -> None:
    flair = mr_contrast(FLAIR_2D_3T.get)
    assert contrast_evidence(flair, named_contrast({"SeriesDescription": "Ax T2"}.get)).value == "conflict"
    assert contrast_evidence(flair, named_contrast({"SeriesDescription": "FLAIR"}.get)).value == "agree"
    assert contrast_evidence(flair, named_contrast({}.get)).value == "physics"
    mprage = mr_contrast(SIEMENS_MPRAGE_3T.get)
    assert contrast_evidence(mprage, named_contrast({"SeriesDescription": "T1"}.get)).value == "agree"


def _study(*rows: Row, field: float = 3) -> Study:
    return make_study("s", {"MagneticFieldStrength": field}, list(rows))


def test_name_t2_physics_flair_fails_naming_the_candidate(rules: SelectionRules) -> None:
    study = _study(
        ("t1_mprage", "t1", SIEMENS_MPRAGE_3T),
        ("Ax T2", None, FLAIR_2D_3T),  # named T2, but inversion recovery with TI 2500 ms
        ("t2_tse_tra", "t2", TSE_T2),
        ("t1_mprage_KM", "t1ce", {**SIEMENS_MPRAGE_3T, **GAD}),
    )
    chosen = select(study, rules)
    assert not chosen.complete and "flair" in chosen.missing
    message = chosen.conflicts["flair"]
    assert "series 2 'Ax T2'" in message and "TI 2500 ms" in message and "name says t2" in message
    assert roles(chosen)["1.2"] is None  # never taken as T2 either
    assert roles(chosen)["1.3"] == "t2"
    assert any("'flair'" in line and "Ax T2" in line for line in chosen.failure_reasons())
    reason = next(d.reason for d in chosen.decisions if d.SeriesInstanceUID == "1.2")
    assert "matches 'flair' but the evidence conflicts: ContrastEvidence 'conflict' (name says t2" in reason


def test_two_equal_t2_fail_naming_both(rules: SelectionRules) -> None:
    study = _study(
        ("t1_mprage", "t1", SIEMENS_MPRAGE_3T),
        ("t2_tse_tra", None, TSE_T2),
        ("t2_tirm_tra_dark-fluid", "flair", FLAIR_2D_3T),
        ("t2_tse_tra", None, TSE_T2),
        ("t1_mprage_KM", "t1ce", {**SIEMENS_MPRAGE_3T, **GAD}),
    )
    chosen = select(study, rules)
    assert chosen.missing == ["t2"]
    assert "series 2 't2_tse_tra'" in chosen.conflicts["t2"] and "series 4 't2_tse_tra'" in chosen.conflicts["t2"]
    assert "equally good" in chosen.conflicts["t2"]
    reason = next(d.reason for d in chosen.decisions if d.SeriesInstanceUID == "1.2")
    assert "matches 't2' but is as good a candidate as series 4 't2_tse_tra'" in reason
    # a 3-D T2 is preferred over a 2-D one: no tie, and the reason says so
    study.series[3].instances[0].attributes["MRAcquisitionType"] = "3D"
    chosen = select(study, rules)
    assert chosen.complete and roles(chosen)["1.4"] == "t2"
    assert "series 4 't2_tse_tra' was preferred" in next(
        d.reason for d in chosen.decisions if d.SeriesInstanceUID == "1.2"
    )


def test_post_contrast_name_without_tags_or_other_t1_fails(rules: SelectionRules) -> None:
    study = _study(
        ("t2_tse_tra", "t2", TSE_T2),
        ("t2_flair_tra", "flair", FLAIR_2D_3T),
        ("Ax T1 +C", None, SE_T1_3T),
    )
    chosen = select(study, rules)
    assert sorted(chosen.missing) == ["t1", "t1ce"]
    assert "series 3 'Ax T1 +C'" in chosen.conflicts["t1ce"]
    assert "no other T1 in the study" in chosen.conflicts["t1ce"]


def test_name_flair_physics_t2_fails(rules: SelectionRules) -> None:
    study = _study(
        ("T1", "t1", SE_T1_3T),
        ("FLAIR", None, TSE_T2),
        ("T2 FLAIR", "flair", FLAIR_2D_3T),
        ("T1 Gd", "t1ce", SE_T1_3T),
    )
    chosen = select(study, rules)
    assert chosen.missing == ["t2"] and "series 2 'FLAIR'" in chosen.conflicts["t2"]


def test_selection_keys_are_validated() -> None:
    from medimg.dicom import RuleError

    with pytest.raises(RuleError, match="ties must be"):
        SelectionRules.from_dict({"selections": [{"name": "a", "ties": "random"}]})
    with pytest.raises(RuleError, match="fail_if"):
        SelectionRules.from_dict({"selections": [{"name": "a", "fail_if": {"Modality": "MR"}}]})
    with pytest.raises(RuleError, match="unknown operator"):
        SelectionRules.from_dict({"selections": [{"name": "a", "fail_if": [{"Modality": {"like": 1}}]}]})
    rules = load_rules("brain_mr")
    assert SelectionRules.from_dict(rules.to_dict()) == rules


def test_user_rules_can_use_the_derived_attributes() -> None:
    rules = SelectionRules.from_dict(
        {"selections": [{"name": "any-flair", "pick": "all", "conditions": {"MRContrast": "flair"}}]}
    )
    study = _study(("", None, TSE_T2), ("", None, FLAIR_3D), ("x", None, FLAIR_2D_3T))
    chosen = select(study, rules)
    assert sorted(s.SeriesInstanceUID for s, _ in chosen.picked["any-flair"]) == ["1.2", "1.3"]
    reason = next(d.reason for d in chosen.decisions if d.SeriesInstanceUID == "1.1")
    assert "MRContrast 't2' does not match = 'flair' (SE, 2D, TR 6000 ms" in reason


def test_generator_vocabularies_are_selected_by_their_physics(rules: SelectionRules) -> None:
    """Every name combination of every synthetic scanner style is selected right."""
    import itertools

    import numpy as np

    from medimg.synth.brain_protocols import STYLES, series_attributes

    order = ("t1", "t2", "flair", "t1ce")  # acquisition order of the generator
    checked = 0
    for k, style in enumerate(STYLES):
        for combo in itertools.product(*(style.names[s] for s in order)):
            rng = np.random.default_rng([k, checked])
            rows: list[Row] = [
                (name[0], seq, series_attributes(rng, style, seq, name)) for seq, name in zip(order, combo, strict=True)
            ]
            shared = {"Manufacturer": style.manufacturer, "MagneticFieldStrength": style.field_strength}
            chosen = select(make_study(f"style{k}", shared, rows), rules)
            assert chosen.complete, (style.model, combo, chosen.failure_reasons())
            assert list(roles(chosen).values()) == list(order), (style.model, combo)
            checked += 1
    assert checked >= 40
    # the vocabularies hold the names the physics must see through
    names = {n for style in STYLES for options in style.names.values() for n, _ in options}
    assert {"t2_tirm_tra_dark-fluid", "t2_spc_da-fl_sag_p2_iso", "", "Ax T1 BRAVO +C", "T1W_3D_TFE_Gd"} <= names


def test_generated_brain_dicom_carries_the_physics(tmp_path) -> None:
    import pydicom

    from medimg.dicom import scan_folder
    from medimg.synth.brain import generate_brain

    generate_brain(tmp_path / "brain", seed=3, count=2)
    scan = scan_folder(tmp_path / "brain" / "dicom")
    rules = load_rules("brain_mr")
    for study in scan.studies:
        chosen = select(study, rules)
        assert chosen.complete, chosen.failure_reasons()
        for role, items in chosen.picked.items():
            folder = items[0][0].files[0].replace("\\", "/").split("/")[-2]
            assert folder.endswith(f"_{role}")
        flair = pydicom.dcmread(chosen.series("flair").files[0], stop_before_pixels=True)
        assert "IR" in flair.ScanningSequence and float(flair.InversionTime) >= 1500


def test_real_scanner_headers() -> None:
    """A real GE 3-D MP-RAGE (research-mode header, RM\\IR) and real Siemens EPI series."""
    from real_data import real_path

    from medimg.dicom import scan_folder

    ge = scan_folder(real_path("dcm2niix", "dcm_qa_ge", "In", "05_3D_Ax_T1_MP_RAGE_R22"))
    chosen = select(ge.studies[0], load_rules("brain_mr"))
    ((series, _),) = chosen.picked["t1"]
    assert series.SeriesDescription == "3D Ax T1 MP-RAGE_R22"
    evidence = " ".join(next(d.evidence for d in chosen.decisions if d.taken_by == "t1"))
    assert "MRContrast 't1-ir-gre'" in evidence and "TI 1000 ms" in evidence
    assert "ContrastEvidence 'agree'" in evidence and "PostContrast 'false'" in evidence
    assert sorted(chosen.missing) == ["flair", "t1ce", "t2"]
    epi = scan_folder(real_path("dcm2niix", "dcm_qa", "In", "Orientation", "ax"))
    for study in epi.studies:
        for decision in select(study, load_rules("brain_mr")).decisions:
            assert decision.taken_by is None
            assert any(e.startswith("MRContrast 'other'") and "echo planar" in e for e in decision.evidence)
