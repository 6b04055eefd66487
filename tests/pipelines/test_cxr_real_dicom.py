"""The pneumonia pipeline on two real chest radiographs as a PACS exports them: a SIIM-ACR CR
(JPEG Baseline, MONOCHROME2, 1024x1024) and a Canon DX (JPEG 2000 lossless, MONOCHROME1,
2128x2000). The network's input must be the image pydicom decodes, inverted for MONOCHROME1."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from checkpoints import untrained_checkpoint
from PIL import Image
from real_data import real_path
from skimage.transform import resize
from typer.testing import CliRunner

from medimg.cli import app
from medimg.safepath import safe_name
from pipelines import get_pipeline

runner = CliRunner()
FILES = {"siim-acr-1517875201.850819.dcm": "MONOCHROME2", "canon-dx-j2k-966.dcm": "MONOCHROME1"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("w") / "w.pt", "pneumonia", size=(64, 64))


def network_input_correlation(path: Path, weights: Path) -> float:
    """Correlation of the pipeline's network input with pydicom's stored pixels on the same grid:
    +1 when shown as stored, -1 when inverted."""
    from medimg.models import load_checkpoint

    _, meta = load_checkpoint(weights, pipeline="pneumonia")
    transform = get_pipeline("pneumonia").transforms(meta["preprocessing"], train=False)
    image = transform({"image": str(path)})["image"][0].numpy().T  # (X, Y) -> (rows, columns)
    stored = resize(pydicom.dcmread(path).pixel_array.astype(float), image.shape, anti_aliasing=True)
    return float(np.corrcoef(image.ravel(), stored.ravel())[0, 1])


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_network_sees_the_decoded_image_with_bone_bright(name: str, weights: Path) -> None:
    path = real_path("cxr", "dicom", name)
    assert pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation == FILES[name]
    correlation = network_input_correlation(path, weights)
    # MONOCHROME1 stores bone dark: the pipeline must invert it (an uninverted input gives +0.99).
    expected = -1.0 if FILES[name] == "MONOCHROME1" else 1.0
    assert correlation * expected > 0.99, correlation


def test_run_on_both_real_radiographs(weights: Path, tmp_path: Path) -> None:
    folder = real_path("cxr", "dicom")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "pneumonia", str(folder), "-o", str(out), "--weights", str(weights), "-q"])
    assert result.exit_code == 0, result.output
    with open(out / "results.csv", newline="") as fh:
        rows = {Path(r["source_file"]).name: r for r in csv.DictReader(fh)}
    assert set(rows) == set(FILES)
    for name, row in rows.items():
        ds = pydicom.dcmread(folder / name, stop_before_pixels=True)
        assert row["SOPInstanceUID"] == ds.SOPInstanceUID and row["ViewPosition"] == "PA"
        assert 0.0 <= float(row["probability"]) <= 1.0
        overlay = out / "studies" / safe_name(row["StudyInstanceUID"]) / row["overlay"]
        with Image.open(overlay) as picture:
            assert picture.size == (ds.Columns, ds.Rows)  # on the source pixel grid
