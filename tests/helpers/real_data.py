"""Where the shared real-world files live, and a skip when they are absent.

The real files (scanner DICOM, BraTS cases, dcm2niix's regression suites, the official BraTS
evaluation's outputs) are never copied into the repository. Tests find them in
``$MEDIMG_REAL_DATA`` or, by default, in ``shared/data/real`` beside the repository's folder, and
skip with the reason when they are not there, so the suite still runs in a clean clone elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REAL_DATA = Path(os.environ.get("MEDIMG_REAL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data" / "real")


def real_path(*parts: str) -> Path:
    """``REAL_DATA/parts...``; skips the calling test when that file or folder is absent."""
    path = REAL_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared real-world data not present: {path} (set MEDIMG_REAL_DATA to its folder)")
    return path


def dcm2niix_binary() -> str:
    """The ``dcm2niix`` executable; skips the calling test when it is not installed."""
    found = shutil.which("dcm2niix")
    if found is None:
        pytest.skip("dcm2niix is not installed (Debian package dcm2niix; `make test` installs it where it can)")
    return found
