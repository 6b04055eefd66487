"""Tests for the deterministic synthetic sample-data generators (``medimg.synth``)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from scipy import ndimage

from medimg.synth import (
    DEFAULT_COUNTS,
    SITE_NAMES,
    SITES,
    generate_brain,
    generate_cxr,
    generate_mammo,
    generate_sample_data,
)
from medimg.synth.brain import SEQUENCES, brats_affine, case_id
from medimg.synth.common import item_rng, smooth_field, stratified_choice
from medimg.synth.cxr import render_cxr
from medimg.synth.dicomio import (
    SeriesWriter,
    compress_lossless,
    new_dataset,
    set_instance_uid,
    set_pixels,
)
from medimg.synth.mammo import FAT_LEVEL, GLAND_LEVEL

N_CXR = 20
N_MAMMO = 4
N_BRAIN = 2
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
HEX32_RE = re.compile(r"^[0-9a-f]{32}$")


# --------------------------------------------------------------------------- helpers


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Return the header and rows of a CSV file."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Map every file under ``root`` (relative POSIX path) to its content."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated set (seed 0) shared by the read-only tests."""
    root = tmp_path_factory.mktemp("synth")
    generate_cxr(root / "cxr", seed=0, count=N_CXR)
    generate_mammo(root / "mammo", seed=0, count=N_MAMMO)
    generate_brain(root / "brain", seed=0, count=N_BRAIN)
    return root


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny full runs: seed 0 twice and seed 1 once."""
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path_factory.mktemp(f"run_{name}")
        generate_sample_data(out, seed=seed, count=1)
        runs[name] = out
    return runs


@pytest.fixture(scope="module")
def cxr_records(sample: Path) -> dict[str, dict[str, object]]:
    """patientId → {"ds": dataset, "boxes": [...], "target": int, "class": str}."""
    root = sample / "cxr"
    _, label_rows = read_csv(root / "stage_2_train_labels.csv")
    _, class_rows = read_csv(root / "stage_2_detailed_class_info.csv")
    records: dict[str, dict[str, object]] = {}
    for row in label_rows:
        rec = records.setdefault(row["patientId"], {"boxes": [], "target": int(row["Target"])})
        if row["Target"] == "1":
            rec["boxes"].append(tuple(int(float(row[k])) for k in ("x", "y", "width", "height")))
    for row in class_rows:
        records[row["patientId"]]["class"] = row["class"]
    for pid, rec in records.items():
        rec["ds"] = pydicom.dcmread(root / "stage_2_train_images" / f"{pid}.dcm")
    return records


@pytest.fixture(scope="module")
def mammo_images(sample: Path) -> list[dict[str, object]]:
    """One entry per mammogram: CSV row, site, dataset and decoded pixels."""
    images = []
    for site in SITES:
        site_root = sample / "mammo" / site.name
        _, rows = read_csv(site_root / "breast-level_annotations.csv")
        for row in rows:
            path = site_root / "images" / row["study_id"] / f"{row['image_id']}.dicom"
            ds = pydicom.dcmread(path)
            images.append({"row": row, "site": site, "ds": ds, "pixels": ds.pixel_array})
    return images


def brain_series(case_dir: Path) -> dict[str, list[pydicom.Dataset]]:
    """Sequence name → datasets of that series (file order)."""
    series: dict[str, list[pydicom.Dataset]] = {}
    for series_dir in sorted(p for p in case_dir.iterdir() if p.is_dir()):
        seq = series_dir.name.split("_", 1)[1]
        series[seq] = [pydicom.dcmread(f) for f in sorted(series_dir.glob("*.dcm"))]
    return series


# --------------------------------------------------------------------------- API / determinism


def test_summary_and_layout(small_runs: dict[str, Path]) -> None:
    out = small_runs["a"]
    assert {p.name for p in out.iterdir()} == {"cxr", "mammo", "brain"}
    assert {p.name for p in (out / "mammo").iterdir()} == set(SITE_NAMES)
    assert (out / "brain" / "nifti").is_dir() and (out / "brain" / "dicom").is_dir()
    summary = generate_sample_data(out, seed=0, count=1)  # rewriting is idempotent
    d = json.loads(json.dumps(summary.to_dict()))
    assert set(d["datasets"]) == {"cxr", "mammo", "brain"}
    assert d["datasets"]["cxr"]["root"] == str(out / "cxr")
    assert d["datasets"]["mammo"]["n_items"] == len(SITES)
    files_on_disk = [p for p in out.rglob("*") if p.is_file()]
    assert summary.n_files == len(files_on_disk)
    assert summary.n_bytes == sum(p.stat().st_size for p in files_on_disk)
    assert not [p for p in files_on_disk if p.name.endswith(".tmp")]
    assert dict(DEFAULT_COUNTS) == {"cxr": 24, "mammo": 4, "brain": 3}


def test_same_seed_is_byte_identical(small_runs: dict[str, Path]) -> None:
    a, b = tree_bytes(small_runs["a"]), tree_bytes(small_runs["b"])
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_different_seed_differs(small_runs: dict[str, Path]) -> None:
    a, c = tree_bytes(small_runs["a"]), tree_bytes(small_runs["c"])
    # Hashed ids and UUIDs change, so the file sets differ ...
    assert a.keys() != c.keys()
    # ... and so does content under names shared by both seeds (brain layout).
    shared = [k for k in a.keys() & c.keys() if k.endswith(".nii.gz")]
    assert shared and all(a[k] != c[k] for k in shared)


def test_count_does_not_change_earlier_items(small_runs: dict[str, Path], sample: Path) -> None:
    small = tree_bytes(small_runs["a"])
    for rel, data in small.items():
        if rel.startswith(("cxr/stage_2_train_images/", "brain/nifti/")) or (
            rel.startswith("mammo/") and rel.endswith(".dicom")
        ):
            assert (sample / rel).read_bytes() == data, rel


def test_only_and_validation(tmp_path: Path) -> None:
    summary = generate_sample_data(tmp_path, seed=3, only=["cxr"], count=2)
    assert list(summary.datasets) == ["cxr"]
    assert [p.name for p in tmp_path.iterdir()] == ["cxr"]
    with pytest.raises(ValueError, match="unknown dataset"):
        generate_sample_data(tmp_path, only=["ct"])
    with pytest.raises(ValueError):
        generate_sample_data(tmp_path, count=-1)


def test_stratified_choice_and_smooth_field() -> None:
    pattern = ("x",) * 4 + ("y",) * 6
    block = [stratified_choice(5, "t", i, pattern) for i in range(10, 20)]
    assert sorted(block) == sorted(pattern)
    field = smooth_field(np.random.default_rng(0), (64, 80), 12.0)
    assert field.shape == (64, 80) and field.dtype == np.float32
    assert abs(float(field.mean())) < 1e-4 and abs(float(field.std()) - 1.0) < 1e-3
    # Smooth: neighbouring pixels are strongly correlated.
    assert np.corrcoef(field[:, :-1].ravel(), field[:, 1:].ravel())[0, 1] > 0.95


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
def test_series_writer_matches_pydicom(syntax: str) -> None:
    ds = new_dataset(
        sop_class_uid=MRImageStorage,
        sop_instance_uid="1.2.3",
        study_instance_uid="1.2.4",
        series_instance_uid="1.2.5",
        modality="MR",
        patient_id="P",
    )
    ds.ImagePositionPatient = ["0", "0", "0"]
    ds.InstanceNumber = 1
    ds.RescaleSlope = "0.5"
    writer = None
    for k in range(3):
        set_instance_uid(ds, "1.2.3." + "9" * (k + 1))
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = ["0", "0", str(2.5 * k)]
        set_pixels(ds, (np.arange(32 * 24, dtype=np.int16).reshape(32, 24) * (k - 1)))
        compress_lossless(ds, syntax)
        if writer is None:
            writer = SeriesWriter(ds, ["SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "PixelData"])
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert writer.encode(ds) == buf.getvalue()


# --------------------------------------------------------------------------- CXR


def test_cxr_csvs(sample: Path, cxr_records: dict[str, dict[str, object]]) -> None:
    root = sample / "cxr"
    header, rows = read_csv(root / "stage_2_train_labels.csv")
    assert (root / "stage_2_train_labels.csv").read_text().splitlines()[0] == ("patientId,x,y,width,height,Target")
    assert header == ["patientId", "x", "y", "width", "height", "Target"]
    assert (root / "stage_2_detailed_class_info.csv").read_text().splitlines()[0] == ("patientId,class")
    files = sorted(p.stem for p in (root / "stage_2_train_images").glob("*.dcm"))
    assert sorted(cxr_records) == files and len(files) == N_CXR
    assert all(UUID_RE.match(pid) for pid in files)
    for row in rows:
        if row["Target"] == "0":
            assert [row[k] for k in ("x", "y", "width", "height")] == ["", "", "", ""]
    positives = [r for r in cxr_records.values() if r["target"] == 1]
    assert len(positives) == 8  # 4 per block of 10
    classes = {r["class"] for r in cxr_records.values()}
    assert classes == {"Lung Opacity", "No Lung Opacity / Not Normal", "Normal"}
    for rec in cxr_records.values():
        assert (rec["class"] == "Lung Opacity") == (rec["target"] == 1)
        assert (len(rec["boxes"]) in (1, 2)) == (rec["target"] == 1)
        for x, y, w, h in rec["boxes"]:
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= rec["ds"].Columns and y + h <= rec["ds"].Rows


def test_cxr_headers_and_codecs(cxr_records: dict[str, dict[str, object]]) -> None:
    datasets = [rec["ds"] for rec in cxr_records.values()]
    syntaxes = [ds.file_meta.TransferSyntaxUID for ds in datasets]
    assert syntaxes.count(JPEGBaseline8Bit) == N_CXR // 2
    assert set(syntaxes) == {JPEGBaseline8Bit, ExplicitVRLittleEndian}
    assert {ds.Modality for ds in datasets} == {"CR", "DX"}
    assert {ds.ViewPosition for ds in datasets} == {"PA", "AP"}
    assert len({ds.StudyInstanceUID for ds in datasets}) == N_CXR
    assert len({ds.SeriesInstanceUID for ds in datasets}) == N_CXR
    for pid, rec in cxr_records.items():
        ds = rec["ds"]
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.PatientID == pid and str(ds.PatientName) == pid
        assert ds.SeriesDescription == f"view: {ds.ViewPosition}"
        assert ds.BodyPartExamined == "CHEST" and ds.StudyDate == "19010101"
        assert ds.PatientSex in ("M", "F") and ds.PatientAge.isdigit()
        assert (ds.Rows, ds.Columns) == (256, 256)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.572, 0.572])
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            8,
            8,
            7,
            0,
        )
        assert "ImagePositionPatient" not in ds and "ImageOrientationPatient" not in ds
        arr = ds.pixel_array
        assert arr.shape == (256, 256) and arr.dtype == np.uint8 and arr.std() > 10
        if ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:
            assert ds.LossyImageCompression == "01"
            assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        else:
            assert "LossyImageCompression" not in ds


def test_cxr_opacity_inside_boxes(cxr_records: dict[str, dict[str, object]]) -> None:
    negatives = np.stack([r["ds"].pixel_array.astype(float) for r in cxr_records.values() if r["target"] == 0])
    diffs = []
    for rec in cxr_records.values():
        arr = rec["ds"].pixel_array.astype(float)
        for x, y, w, h in rec["boxes"]:
            inside = arr[y : y + h, x : x + w].mean()
            same_region_in_negatives = negatives[:, y : y + h, x : x + w].mean()
            diffs.append(inside - same_region_in_negatives)
    assert len(diffs) >= 8
    assert min(diffs) > 0.0 and float(np.median(diffs)) > 12.0


def test_cxr_opacity_paired_with_same_anatomy() -> None:
    # The anatomy is drawn before the opacities, so the same generator state
    # renders the same chest with and without pneumonia.
    for i in range(6):
        pos, boxes = render_cxr(item_rng(0, "test", i), 256, label_class="Lung Opacity")
        neg, none = render_cxr(item_rng(0, "test", i), 256, label_class="Normal")
        assert none == () and 1 <= len(boxes) <= 2
        diff = pos.astype(float) - neg.astype(float)
        for b in boxes:
            inside = diff[b.y : b.y + b.height, b.x : b.x + b.width]
            assert inside.mean() > 12.0
            ring = np.ones_like(diff, dtype=bool)
            ring[max(b.y - 12, 0) : b.y + b.height + 12, max(b.x - 12, 0) : b.x + b.width + 12] = False
            assert inside.mean() > 10 * abs(diff[ring].mean())


def test_cxr_full_size(tmp_path: Path) -> None:
    summary = generate_cxr(tmp_path, seed=0, count=1, full_size=True)
    assert summary.n_files == 3
    ds = pydicom.dcmread(next((tmp_path / "stage_2_train_images").glob("*.dcm")))
    assert (ds.Rows, ds.Columns) == (1024, 1024)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.143, 0.143])
    assert ds.pixel_array.shape == (1024, 1024)


# --------------------------------------------------------------------------- mammography


def test_mammo_layout_and_csv(sample: Path, mammo_images: list[dict[str, object]]) -> None:
    expected = "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split"
    for site in SITES:
        csv_path = sample / "mammo" / site.name / "breast-level_annotations.csv"
        assert csv_path.read_text().splitlines()[0] == expected
        files = list((sample / "mammo" / site.name / "images").glob("*/*.dicom"))
        assert len(files) == 4 * N_MAMMO
    studies: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    densities: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for img in mammo_images:
        row, ds = img["row"], img["ds"]
        assert all(HEX32_RE.match(row[k]) for k in ("study_id", "series_id", "image_id"))
        assert row["laterality"] in ("L", "R") and row["view_position"] in ("CC", "MLO")
        assert re.fullmatch(r"BI-RADS [1-5]", row["breast_birads"])
        assert re.fullmatch(r"DENSITY [A-D]", row["breast_density"])
        assert row["split"] in ("training", "test")
        assert (int(row["height"]), int(row["width"])) == (ds.Rows, ds.Columns)
        studies[(img["site"].name, row["study_id"])].add((row["laterality"], row["view_position"]))
        densities[(img["site"].name, row["study_id"], row["laterality"])].add(row["breast_density"])
    assert len(studies) == N_MAMMO * len(SITES)
    assert all(v == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")} for v in studies.values())
    assert all(len(v) == 1 for v in densities.values())  # one density per breast
    all_densities = [img["row"]["breast_density"] for img in mammo_images]
    assert set(all_densities) == {"DENSITY A", "DENSITY B", "DENSITY C", "DENSITY D"}


def test_mammo_headers(mammo_images: list[dict[str, object]]) -> None:
    orientation = {
        ("R", "CC"): "P\\L",
        ("L", "CC"): "A\\R",
        ("R", "MLO"): "P\\F",
        ("L", "MLO"): "A\\F",
    }
    codes = {"CC": "399162004", "MLO": "399368009"}
    for img in mammo_images:
        ds, row, site = img["ds"], img["row"], img["site"]
        lat, view = row["laterality"], row["view_position"]
        assert ds.SOPClassUID == DigitalMammographyXRayImageStorageForPresentation
        assert ds.Modality == "MG" and ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.ImageLaterality == lat and "Laterality" not in ds
        assert ds.ViewPosition == view
        assert ds.ViewCodeSequence[0].CodeValue == codes[view]
        assert ds.ViewCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert "\\".join(ds.PatientOrientation) == orientation[(lat, view)]
        assert ds.BodyPartExamined == "BREAST" and ds.BreastImplantPresent in ("YES", "NO")
        assert ds.Manufacturer == site.manufacturer and float(ds.BodyPartThickness) > 0
        assert "ImagerPixelSpacing" in ds and "WindowCenter" in ds and "WindowWidth" in ds
        assert ("PixelSpacing" in ds) == site.has_pixel_spacing
        assert "ImagePositionPatient" not in ds and "ImageOrientationPatient" not in ds
        assert ds.PhotometricInterpretation == site.photometric
        assert ds.BitsStored == site.bits_stored
        assert ds.file_meta.TransferSyntaxUID == site.transfer_syntax_uid
        assert (ds.Rows, ds.Columns) == site.matrix()
        assert int(img["pixels"].max()) <= site.max_value
    # The vendor profiles really differ.
    assert {s.photometric for s in SITES} == {"MONOCHROME1", "MONOCHROME2"}
    assert {s.bits_stored for s in SITES} == {12, 14, 16}
    assert {s.transfer_syntax_uid for s in SITES} == {
        ExplicitVRLittleEndian,
        RLELossless,
        JPEG2000Lossless,
    }
    assert len({s.response for s in SITES}) == 3 and len({s.matrix() for s in SITES}) == 3
    assert len({s.pixel_spacing_mm() for s in SITES}) == 3
    implants = [img["ds"].BreastImplantPresent for img in mammo_images]
    assert 1 <= implants.count("YES") <= len(implants) // 8


def test_mammo_breast_side_and_monochrome1(mammo_images: list[dict[str, object]]) -> None:
    for img in mammo_images:
        site, ds = img["site"], img["ds"]
        raw = img["pixels"].astype(float)
        shown = site.max_value - raw if ds.PhotometricInterpretation == "MONOCHROME1" else raw
        breast = ndimage.gaussian_filter(site.decode(img["pixels"]), 2.0) > 0.12
        assert shown[breast].mean() > shown[~breast].mean() + 0.1 * site.max_value
        cols = shown.mean(axis=0)
        half = cols.size // 2
        chest_wall_right = cols[half:].mean() > cols[:half].mean()
        assert chest_wall_right == (ds.ImageLaterality == "R")
        wall = -1 if ds.ImageLaterality == "R" else 0
        assert breast[:, wall].mean() > 0.4 and breast[:, -1 - wall].mean() == 0.0


def test_mammo_density_ordering(mammo_images: list[dict[str, object]]) -> None:
    fractions: dict[str, list[float]] = defaultdict(list)
    for img in mammo_images:
        if img["row"]["view_position"] != "CC" or img["ds"].BreastImplantPresent == "YES":
            continue
        display = ndimage.gaussian_filter(img["site"].decode(img["pixels"]), 1.5)
        breast = display > 0.4 * FAT_LEVEL
        dense = display > 0.5 * (FAT_LEVEL + GLAND_LEVEL)
        fractions[img["row"]["breast_density"][-1]].append(dense[breast].mean())
    means = [float(np.mean(fractions[d])) for d in "ABCD"]
    assert means == sorted(means) and np.all(np.diff(means) > 0.1), means
    assert means[0] < 0.3 and means[3] > 0.7, means


# --------------------------------------------------------------------------- brain


def test_brain_nifti(sample: Path) -> None:
    root = sample / "brain" / "nifti"
    assert sorted(p.name for p in root.iterdir()) == [case_id(i) for i in range(N_BRAIN)]
    ball = ndimage.generate_binary_structure(3, 1)
    for i in range(N_BRAIN):
        cid = case_id(i)
        names = sorted(p.name for p in (root / cid).iterdir())
        assert names == sorted(f"{cid}_{s}.nii.gz" for s in (*SEQUENCES, "seg"))
        seg_img = nib.load(root / cid / f"{cid}_seg.nii.gz")
        seg = np.asarray(seg_img.dataobj)
        assert seg.dtype == np.uint8 and seg.shape == (96, 96, 64)
        assert np.allclose(seg_img.affine, brats_affine((96, 96, 64), (2.0, 2.0, 2.0)))
        assert np.allclose(seg_img.affine[:3, :3], np.diag([-2.0, -2.0, 2.0]))
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
        ncr, et, whole = seg == 1, seg == 4, seg > 0
        core = ncr | et
        assert np.all(core[ndimage.binary_dilation(ncr, ball)])  # ET rim surrounds NCR
        assert np.all(whole[ndimage.binary_dilation(core, ball)])  # oedema surrounds core
        images = {}
        for seq in SEQUENCES:
            img = nib.load(root / cid / f"{cid}_{seq}.nii.gz")
            assert img.get_data_dtype() == np.float32
            assert np.allclose(img.affine, seg_img.affine)
            images[seq] = np.asarray(img.dataobj)
        brain = images["t1"] != 0
        assert all(np.array_equal(brain, images[s] != 0) for s in SEQUENCES)
        assert all(images[s].min() == 0.0 for s in SEQUENCES)
        assert 0.25 < brain.mean() < 0.6 and not brain[0].any() and not brain[:, :, 0].any()
        assert np.all(brain[whole])
        normal = brain & ~whole
        med = {s: float(np.median(images[s][normal])) for s in SEQUENCES}
        assert images["t1ce"][et].mean() > 1.4 * med["t1ce"]  # enhancing rim
        assert images["t1"][core].mean() < med["t1"]  # hypointense on T1
        assert images["flair"][seg == 2].mean() > 1.5 * med["flair"]  # oedema on FLAIR
        assert images["t2"][seg == 2].mean() > 1.5 * med["t2"]  # oedema on T2
        # CSF: bright on T2, dark on FLAIR (the voxels brightest on T2).
        csf = normal & (images["t2"] > np.percentile(images["t2"][normal], 97))
        assert images["flair"][csf].mean() < med["flair"]
        # Grey/white contrast on T1: a spread of normal-tissue intensities.
        q10, q90 = np.percentile(images["t1"][normal & ~csf], [10, 90])
        assert q90 - q10 > 0.15 * med["t1"]


def test_brain_dicom_matches_nifti_through_affines(sample: Path) -> None:
    for i in range(N_BRAIN):
        cid = case_id(i)
        case_dir = sample / "brain" / "dicom" / cid
        assert (case_dir / "README.txt").is_file()
        series = brain_series(case_dir)
        assert sorted(series) == sorted(SEQUENCES)
        everything = [ds for s in series.values() for ds in s]
        assert len({ds.StudyInstanceUID for ds in everything}) == 1
        assert len({ds.FrameOfReferenceUID for ds in everything}) == 1
        assert len({ds.SeriesInstanceUID for ds in everything}) == 4
        assert {ds.PatientID for ds in everything} == {cid}
        assert {ds.SOPClassUID for ds in everything} == {MRImageStorage}
        assert {ds.Modality for ds in everything} == {"MR"}
        affine = nib.load(sample / "brain" / "nifti" / cid / f"{cid}_t1.nii.gz").affine
        inv = np.linalg.inv(affine)
        for seq, datasets in series.items():
            nifti = np.asarray(nib.load(sample / "brain" / "nifti" / cid / f"{cid}_{seq}.nii.gz").dataobj)
            first = datasets[0]
            # only the post-contrast T1 may carry bolus tags (some styles name it only); only the
            # FLAIR has a long inversion (MP-RAGE/BRAVO T1s are inversion-prepared with a short TI)
            assert seq == "t1ce" or "ContrastBolusAgent" not in first
            assert (float(first.get("InversionTime") or 0) >= 1500) == (seq == "flair")
            assert float(first.RepetitionTime) > 0 and float(first.EchoTime) > 0
            seen = set()
            for ds in datasets:
                iop = np.array(ds.ImageOrientationPatient, dtype=float)
                assert np.allclose(iop, [1, 0, 0, 0, 1, 0])
                ipp = np.array(ds.ImagePositionPatient, dtype=float)
                row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
                assert float(ds.SpacingBetweenSlices) == pytest.approx(float(ds.SliceThickness))
                r, c = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
                lps = ipp[:, None, None] + iop[:3, None, None] * c * col_spacing + iop[3:, None, None] * r * row_spacing
                ras = lps * np.array([-1.0, -1.0, 1.0])[:, None, None]
                ijk = np.tensordot(inv[:3, :3], ras, axes=1) + inv[:3, 3, None, None]
                assert np.allclose(ijk[0], c) and np.allclose(ijk[1], r)
                k = int(round(float(ijk[2, 0, 0])))
                assert np.allclose(ijk[2], k) and 0 <= k < nifti.shape[2]
                seen.add(k)
                values = apply_modality_lut(ds.pixel_array, ds)
                assert np.array_equal(values, nifti[:, :, k].T)
            assert seen == set(range(nifti.shape[2]))


def test_brain_dicom_variants(sample: Path) -> None:
    rle = rescaled = 0
    for i in range(N_BRAIN):
        case_dir = sample / "brain" / "dicom" / case_id(i)
        extra = [p for p in case_dir.iterdir() if p.is_file()]
        assert [p.name for p in extra] == ["README.txt"]
        scrambled = []
        for series_dir in (p for p in case_dir.iterdir() if p.is_dir()):
            number, seq = series_dir.name.split("_", 1)
            datasets = [pydicom.dcmread(f) for f in series_dir.glob("*.dcm")]
            assert all(int(ds.SeriesNumber) == int(number) for ds in datasets)
            assert all(f"IM{ds.InstanceNumber}.dcm" in {p.name for p in series_dir.iterdir()} for ds in datasets)
            by_number = sorted(datasets, key=lambda d: int(d.InstanceNumber))
            z = [float(d.ImagePositionPatient[2]) for d in by_number]
            if z != sorted(z):
                scrambled.append(seq)
            descriptions = {ds.SeriesDescription for ds in datasets}
            assert len(descriptions) == 1
            tsyntax = {ds.file_meta.TransferSyntaxUID for ds in datasets}
            assert len(tsyntax) == 1
            rle += RLELossless in tsyntax
            rescaled += float(datasets[0].RescaleSlope) != 1.0
        assert len(scrambled) == 1
    assert rle >= 1 and rescaled >= 1
    # Case 0 uses BraTS-like descriptions, later cases scanner-style ones.
    names0 = {p.name for p in (sample / "brain" / "dicom" / case_id(0)).iterdir()}
    assert all(any(n.endswith(f"_{s}") for n in names0) for s in SEQUENCES)
    desc1 = {
        pydicom.dcmread(next(p.glob("*.dcm")), stop_before_pixels=True).SeriesDescription
        for p in (sample / "brain" / "dicom" / case_id(1)).iterdir()
        if p.is_dir()
    }
    assert desc1 != set(SEQUENCES)


def test_every_dicom_decodes(sample: Path) -> None:
    files = [*sample.rglob("*.dcm"), *sample.rglob("*.dicom")]
    assert len(files) == N_CXR + 4 * N_MAMMO * len(SITES) + N_BRAIN * 4 * 64
    syntaxes = set()
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
    assert syntaxes == {ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGBaseline8Bit}
