"""Shared fixtures. Test helpers live in tests/dicom_factory.py (imported via sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
