"""A real PACS for the tests: :class:`medimg.pacs.local_orthanc.LocalOrthanc` (Orthanc + its
DICOMweb plugin on loopback ports, temporary storage and configuration) with the tests' fixed
credentials, skipping the test with the reason where Orthanc or the plugin is not installed.

``OrthancServer(folder, modalities=..., authentication=True)``: ``.dicomweb``, ``.dicom_port``,
``.aet``, ``upload_folder``, ``studies``, ``instances_of_modality``, ``instance_file``, ``get``,
``delete``, ``stop``, ``kill``; a context manager. Every test stops the server it started.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytest

from medimg.pacs.local_orthanc import LocalOrthanc, free_port, orthanc_missing

__all__ = ["AE_TITLE", "PASSWORD", "USER", "OrthancServer", "free_port", "orthanc_or_skip"]

USER, PASSWORD = "medimg", "test-password"
AE_TITLE = "ORTHANC"


def orthanc_or_skip() -> None:
    """Skip the test, saying why, where a local Orthanc cannot start."""
    missing = orthanc_missing()
    if missing:
        pytest.skip(f"{missing}; `make test` installs it as root")


class OrthancServer(LocalOrthanc):
    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        authentication: bool = True,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        orthanc_or_skip()
        super().__init__(
            folder,
            user=USER,
            password=PASSWORD,
            modalities=modalities,
            authentication=authentication,
            aet=AE_TITLE,
            config=config,
        )
