"""medimg run brats on real brain MR as it arrives: BraTS 2023 cases (LPS and RAS affines) and a
clinical TCGA case (not skull-stripped, 5.5 mm slices, sequences on different grids).

Label conventions (input naming -> output labels), labels on the source grid with the source
affine, and the input checks that say when a case is not what a BraTS-trained model expects.
The real cases are the shared files (skipped with a reason when absent); the network is an
untrained compact SegResNet with a tumour bias (every voxel it sees becomes ET, so that the ET
value is in every label file) on a 2 mm grid in one patch, which keeps 240x240x155 volumes fast.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from checkpoints import untrained_brats_checkpoint
from real_data import real_path
from typer.testing import CliRunner

from medimg.cli import app
from pipelines import get_pipeline
from pipelines.brats import (
    LABEL_CONVENTIONS,
    channels_to_labels,
    choose_label_convention,
    convert_labels,
)
from pipelines.brats_inputs import border_nonzero_fraction, input_checks

runner = CliRunner()
BRATS_CASES = {"BraTS-GLI-00001-000": "LPS", "BraTS-MET-00110-000": "RAS"}
TCGA = "TCGA-FG-6692"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "brats.pt"
    return untrained_brats_checkpoint(
        path, tumour_bias=3.0, roi_size=(128, 128, 80), spacing=(2.0, 2.0, 2.0), overlap=0
    )


def _labels_match_source(labels_file: Path, source_file: Path) -> np.ndarray:
    """The label volume, after checking its shape and affine against the source (to 1e-6)."""
    labels, source = nib.load(labels_file), nib.load(source_file)
    assert labels.shape == source.shape
    assert np.abs(labels.affine - source.affine).max() < 1e-6, (labels.affine, source.affine)
    return np.asarray(labels.dataobj)


# --- without the real files -----------------------------------------------------------------


def test_label_convention_follows_the_naming_unless_set() -> None:
    assert choose_label_convention("auto", "brats2023")[0] == "brats2023"
    for naming in ("brats2021", "plain", "dicom"):
        convention, why = choose_label_convention("auto", naming)
        assert convention == "brats2020" and "ET = 4" in why and "2021" in why
    assert choose_label_convention("brats2023", "dicom") == ("brats2023", "set by --label-convention; ET = 3")
    assert choose_label_convention("brats2020", "brats2023")[0] == "brats2020"
    with pytest.raises(ValueError, match="unknown label convention"):
        choose_label_convention("brats2019", "brats2023")
    with pytest.raises(ValueError, match="unknown label convention"):
        get_pipeline("brats").configure(label_convention="2023")


def test_a_dicom_study_gets_the_2021_labels_unless_set(tmp_path: Path) -> None:
    series = SimpleNamespace(files=[str(tmp_path / "t1ce" / "1.dcm")])
    chosen = SimpleNamespace(picked={s: [(series, None)] for s in ("t1", "t1ce", "t2", "flair")})
    study = SimpleNamespace(PatientID="P1", StudyInstanceUID="1.2.3")
    (item,) = get_pipeline("brats").study_items(study, chosen)
    assert item["label_convention"] == "brats2020"
    assert item["label_convention_why"] == "auto: a DICOM study says no BraTS edition: the BraTS 2021 labels; ET = 4"
    (item,) = get_pipeline("brats").configure(label_convention="brats2023").study_items(study, chosen)
    assert item["label_convention"] == "brats2023"
    # the option is refused where it means nothing
    result = runner.invoke(
        app, ["run", "pneumonia", str(tmp_path), "-o", str(tmp_path / "o"), "--label-convention", "brats2023"]
    )
    assert result.exit_code == 2 and "--label-convention applies to brats" in result.output


def test_et_value_per_convention_and_conversion() -> None:
    tc = np.array([0, 1, 1, 0], bool)
    wt = np.array([1, 1, 1, 0], bool)
    et = np.array([0, 0, 1, 0], bool)
    assert channels_to_labels(np.stack([tc, wt, et]), "brats2023").tolist() == [2, 1, 3, 0]
    assert channels_to_labels(np.stack([tc, wt, et]), "brats2020").tolist() == [2, 1, 4, 0]
    assert convert_labels(np.array([0, 1, 2, 3]), "brats2023", "brats2020").tolist() == [0, 1, 2, 4]
    assert convert_labels(np.array([0, 1, 2, 4]), "brats2020", "brats2023").tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"labels \[4\] are not in the brats2023"):
        convert_labels(np.array([0, 4]), "brats2023", "brats2020")


def _volume(data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> object:
    from monai.data import MetaTensor

    return MetaTensor(
        torch.as_tensor(data[None]), affine=torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    )


def test_input_checks_on_synthetic_volumes() -> None:
    brain = np.zeros((20, 20, 20), np.float32)
    brain[5:15, 5:15, 5:15] = 100.0  # skull-stripped: zero background
    assert border_nonzero_fraction(brain) == 0.0
    assert input_checks({"t1ce": _volume(brain), "flair": _volume(brain)}, "t1ce") == []
    head = brain + np.random.default_rng(0).uniform(1, 5, brain.shape).astype(np.float32)  # background noise
    (found,) = input_checks({"t1ce": _volume(head), "flair": _volume(brain)}, "t1ce")
    assert found.startswith("not skull-stripped") and "t1ce 100%" in found and "flair" not in found
    thick = input_checks({"t1ce": _volume(brain, (0.9, 0.9, 5.5)), "flair": _volume(brain, (0.9, 0.9, 5.5))})
    assert len(thick) == 1 and "not 1 mm isotropic" in thick[0] and "0.90x0.90x5.50" in thick[0]
    other = input_checks({"t1ce": _volume(brain), "flair": _volume(brain[:, :, :18])}, "t1ce")
    assert len(other) == 1 and "different grids" in other[0] and "flair 20x20x18" in other[0]


# --- the real cases ---------------------------------------------------------------------------


def test_brats2023_cases_keep_their_grid_and_get_et_3(weights: Path, tmp_path: Path) -> None:
    brain = real_path("brain")
    for case in BRATS_CASES:
        real_path("brain", case)
    out = tmp_path / "out"
    args = ["run", "brats", str(brain), "--naming", "brats2023", "-o", str(out), "--weights", str(weights), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["case_id"]: r for r in _rows(out / "results.csv")}
    assert sorted(rows) == sorted(BRATS_CASES)  # the TCGA folder has no BraTS 2023 names
    for case, axcodes in BRATS_CASES.items():
        source = brain / case / f"{case}-t1c.nii.gz"
        assert "".join(nib.aff2axcodes(nib.load(source).affine)) == axcodes
        values = set(np.unique(_labels_match_source(out / case / rows[case]["labels_file"], source)).tolist())
        assert values <= {0, *LABEL_CONVENTIONS["brats2023"].values()} and 3 in values, values
        assert rows[case]["label_convention"] == "brats2023"
        assert "BraTS 2023 file naming" in rows[case]["label_convention_why"]
        assert rows[case]["input_check"] == ""  # BraTS data: no warning
    run = json.loads((out / "run.json").read_text())
    assert run["result_settings"]["label_convention"] == "auto"
    report = (out / "report.html").read_text()
    assert "BraTS 2023 file naming" in report and "Input checks" not in report
    # another convention on the same OUT is another result: refused without --overwrite
    again = runner.invoke(app, [*args, "--label-convention", "brats2020"])
    assert again.exit_code == 2 and "label_convention" in again.output


def test_clinical_case_is_resampled_onto_t1ce_and_flagged(weights: Path, tmp_path: Path) -> None:
    case_dir = real_path("brain", TCGA)
    out = tmp_path / "out"
    base = ["run", "brats", str(case_dir), "--weights", str(weights), "-q"]
    hint = runner.invoke(app, [*base, "-o", str(tmp_path / "hint")])
    assert hint.exit_code == 1
    (error,) = _rows(tmp_path / "hint" / "errors.csv")
    assert "no case with the brats2021 naming: --naming plain finds 1 case(s) (TCGA-FG-6692)" in error["reason"]
    result = runner.invoke(app, [*base, "--naming", "plain", "-o", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = _rows(out / "results.csv")
    assert row["case_id"] == TCGA
    # the labels are on the T1ce grid (256x224x26, oblique 0.9x0.9x5.5 mm), with its affine
    values = set(np.unique(_labels_match_source(out / TCGA / row["labels_file"], case_dir / "t1ce.nii.gz")).tolist())
    assert values <= {0, 1, 2, 4} and 4 in values, values
    assert row["label_convention"] == "brats2020" and "plain sequence names" in row["label_convention_why"]
    checks = row["input_check"].split("; ")
    assert [c.split(":")[0].split(",")[0] for c in checks] == [
        "not skull-stripped",
        "not 1 mm isotropic",
        "sequences on different grids",
    ], checks
    assert "t2 224x256x26" in row["input_check"] and "flair 208x256x26" in row["input_check"]
    report = (out / "report.html").read_text()
    assert "Input checks" in report and "not skull-stripped" in report


def test_labels_land_on_the_source_brain_in_lps_and_ras() -> None:
    """A voxel-wise 'network' (ET wherever T1c is non-zero) on the source grid: after RAS
    orientation and back, the ET voxels are exactly the source's non-zero T1c voxels. The ET value:
    the item's convention (as ``run`` plans it), else the checkpoint's (as ``evaluate`` calls it)."""
    task = get_pipeline("brats").configure(naming="brats2023")
    meta = {"preprocessing": {**task.preprocessing("segresnet-compact", (240, 240, 160)), "overlap": 0.0}}
    assert meta["preprocessing"]["labels"] == "brats2020"

    def model(x: torch.Tensor) -> torch.Tensor:
        return (20.0 * (x[:, :1] != 0) - 10.0).repeat(1, 3, 1, 1, 1)

    planned = {"BraTS-GLI-00001-000": ("brats2023", 3), "BraTS-MET-00110-000": (None, 4)}
    for case, (convention, et) in planned.items():
        folder = real_path("brain", case)
        names = zip(("t1", "t1ce", "t2", "flair"), ("t1n", "t1c", "t2w", "t2f"), strict=True)
        sources = {s: str(folder / f"{case}-{n}.nii.gz") for s, n in names}
        item = {"case_id": case, "source": "nifti", "sources": sources}
        if convention:
            item["label_convention"] = convention
        loaded = task.load(item, task.transforms(meta["preprocessing"], train=False))
        (result,) = task.infer(model, [loaded], [item], meta, device="cpu", timings={})
        brain = np.asarray(nib.load(sources["t1ce"]).dataobj) != 0
        labels = result.extras["labels"]
        assert set(np.unique(labels).tolist()) == {0, et}
        np.testing.assert_array_equal(labels == et, brain)
    assert result.row["label_convention_why"] == "the checkpoint's label convention; ET = 4"
