"""BIDS sidecar fields equal dcm2niix's on every series of its regression suites.

Every series under ``dcm_qa/In``, ``dcm_qa_nih/In`` and ``dcm_qa_ge/In`` is grouped by
SeriesInstanceUID (headers only), ordered as dcm2niix stores it (volumes by InstanceNumber; slices
of a 2-D series in the slice order of dcm2niix's reference NIfTI), and :func:`bids_sidecar`'s
fields are compared with dcm2niix's JSON: strings and lists of strings equal, numbers equal to 1e-6
once ours are rounded to the 6 significant digits dcm2niix prints (``%g``).
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from real_data import dcm2niix_binary, real_path

from medimg.dicom.bids import SIDECAR_FIELDS, bids_sidecar

#: The fields the issue asks for (PhaseEncodingAxis stands in where the polarity is unknown).
COMPARED = tuple(field for field in SIDECAR_FIELDS)
SUITES = ("dcm_qa", "dcm_qa_nih", "dcm_qa_ge")
#: The last dcm2niix release seen NOT to append "MAGNITUDE" to ImageType (v1.0.20241127 does).
OLD_IMAGE_TYPE = "v1.0.20220720"


def same(ours: Any, theirs: Any) -> bool:
    """dcm2niix's value equals ours: strings exactly, numbers to 1e-6 at ``%g`` precision."""
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(same(a, b) for a, b in zip(ours, theirs, strict=True))
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(theirs, numbers) and not isinstance(ours, bool):
        return abs(float(f"{ours:.6g}") - float(theirs)) <= 1e-6
    return bool(ours == theirs)


def mismatches(ours: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """One line per compared field where the sidecars differ (a field absent in one counts)."""
    expected = dict(reference)
    version = str(reference.get("ConversionSoftwareVersion", ""))
    image_type = ours.get("ImageType")
    if version and version <= OLD_IMAGE_TYPE and image_type and image_type[-1] == "MAGNITUDE":
        if expected.get("ImageType") == image_type[:-1]:  # older dcm2niix did not append it
            expected["ImageType"] = image_type
    return [
        f"{field}: ours {ours.get(field)!r} dcm2niix {expected.get(field)!r}"
        for field in COMPARED
        if not same(ours.get(field), expected.get(field))
    ]


@cache
def series_of(suite: str) -> dict[str, list[pydicom.Dataset]]:
    """The suite's DICOM headers grouped by SeriesInstanceUID (non-DICOM files skipped)."""
    groups: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for path in sorted(real_path("dcm2niix", suite, "In").rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue  # READMEs and a stray NIfTI live beside the DICOM files
        groups[str(ds.SeriesInstanceUID)].append(ds)
    return dict(groups)


def references(suite: str) -> dict[tuple[int, str], tuple[dict[str, Any], Path]]:
    """dcm2niix's shipped sidecars by (SeriesNumber, SeriesDescription), with their JSON path."""
    found = {}
    for path in sorted(real_path("dcm2niix", suite, "Ref").glob("*.json")):
        sidecar = json.loads(path.read_text())
        found[(int(sidecar["SeriesNumber"]), str(sidecar["SeriesDescription"]))] = (sidecar, path)
    return found


def nifti_order(datasets: list[pydicom.Dataset], reference_nifti: Path | None) -> list[pydicom.Dataset]:
    """The headers in the order dcm2niix stores them: volume by volume, slices along its k axis."""
    by_instance = sorted(datasets, key=lambda ds: (int(ds.get("AcquisitionNumber") or 0), int(ds.InstanceNumber)))
    positions = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient) for ds in by_instance}
    n = len(positions)
    if n < 2 or reference_nifti is None or not reference_nifti.exists():
        return by_instance  # mosaics (one file per volume) and 3-D series with no slice timing
    orientation = np.asarray(by_instance[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    k_axis_lps = np.asarray(nib.load(reference_nifti).affine)[:3, 2] * [-1, -1, 1]
    sign = 1.0 if float(k_axis_lps @ normal) > 0 else -1.0
    ordered: list[pydicom.Dataset] = []
    for start in range(0, len(by_instance), n):
        volume = by_instance[start : start + n]
        ordered += sorted(volume, key=lambda ds: sign * float(np.asarray(ds.ImagePositionPatient, float) @ normal))
    return ordered


def compare_suite(suite: str) -> tuple[int, int, list[str]]:
    """(series compared, fields compared, problems) for one suite against its shipped JSONs."""
    refs = references(suite)
    problems: list[str] = []
    n_series = n_fields = 0
    for datasets in series_of(suite).values():
        key = (int(datasets[0].SeriesNumber), str(datasets[0].SeriesDescription))
        if key not in refs:
            problems.append(f"{suite}: no dcm2niix sidecar for series {key}")
            continue
        reference, json_path = refs[key]
        ours = bids_sidecar(nifti_order(datasets, json_path.with_suffix(".nii")))
        n_series += 1
        n_fields += sum(1 for field in COMPARED if field in ours or field in reference)
        problems += [f"{suite} series {key}: {line}" for line in mismatches(ours, reference)]
    return n_series, n_fields, problems


@pytest.mark.parametrize("suite", SUITES)
def test_every_series_matches_dcm2niix_reference(suite: str) -> None:
    n_series, n_fields, problems = compare_suite(suite)
    assert not problems, "\n".join(problems)
    assert n_series == len(references(suite)) and n_fields >= 12 * n_series


def test_ge_mprage_matches_live_dcm2niix(tmp_path: Path) -> None:
    folder = real_path("dcm2niix", "dcm_qa_ge", "In")
    binary = dcm2niix_binary()
    run = subprocess.run(
        [binary, "-b", "o", "-f", "%s_%d", "-o", str(tmp_path), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (written,) = sorted(tmp_path.glob("*.json"))
    live = json.loads(written.read_text())
    (datasets,) = series_of("dcm_qa_ge").values()
    ours = bids_sidecar(nifti_order(datasets, None))
    assert not mismatches(ours, live)
    assert ours["InversionTime"] == pytest.approx(1.0) and "PhaseEncodingDirection" not in ours


def test_a_wrong_value_is_caught() -> None:
    refs = references("dcm_qa_nih")
    datasets = next(d for d in series_of("dcm_qa_nih").values() if d[0].SeriesDescription == "EPI PE=PA")
    reference, _ = refs[(4, "EPI PE=PA")]
    ours = bids_sidecar(nifti_order(datasets, None))
    assert not mismatches(ours, reference)
    for field, wrong in (
        ("PhaseEncodingDirection", "j-"),
        ("EchoTime", ours["EchoTime"] * 1.001),
        ("SliceTiming", [*ours["SliceTiming"][:-1], ours["SliceTiming"][-1] + 0.0025]),
        ("ImageType", ours["ImageType"][:-1]),
    ):
        assert mismatches({**ours, field: wrong}, reference) == [
            f"{field}: ours {wrong!r} dcm2niix {reference[field]!r}"
        ]


# ---------------------------------------------------------------- headers built in the test


def mr_header(**values: Any) -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def csa_blob(tags: dict[str, tuple[str, list[str]]]) -> bytes:
    """A Siemens CSA2 header (``SV10``) holding ``name -> (VR, item strings)``."""
    out = [b"SV10", b"\x04\x03\x02\x01", struct.pack("<2I", len(tags), 77)]
    for name, (vr, items) in tags.items():
        out.append(struct.pack("<64si4s3i", name.encode(), len(items), vr.encode(), 0, len(items), 77))
        for item in items:
            data = item.encode() + b"\x00"
            out.append(struct.pack("<4i", len(data), len(data), 77, 0) + data + b"\x00" * (-len(data) % 4))
    return b"".join(out)


def siemens_epi(axis: str, positive: int) -> Dataset:
    ds = mr_header(Manufacturer="SIEMENS", MRAcquisitionType="2D", InPlanePhaseEncodingDirection=axis)
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "OB", csa_blob({"PhaseEncodingDirectionPositive": ("IS", [str(positive)])}))
    return ds


def ge_epi(axis: str, flipped: bool, bottom_up: bool = False, epi: bool = True) -> Dataset:
    """A GE header whose user-defined data (0043,xx2A) carries the phase polarity bits."""
    blob = bytearray(1024)
    struct.pack_into("<f", blob, 0, 20.0)  # header version < 25.002: fields at their base offsets
    struct.pack_into("<h", blob, 0x3A, 0x800 if epi else 0)
    struct.pack_into("<h", blob, 0x30, 4 if flipped else 0)
    struct.pack_into("<h", blob, 0x394, 2 if bottom_up else 0)
    ds = mr_header(Manufacturer="GE MEDICAL SYSTEMS", MRAcquisitionType="2D", InPlanePhaseEncodingDirection=axis)
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2A, "OB", bytes(blob))
    return ds


def test_milliseconds_become_seconds() -> None:
    ds = mr_header(EchoTime="30", RepetitionTime="2435.37", InversionTime="1000", FlipAngle="76", SliceThickness="3")
    sidecar = bids_sidecar([ds])
    assert sidecar["EchoTime"] == pytest.approx(0.03)
    assert sidecar["RepetitionTime"] == pytest.approx(2.43537)
    assert sidecar["InversionTime"] == pytest.approx(1.0)
    assert sidecar["FlipAngle"] == pytest.approx(76.0) and sidecar["SliceThickness"] == pytest.approx(3.0)


def test_missing_or_zero_fields_are_left_out() -> None:
    sidecar = bids_sidecar([mr_header(InversionTime="0", SeriesDescription="T1 'post' \\ \"x\"")])
    assert sidecar == {"Modality": "MR", "SeriesDescription": "T1 'post' \\ \"x\""}
    with pytest.raises(ValueError, match="at least one"):
        bids_sidecar([])


def test_vendor_names_lists_and_field_strength() -> None:
    ds = mr_header(
        Manufacturer="GE MEDICAL SYSTEMS",
        ScanningSequence=["EP", "GR"],
        ImageType=["ORIGINAL", "PRIMARY", "M", "ECHO_00"],
        MagneticFieldStrength="15000",
        SeriesNumber="7",
    )
    sidecar = bids_sidecar([ds])
    assert sidecar["Manufacturer"] == "GE" and sidecar["ScanningSequence"] == "EP\\GR"
    assert sidecar["ImageType"] == ["ORIGINAL", "PRIMARY", "M", "ECHO", "00"]  # GE: no magnitude tag, none added
    assert sidecar["MagneticFieldStrength"] == pytest.approx(1.5) and sidecar["SeriesNumber"] == 7
    siemens = bids_sidecar([mr_header(Manufacturer="SIEMENS", ImageType=["ORIGINAL", "PRIMARY", "M", "ND"])])
    assert siemens["ImageType"] == ["ORIGINAL", "PRIMARY", "M", "ND", "MAGNITUDE"]


@pytest.mark.parametrize(
    ("axis", "positive", "expected"), [("COL", 1, "j-"), ("COL", 0, "j"), ("ROW", 1, "i"), ("ROW", 0, "i-")]
)
def test_siemens_polarity(axis: str, positive: int, expected: str) -> None:
    sidecar = bids_sidecar([siemens_epi(axis, positive)])
    assert sidecar["PhaseEncodingDirection"] == expected and "PhaseEncodingAxis" not in sidecar


@pytest.mark.parametrize(
    ("axis", "flipped", "bottom_up", "expected"),
    [("COL", False, False, "j-"), ("COL", True, False, "j"), ("COL", False, True, "j"), ("ROW", False, False, "i")],
)
def test_ge_polarity(axis: str, flipped: bool, bottom_up: bool, expected: str) -> None:
    sidecar = bids_sidecar([ge_epi(axis, flipped, bottom_up)])
    assert sidecar["PhaseEncodingDirection"] == expected and "PhaseEncodingAxis" not in sidecar


def test_unknown_polarity_gives_the_axis_only_and_3d_gives_neither() -> None:
    assert bids_sidecar([ge_epi("COL", flipped=False, epi=False)])["PhaseEncodingAxis"] == "j"
    assert "PhaseEncodingDirection" not in bids_sidecar([ge_epi("COL", flipped=False, epi=False)])
    assert bids_sidecar([mr_header(InPlanePhaseEncodingDirection="ROW")]) == {
        "Modality": "MR",
        "PhaseEncodingAxis": "i",
    }
    three_d = siemens_epi("COL", 1)
    three_d.MRAcquisitionType = "3D"
    assert not {"PhaseEncodingDirection", "PhaseEncodingAxis"} & set(bids_sidecar([three_d]))


def test_corrupt_private_headers_are_data_not_errors() -> None:
    ds = siemens_epi("COL", 1)
    ds.private_block(0x0029, "SIEMENS CSA HEADER").add_new(0x10, "OB", b"SV10garbage")
    assert bids_sidecar([ds])["PhaseEncodingAxis"] == "j"
    ge = ge_epi("COL", flipped=False)
    ge.private_block(0x0043, "GEMS_PARM_01").add_new(0x2A, "OB", b"\x00" * 20)
    assert bids_sidecar([ge])["PhaseEncodingAxis"] == "j"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_malformed_numbers_are_left_out() -> None:
    def raw(tag: int, vr: str, value: bytes) -> RawDataElement:
        return RawDataElement(Tag(tag), vr, len(value), value, 0, True, True)

    elements = {0x00200011: ("IS", b"abc "), 0x00180087: ("DS", b"1e400 "), 0x00180081: ("DS", b"nan ")}
    ds = Dataset({Tag(tag): raw(tag, vr, value) for tag, (vr, value) in elements.items()})
    ds[Tag(0x00180080)] = raw(0x00180080, "DS", b"3000")  # type: ignore[assignment]
    assert bids_sidecar([ds]) == {"RepetitionTime": pytest.approx(3.0)}
