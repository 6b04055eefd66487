"""PNG/JPEG radiographs (medimg.pictures), the NIH and CheXpert label tables (medimg.image_datasets)
and the NIH-layout sample set (medimg.synth.cxr_png)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medimg.dicom.decode import LUMINANCE
from medimg.image_datasets import (
    ImageDatasetError,
    LabelPolicy,
    load_image_dataset,
    picture_metadata,
    read_nih_boxes,
)
from medimg.picture_transforms import LoadPictureOrDicomd
from medimg.pictures import (
    PictureError,
    find_pictures,
    has_dicom_files,
    load_picture,
    picture_shape,
    read_picture,
)
from medimg.synth import generate_sample_data
from medimg.synth.cxr_png import ENCODINGS, generate_cxr_png


@pytest.fixture(scope="module")
def nih(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nih") / "cxr-png"
    generate_cxr_png(root, seed=3, count=8)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _gradient(rows: int = 30, columns: int = 50) -> np.ndarray:
    """A non-square uint8 image whose value says where a pixel is (row * 3 + column)."""
    r, c = np.mgrid[0:rows, 0:columns]
    return (r * 3 + c).astype(np.uint8)


# --- pictures -------------------------------------------------------------------------------


def test_grey_files_keep_their_values_and_orientation(tmp_path: Path) -> None:
    image = _gradient()
    Image.fromarray(image).save(tmp_path / "g8.png")
    Image.fromarray(image.astype(np.uint16) * 400).save(tmp_path / "g16.png")
    values, converted = read_picture(tmp_path / "g8.png")
    assert values.dtype == np.float32 and not converted
    np.testing.assert_array_equal(values, image)
    values16, _ = read_picture(tmp_path / "g16.png")
    np.testing.assert_array_equal(values16, image.astype(np.float32) * 400)  # full 16-bit range kept
    assert values16.max() > 255 and picture_shape(tmp_path / "g16.png") == (30, 50)
    tensor = load_picture(tmp_path / "g8.png")  # MONAI layout (C, X = columns, Y = rows)
    assert tuple(tensor.shape) == (1, 50, 30)
    np.testing.assert_array_equal(tensor[0].numpy().T, image)


def test_colour_files_become_luminance_and_jpeg_reads(tmp_path: Path) -> None:
    rgb = np.zeros((20, 24, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 24), 128, np.uint8)]), mode="RGBA").save(tmp_path / "a.png")
    values, converted = read_picture(tmp_path / "c.png")
    expected = float(np.dot([200, 100, 50], LUMINANCE))
    assert converted and values.shape == (20, 24) and np.allclose(values, expected, atol=1e-3)
    np.testing.assert_allclose(read_picture(tmp_path / "a.png")[0], values)  # alpha dropped
    Image.fromarray(_gradient()).save(tmp_path / "j.jpg", quality=95)
    jpeg, _ = read_picture(tmp_path / "j.jpg")
    assert jpeg.shape == (30, 50) and np.abs(jpeg - _gradient()).mean() < 3


def test_unreadable_missing_and_oversized_files_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    Image.fromarray(_gradient()).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    # WeasyPrint (the PDF reports) tells Pillow on import to accept truncated files: still refused.
    monkeypatch.setattr("PIL.ImageFile.LOAD_TRUNCATED_IMAGES", True)
    for name, message in (("junk.png", "not a readable"), ("cut.png", "cannot decode"), ("gone.png", "not found")):
        with pytest.raises(PictureError, match=message) as info:
            read_picture(tmp_path / name)
        assert name in str(info.value)
    for variable in ("MEDIMG_MAX_FRAME_PIXELS", "MEDIMG_MAX_PIXELS"):  # the frame and the total limit
        with monkeypatch.context() as env:
            env.setenv(variable, "1000")
            with pytest.raises(PictureError, match=f"ok.png: .*exceeds the limit.*{variable}"):
                picture_shape(tmp_path / "ok.png")
    assert picture_shape(tmp_path / "ok.png") == (30, 50)


def test_the_loader_reads_pictures_itself_and_hands_other_paths_on(tmp_path: Path) -> None:
    Image.fromarray(_gradient()).save(tmp_path / "x.PNG")
    seen = []
    loader = LoadPictureOrDicomd(lambda d: seen.append(d["image"]) or {"image": "dicom"})
    assert tuple(loader({"image": str(tmp_path / "x.PNG"), "label": 1})["image"].shape) == (1, 50, 30)
    assert loader({"image": "a.dcm"})["image"] == "dicom" and seen == ["a.dcm"]


def test_folders_with_dicom_files_are_not_picture_folders(tmp_path: Path) -> None:
    Image.fromarray(_gradient()).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(_gradient()).save(tmp_path / "sub" / "b.jpeg")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "labels.csv").write_text("Path\n")
    assert [p.name for p in find_pictures(tmp_path)] == ["a.png", "b.jpeg"]
    assert not has_dicom_files(tmp_path)
    (tmp_path / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    assert has_dicom_files(tmp_path)


# --- NIH ChestX-ray14 -----------------------------------------------------------------------


def test_nih_labels_and_boxes_scaled_to_the_file(nih: Path) -> None:
    found = load_image_dataset(nih)
    assert found is not None and found.layout == "nih" and not found.problems
    table = {r["Image Index"]: r for r in _rows(nih / "Data_Entry_2017.csv")}
    boxes = read_nih_boxes(nih / "BBox_List_2017.csv")
    assert len(found.items) == len(table) == 8 and boxes
    for item in found.items:
        name = Path(item["image"]).name
        assert item["image_file"] == f"images_001/images/{name}"
        assert item["label"] == int("Pneumonia" in table[name]["Finding Labels"].split("|"))
        assert item["patient_id"] == table[name]["Patient ID"] and (item["Rows"], item["Columns"]) == (256, 256)
        scale = 256 / 1024  # the sample files are 256 pixels, the boxes on the 1024 grid
        expected = [[v * scale for v in b] for b in boxes.get(name, [])]
        np.testing.assert_allclose(np.reshape(item["boxes"], (-1, 4)), np.reshape(expected, (-1, 4)))
    assert {i["label"] for i in found.items} == {0, 1}
    assert all(bool(i["boxes"]) == bool(i["label"]) for i in found.items)


def test_nih_flat_folder_and_test_list(nih: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in find_pictures(nih):
        (flat / path.name).write_bytes(path.read_bytes())
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv"):
        (flat / name).write_bytes((nih / name).read_bytes())
    first = sorted(p.name for p in find_pictures(flat))[0]
    (flat / "test_list.txt").write_text(first + "\n")
    found = load_image_dataset(flat)
    assert found is not None and len(found.items) == 8
    assert [i["image_file"] for i in found.items if i.get("split") == "test"] == [first]


def test_nih_missing_and_unreadable_images_are_listed_and_the_others_kept(nih: Path, tmp_path: Path) -> None:
    folder = tmp_path / "nih"
    folder.mkdir()
    pictures = find_pictures(nih)
    for path in pictures:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "Data_Entry_2017.csv").write_bytes((nih / "Data_Entry_2017.csv").read_bytes())
    (folder / pictures[0].name).unlink()
    (folder / pictures[1].name).write_bytes(b"garbage")
    found = load_image_dataset(folder)
    assert found is not None and len(found.items) == 6 and len(found.problems) == 2
    assert any(pictures[0].name in p and "listed but not found" in p for p in found.problems)
    assert any(pictures[1].name in p and "not a readable" in p for p in found.problems)


def test_nih_tables_with_missing_columns_are_refused_naming_them(tmp_path: Path) -> None:
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\na.png,Pneumonia,1\n")
    with pytest.raises(ImageDatasetError, match=r"Data_Entry_2017.csv: missing column\(s\) \['View Position'\]"):
        load_image_dataset(tmp_path)
    (tmp_path / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w\n")
    with pytest.raises(ImageDatasetError, match=r"BBox_List_2017.csv: missing column\(s\) \['h\]'\]"):
        read_nih_boxes(tmp_path / "BBox_List_2017.csv")
    metadata, problems = picture_metadata(tmp_path)  # a run goes on without the table
    assert metadata == {} and "View Position" in problems[0]


# --- CheXpert -------------------------------------------------------------------------------


def _chexpert(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    labels = {"p1": "1.0", "p2": "0.0", "p3": "-1.0", "p4": "", "p5": "1.0", "p6": "2"}
    lines = ["Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Pneumonia"]
    for k, (patient, value) in enumerate(labels.items(), start=1):
        rel = f"train/patient0000{k}/study1/view1_frontal.jpg"
        (root / rel).parent.mkdir(parents=True)
        Image.fromarray(_gradient()).save(root / rel)
        view = "Lateral,," if patient == "p5" else "Frontal,AP,"
        lines.append(f"CheXpert-v1.0-small/{rel},Female,50,{view},{value}")
    lines.append("CheXpert-v1.0-small/train/patient00099/study1/view1_frontal.jpg,Male,40,Frontal,PA,,1.0")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def test_chexpert_label_policies(tmp_path: Path) -> None:
    root = _chexpert(tmp_path)

    def labels(policy: LabelPolicy) -> dict[str, int]:
        found = load_image_dataset(root, policy)
        assert found is not None and found.layout == "chexpert"
        return {i["patient_id"]: i["label"] for i in found.items}

    # default U-Ignore, blank negative; the lateral view (patient 5) is never used
    assert labels(LabelPolicy()) == {"patient00001": 1, "patient00002": 0, "patient00004": 0}
    assert labels(LabelPolicy(uncertain="ones"))["patient00003"] == 1
    assert labels(LabelPolicy(uncertain="zeros"))["patient00003"] == 0
    assert "patient00004" not in labels(LabelPolicy(blank="ignore"))
    found = load_image_dataset(root)
    assert found is not None and found.items[0]["image_file"] == "train/patient00001/study1/view1_frontal.jpg"
    assert any("line 7" in p and "'2'" in p for p in found.problems)  # not 1, 0, -1 or blank
    assert any("patient00099" in p and "not found" in p for p in found.problems)
    with pytest.raises(ValueError, match="uncertain label policy"):
        LabelPolicy(uncertain="maybe")


def test_chexpert_paths_never_leave_the_folder_and_the_finding_column_is_required(tmp_path: Path) -> None:
    root = _chexpert(tmp_path)
    Image.fromarray(_gradient()).save(tmp_path / "outside.png")
    (root / "train.csv").write_text("Path,Frontal/Lateral,Pneumonia\n../outside.png,Frontal,1\n")
    found = load_image_dataset(root)
    assert found is not None and not found.items and "../outside.png" in found.problems[0]
    (root / "train.csv").write_text("Path,Frontal/Lateral\nx.jpg,Frontal\n")
    with pytest.raises(ImageDatasetError, match=r"train.csv: missing column\(s\) \['Pneumonia'\]"):
        load_image_dataset(root)


# --- the NIH-layout sample set ----------------------------------------------------------------


def test_sample_set_layout_encodings_and_determinism(nih: Path, tmp_path: Path) -> None:
    header = (nih / "Data_Entry_2017.csv").read_text().splitlines()[0]
    assert header.endswith("OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    assert (nih / "BBox_List_2017.csv").read_text().startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    modes = {}
    for path in find_pictures(nih):
        with Image.open(path) as image:
            modes[path.name] = (image.format, image.mode)
    assert sorted(set(modes.values())) == [("JPEG", "L"), ("PNG", "I;16"), ("PNG", "L"), ("PNG", "RGB")]
    assert len(modes) == 8 and len(ENCODINGS) == 4
    again = generate_sample_data(tmp_path, seed=3, only=["cxr-png"], count=8)
    assert again.datasets["cxr-png"].n_items == 8
    for path in find_pictures(nih):
        assert (tmp_path / "cxr-png" / path.relative_to(nih)).read_bytes() == path.read_bytes()
    assert "cxr-png" not in generate_sample_data(tmp_path / "default", count=0).datasets  # on request only
