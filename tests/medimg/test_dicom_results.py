"""Results as DICOM objects (medimg.dicom.results): SR and SC built with highdicom read back exactly,
reference their sources, say who made them and, for demo weights, that they are not for clinical use."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medimg.dicom.results import (
    DENSITY_CODES,
    DISCLAIMER,
    Algorithm,
    DensityImage,
    build_density_sr,
    build_overlay_sc,
    build_pneumonia_sr,
    build_tumour_sr,
    read_report,
    read_source,
    save_dataset,
)
from medimg.dicom.results.common import parameters_of
from medimg.dicom.seg import write_seg

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
SHA = "ab" * 32
DEMO = Algorithm("medimg pneumonia", weights_sha256=SHA, source_kind="checkpoint", demo=True)
REAL = Algorithm("medimg pneumonia", weights_sha256="cd" * 32, source_kind="bundle", demo=False)
PROBABILITY = ("DCM", "122157")
PNEUMONIA = ("SCT", "233604007")


@pytest.fixture(scope="module")
def radiograph() -> Path:
    return sorted((SAMPLE / "cxr" / "stage_2_train_images").glob("*.dcm"))[0]


def _dsr2xml_parses(path: Path) -> None:
    binary = shutil.which("dsr2xml")
    if binary is None:
        pytest.skip("dcmtk's dsr2xml is not installed")
    done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "<report" in done.stdout


def _dciodvfy_finds_no_error(path: Path) -> None:
    """dicom3tools' IOD checker (Debian ``dicom3tools``), when installed: no ``Error`` line."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        return  # optional: dsr2xml is the required check
    done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


def test_pneumonia_sr_reads_back_exactly(radiograph: Path, tmp_path: Path) -> None:
    source = read_source(radiograph)
    boxes = [[0.625, 10, 20, 30, 40], [0.25, 100, 50, 8, 9]]
    path = save_dataset(
        build_pneumonia_sr(source, probability=0.734375, threshold=0.5, boxes=boxes, algorithm=DEMO), tmp_path / "a.dcm"
    )
    sr, groups, notes = read_report(path)
    # same study and patient as the source, a new series
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID and sr.Modality == "SR"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    image, *regions = groups
    assert image.finding == PNEUMONIA and image.measurements == {PROBABILITY: (0.734375, "{probability}")}
    assert image.evaluations == {PNEUMONIA: ("DCM", "121053")}  # present at the threshold
    assert image.source_images == [source.SOPInstanceUID]
    assert [r.measurements[PROBABILITY][0] for r in regions] == [0.625, 0.25]
    assert all(r.region_type == "POLYLINE" and r.source_images == [source.SOPInstanceUID] for r in regions)
    np.testing.assert_array_equal(regions[0].region, [[10, 20], [40, 20], [40, 60], [10, 60], [10, 20]])
    name, version, params = image.algorithm
    assert name == "medimg pneumonia" and version
    assert parameters_of(params) == {
        "weights_sha256": SHA,
        "weights_source": "checkpoint",
        "demo_weights": "yes",
        "operating_threshold": "0.5",
    }
    assert DISCLAIMER in notes and "NOT FOR CLINICAL USE" in sr.SeriesDescription
    _dsr2xml_parses(path)
    _dciodvfy_finds_no_error(path)


def test_pneumonia_below_threshold_is_absent_and_real_weights_carry_no_disclaimer(
    radiograph: Path, tmp_path: Path
) -> None:
    source = read_source(radiograph)
    sr = build_pneumonia_sr(source, probability=0.1, threshold=0.15657001733779907, boxes=[], algorithm=REAL)
    path = save_dataset(sr, tmp_path / "b.dcm")
    sr, groups, notes = read_report(path)
    assert len(groups) == 1 and groups[0].evaluations == {PNEUMONIA: ("DCM", "121054")}
    assert DISCLAIMER not in notes and "NOT FOR CLINICAL USE" not in sr.SeriesDescription
    # the threshold as written (its full repr), the probability as a DS value
    assert parameters_of(groups[0].algorithm[2])["operating_threshold"] == "0.15657001733779907"


def test_uids_are_the_same_on_a_rerun_and_differ_with_the_weights(radiograph: Path) -> None:
    source = read_source(radiograph)

    def uids(algorithm: Algorithm) -> tuple[str, str]:
        sr = build_pneumonia_sr(source, probability=0.5, threshold=0.5, boxes=[], algorithm=algorithm)
        return sr.SeriesInstanceUID, sr.SOPInstanceUID

    assert uids(DEMO) == uids(DEMO)
    assert uids(DEMO)[0] != uids(REAL)[0] and uids(DEMO)[1] != uids(REAL)[1]


def test_density_sr_has_the_bi_rads_codes_per_image_breast_and_exam(tmp_path: Path) -> None:
    files = sorted((SAMPLE / "mammo").glob("*/images/*/*.dicom"))
    study = read_source(files[0]).StudyInstanceUID
    sources = [s for s in map(read_source, files) if s.StudyInstanceUID == study]
    probs = [{"A": 0.125, "B": 0.5, "C": 0.25, "D": 0.125}, {"A": 0.0625, "B": 0.0625, "C": 0.125, "D": 0.75}]
    images = [DensityImage(s, str(s.get("ImageLaterality", "")), probs[k % 2]) for k, s in enumerate(sources)]
    exam = {"L_density": "B", "R_density": "D", "exam_density": "D", "prob_A": 0.0625, "prob_B": 0.0625}
    exam |= {"prob_C": 0.125, "prob_D": 0.75}
    algo = Algorithm("medimg density", weights_sha256=SHA)
    path = save_dataset(build_density_sr(images, exam, algorithm=algo), tmp_path / "d.dcm")
    sr, groups, _ = read_report(path)
    # DICOM CID 6000 (Overall Breast Composition), SNOMED CT codes
    assert {c: code.value for c, code in DENSITY_CODES.items()} == {
        "A": "129716005",
        "B": "129717001",
        "C": "129718006",
        "D": "129719003",
    }
    composition = ("SCT", "129715009")
    by_label = {g.label: g for g in groups}
    for k, source in enumerate(sources):
        group = by_label[f"image {source.SOPInstanceUID}"[:64]]
        assert group.source_images == [source.SOPInstanceUID]
        assert {code: v for (_, code), (v, _) in group.measurements.items()} == {
            DENSITY_CODES[c].value: p for c, p in probs[k % 2].items()
        }
        lat = {"L": "7771000", "R": "24028007"}[source.ImageLaterality]
        assert group.finding_sites == [("SCT", "76752008", lat)]
    assert by_label["left breast"].evaluations == {composition: ("SCT", "129717001")}
    assert by_label["right breast"].evaluations == {composition: ("SCT", "129719003")}
    assert by_label["exam"].evaluations == {composition: ("SCT", "129719003")}
    assert by_label["exam"].measurements[("SCT", "129719003")] == (0.75, "{probability}")
    assert sr.StudyInstanceUID == study and "NOT FOR CLINICAL USE" not in sr.SeriesDescription
    _dsr2xml_parses(path)
    _dciodvfy_finds_no_error(path)
    with pytest.raises(ValueError, match="not one of A-D"):
        build_density_sr(images, {**exam, "exam_density": "E"}, algorithm=algo)


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")
def test_tumour_sr_references_the_seg_and_the_source_series(tmp_path: Path) -> None:
    files = list((SAMPLE / "brain" / "dicom" / "BraTS2021_00000" / "5_t1ce").glob("*.dcm"))
    sources = sorted((read_source(f) for f in files), key=lambda s: float(s.ImagePositionPatient[2]))
    labels = np.zeros((int(sources[0].Columns), int(sources[0].Rows), len(sources)), np.uint8)
    labels[10:20, 10:20, 5:9] = 2
    seg_path = write_seg(labels, [s.filename for s in sources], tmp_path / "seg.dcm", label_values=[2])
    seg = read_source(seg_path)
    volumes = {"WT": 1.6, "TC": 0.0, "ET": 0.015625}
    algo = Algorithm("medimg brats", weights_sha256=SHA, demo=True)
    path = save_dataset(build_tumour_sr(seg, sources, volumes, algorithm=algo), tmp_path / "t.dcm")
    sr, groups, notes = read_report(path)
    assert [g.label for g in groups] == ["whole tumour (WT)", "tumour core (TC)", "enhancing tumour (ET)"]
    assert [g.measurements[("SCT", "118565006")] for g in groups] == [(1.6, "mL"), (0.0, "mL"), (0.015625, "mL")]
    assert all(g.source_images == [seg.SOPInstanceUID] for g in groups)
    series = {s.SeriesInstanceUID: s for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert set(series) == {seg.SeriesInstanceUID, sources[0].SeriesInstanceUID}
    referenced = {r.ReferencedSOPInstanceUID for r in series[sources[0].SeriesInstanceUID].ReferencedSOPSequence}
    assert referenced == {s.SOPInstanceUID for s in sources}
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID and DISCLAIMER in notes
    _dsr2xml_parses(path)
    _dciodvfy_finds_no_error(path)
    with pytest.raises(ValueError, match="no volume"):
        build_tumour_sr(seg, sources, {"WT": 1.0}, algorithm=algo)


def test_overlay_sc_keeps_the_picture_and_the_study(radiograph: Path, tmp_path: Path) -> None:
    source = read_source(radiograph)
    rgb = np.random.default_rng(0).integers(0, 256, (int(source.Rows), int(source.Columns), 3), dtype=np.uint8)
    path = save_dataset(build_overlay_sc(source, rgb, algorithm=DEMO, what="medimg overlay"), tmp_path / "sc.dcm")
    sc = pydicom.dcmread(path)
    np.testing.assert_array_equal(sc.pixel_array, rgb)
    assert sc.PhotometricInterpretation == "RGB" and sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.BurnedInAnnotation == "YES"
    assert "NOT FOR CLINICAL USE" in sc.SeriesDescription and DISCLAIMER in sc.ImageComments
    _dciodvfy_finds_no_error(path)
    with pytest.raises(ValueError, match="uint8"):
        build_overlay_sc(source, rgb.astype(np.float32), algorithm=DEMO, what="x")
    with pytest.raises(ValueError, match="not a medimg measurement report"):
        read_report(path)


def test_source_values_that_break_their_vr_are_not_copied(radiograph: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(radiograph)
    ds.PatientBirthDate = "d14a028c2a3a2bc9476102bb288234c415a2b01f828ea62ac5b3e42f"  # an anonymiser's hash
    ds.PatientAge = "40"  # RSNA's ages
    ds.AccessionNumber = "A" * 40  # SH holds 16 characters
    ds.save_as(tmp_path / "odd.dcm")
    source = read_source(tmp_path / "odd.dcm")
    path = save_dataset(
        build_pneumonia_sr(source, probability=0.5, threshold=0.5, boxes=[], algorithm=REAL), tmp_path / "sr.dcm"
    )
    sr = pydicom.dcmread(path)
    assert sr.PatientBirthDate == "" and sr.AccessionNumber == "" and "PatientAge" not in sr
    assert sr.PatientID == ds.PatientID and sr.StudyDate == ds.StudyDate
    _dsr2xml_parses(path)
    _dciodvfy_finds_no_error(path)


def test_a_source_that_is_not_dicom_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "notes.dcm"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="notes.dcm: cannot read DICOM"):
        read_source(bad)
