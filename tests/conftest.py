"""Shared test set-up.

Test helpers (``dicom_factory``) live in tests/helpers/, put on sys.path here. Not tests/
itself: its sub-folders mirror the package names (tests/medimg/) and would shadow them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
