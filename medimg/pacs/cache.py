"""The local copy of what was retrieved from a PACS, under an output folder.

- ``OUT/pacs-incoming/<study>/<series>/<SOPInstanceUID>.dcm``: a series being retrieved. Each file
  is written atomically, so a file there is whole; a rerun keeps them and fetches only the rest.
- ``OUT/pacs-cache/<study>/<series>/<SOPInstanceUID>.dcm``: complete series only. A series moves
  there in one rename once every instance the metadata listed has arrived (and nothing else).

Names are made safe with :func:`medimg.safepath.safe_name`, and every path is checked to stay
inside the output folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medimg.safepath import inside, safe_name
from medimg.writers import atomic_path

__all__ = ["CACHE_FOLDER", "INCOMING_FOLDER", "SeriesCache"]

CACHE_FOLDER, INCOMING_FOLDER = "pacs-cache", "pacs-incoming"


class SeriesCache:
    """The retrieved series of one output folder ``out``."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.root = self.out / CACHE_FOLDER
        self.incoming = self.out / INCOMING_FOLDER

    def _folder(self, base: Path, study_uid: str, series_uid: str) -> Path:
        return inside(self.out, base / safe_name(study_uid) / safe_name(series_uid))

    def complete_folder(self, study_uid: str, series_uid: str) -> Path:
        return self._folder(self.root, study_uid, series_uid)

    def incoming_folder(self, study_uid: str, series_uid: str) -> Path:
        return self._folder(self.incoming, study_uid, series_uid)

    @staticmethod
    def file_name(sop_uid: str) -> str:
        return safe_name(sop_uid) + ".dcm"

    def is_complete(self, study_uid: str, series_uid: str) -> bool:
        return self.complete_folder(study_uid, series_uid).is_dir()

    def arrived(self, study_uid: str, series_uid: str) -> set[str]:
        """File names of the instances of a series being retrieved that are already here."""
        folder = self.incoming_folder(study_uid, series_uid)
        return {p.name for p in folder.glob("*.dcm")} if folder.is_dir() else set()

    def write(self, study_uid: str, series_uid: str, ds: Any) -> str:
        """Write one retrieved instance (a pydicom Dataset) atomically; its file name."""
        name = self.file_name(str(ds.SOPInstanceUID))
        target = self.incoming_folder(study_uid, series_uid) / name
        with atomic_path(target) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        return name

    def complete(self, study_uid: str, series_uid: str, expected_sops: Iterable[str]) -> list[str]:
        """Move a series to the cache when exactly ``expected_sops`` have arrived. Files of instances
        that are no longer listed (removed on the server since an earlier try) are dropped first.

        Returns:
            The expected file names still missing (empty: the series is now complete).
        """
        wanted = {self.file_name(uid) for uid in expected_sops}
        folder = self.incoming_folder(study_uid, series_uid)
        here = self.arrived(study_uid, series_uid)
        missing = sorted(wanted - here)
        if missing:
            return missing
        for stale in here - wanted:
            (folder / stale).unlink()
        target = self.complete_folder(study_uid, series_uid)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # retrieved again: keep one copy, the fresh one
            shutil.rmtree(target)
        os.replace(folder, target)
        with contextlib.suppress(OSError):  # the study's incoming folder, once empty
            folder.parent.rmdir()
        return []
