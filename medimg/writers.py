"""Result writers shared by every job: atomic file writes, JSON, CSV and NIfTI.

Every writer writes to a temporary name in the target folder and renames it into place, so a
crash never leaves a half-written file behind and a rerun can trust what exists.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medimg.untrusted import spreadsheet_text

__all__ = [
    "atomic_path",
    "remove_stale_temporaries",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_nifti",
    "write_nifti_array",
    "write_text",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps the file's suffixes (``.nii.gz``), which some writers rely on.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: The temporary names of :func:`atomic_path`: ``.NAME.XXXXXXXX.tmp[SUFFIXES]`` (mkstemp's 8 characters).
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\..*)?$")


def remove_stale_temporaries(root: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` under ``root`` (left by a killed process).

    Call it only while no other process writes under ``root``. Symlinked folders are not
    followed. Returns the paths removed.
    """
    removed = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if _TEMPORARY_NAME.match(name) and (path.is_symlink() or path.is_file()):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line endings) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write dict rows as CSV with the given column order, atomically.

    Keys not in ``columns`` are ignored, missing ones are left empty. A text cell (or column
    name) that a spreadsheet would run as a formula is neutralised by
    :func:`medimg.untrusted.spreadsheet_text`; numbers are written as they are.
    """
    columns = list(columns)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([spreadsheet_text(c) for c in columns])
        for row in rows:
            writer.writerow([spreadsheet_text(row.get(c, "")) for c in columns])
    return Path(path)


def write_nifti(tensor: Any, path: str | os.PathLike[str]) -> Path:
    """Write a (C, X, Y[, Z]) ``MetaTensor`` with a RAS affine as NIfTI, atomically.

    Grey images are stored as (X, Y[, Z]); color as (X, Y, Z, C). Integral values that fit
    int16 are stored as int16, everything else as float32.

    Args:
        tensor: a MetaTensor from :func:`medimg.dicom.load_series` (``meta["space"] == "RAS"``).
        path: output ``.nii.gz`` path.

    Returns:
        The path written.
    """

    array = np.asarray(tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else tensor)
    affine = np.asarray(tensor.affine, dtype=np.float64)
    if array.shape[0] == 1:
        data = array[0]
    else:
        data = np.moveaxis(array, 0, -1)
        if data.ndim == 3:  # 2-D color: add a singleton slice axis before the channels
            data = data[:, :, None, :]
    if np.all(np.isfinite(data)) and np.all(data == np.round(data)) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    else:
        data = data.astype(np.float32)
    return write_nifti_array(path, data, affine)


def write_nifti_array(path: str | os.PathLike[str], array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` (its dtype kept) with a voxel-to-RAS ``affine`` (mm) as NIfTI, atomically."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path
