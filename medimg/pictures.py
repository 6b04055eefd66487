"""PNG and JPEG radiographs (NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG) read like DICOM images.

- :func:`read_picture`: one file -> float32 (rows, columns) grey values. 8-bit and 16-bit grey
  files keep their stored values (a 16-bit file keeps its full range; the pipelines' intensity
  scaling normalises it later); colour files (RGB, RGBA, palette, CMYK) become grey with the
  ITU-R BT.601 luminance weights that colour DICOM gets (:data:`medimg.dicom.decode.LUMINANCE`);
  an alpha channel is dropped.
- :func:`picture_shape`: ``(rows, columns)`` from the header only.
- :func:`load_picture`: one file as MONAI's ``MetaTensor``, laid out as a DICOM radiograph
  (:class:`medimg.picture_transforms.LoadPictureOrDicomd` puts it in the pipelines' transforms).

Importing this module loads neither torch nor MONAI.

The declared size is checked against :func:`medimg.limits.max_frame_pixels` and
:func:`medimg.limits.max_pixels` (``medimg run --max-pixels``) before any pixel is decoded. A
file that Pillow cannot read raises :class:`PictureError` naming the file and why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.dicom.decode import LUMINANCE
from medimg.limits import InputLimitError, check_frame_size, check_size

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = [
    "PICTURE_SUFFIXES",
    "PictureError",
    "find_pictures",
    "has_dicom_files",
    "is_picture",
    "load_picture",
    "picture_shape",
    "read_picture",
]

#: File name endings read as pictures (case-insensitive).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SIDECARS = (".csv", ".txt", ".json", ".md", ".html")
_GREY_MODES = {"L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class PictureError(ValueError):
    """A PNG/JPEG file that cannot be read (the message names the file and the cause)."""


def is_picture(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` ends in one of :data:`PICTURE_SUFFIXES`."""
    return str(path).lower().endswith(PICTURE_SUFFIXES)


def find_pictures(folder: str | os.PathLike[str]) -> list[Path]:
    """Every PNG/JPEG file under ``folder`` (recursively, links followed but never in a loop;
    hidden files left out), sorted."""
    from medimg.dicom.scan import list_files

    files, _ = list_files(folder)
    return sorted(Path(f) for f in files if is_picture(f) and not os.path.basename(f).startswith("."))


def has_dicom_files(folder: str | os.PathLike[str]) -> bool:
    """Whether any file under ``folder`` that is not a picture or a table is DICOM (a ``.dcm`` name
    or the ``DICM`` prefix at byte 128): such a folder is read as DICOM, not as pictures."""
    from medimg.dicom.scan import list_files

    files, _ = list_files(folder)
    for name in files:
        if is_picture(name) or name.lower().endswith(_SIDECARS):
            continue
        if name.lower().endswith(".dcm"):
            return True
        try:
            with open(name, "rb") as fh:
                if fh.read(132)[128:132] == b"DICM":
                    return True
        except OSError:
            continue
    return False


def _open(path: str | os.PathLike[str]) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except FileNotFoundError as exc:
        raise PictureError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise PictureError(f"{path}: not a readable PNG/JPEG image ({exc})") from exc
    try:
        check_frame_size(image.height, image.width, str(path))
        check_size((image.height, image.width, len(image.getbands())), str(path))
    except InputLimitError as exc:
        image.close()
        raise PictureError(str(exc)) from exc
    return image


def picture_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(rows, columns)`` of a PNG/JPEG file, from its header.

    Raises:
        PictureError: the file is missing, not an image Pillow reads, or too large.
    """
    with _open(path) as image:
        return int(image.height), int(image.width)


def _load_whole(image: Any) -> None:
    """Decode ``image``, refusing a truncated file even where another library (WeasyPrint does,
    on import) has told Pillow to accept them (``ImageFile.LOAD_TRUNCATED_IMAGES``)."""
    from PIL import ImageFile

    accepted = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = accepted


def read_picture(path: str | os.PathLike[str]) -> tuple[np.ndarray, bool]:
    """Grey values of a PNG/JPEG file and whether they were converted from colour.

    Returns:
        ``(values, converted)``: float32 (rows, columns) with the stored values of a grey file
        (0-255 for 8 bits, 0-65535 for 16 bits), or the luminance of a colour file.

    Raises:
        PictureError: the file is missing, truncated, not an image Pillow reads, or too large.
    """
    with _open(path) as image:
        try:
            _load_whole(image)
            if image.mode in _GREY_MODES:
                return np.asarray(image, dtype=np.float32), False
            if image.mode == "LA":
                return np.asarray(image.getchannel("L"), dtype=np.float32), False
            if image.mode == "1":
                return np.asarray(image.convert("L"), dtype=np.float32), False
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        except (OSError, ValueError, SyntaxError) as exc:
            raise PictureError(f"{path}: cannot decode the image ({exc})") from exc
    grey = rgb @ np.asarray(LUMINANCE, dtype=np.float32)
    return grey.astype(np.float32), True


def load_picture(path: str | os.PathLike[str]) -> MetaTensor:
    """A PNG/JPEG file as MONAI's float32 (1, X = columns, Y = rows) ``MetaTensor``, the layout
    :func:`medimg.dicom.volume.load_instance` gives a projection radiograph (pixel spacing 1)."""
    from monai.data import MetaTensor

    values, converted = read_picture(path)
    array = values.T[None]  # (rows, columns) -> (1, columns, rows)
    affine: Any = np.eye(4)
    meta = {
        "original_affine": affine.copy(),
        "space": "RAS",
        "spatial_shape": np.asarray(array.shape[1:]),
        "original_channel_dim": 0,
        "filename_or_obj": str(path),
        "geometry": "projection",
        "pixel_spacing": [1.0, 1.0],
        "source_files": [str(path)],
        "converted_to_grey": converted,
    }
    return MetaTensor(np.ascontiguousarray(array), affine=affine, meta=meta)
