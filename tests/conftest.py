"""Shared test set-up.

Test helpers (``dicom_factory``) live in tests/helpers/, put on sys.path here. Not tests/
itself: its sub-folders mirror the package names (tests/medimg/) and would shadow them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch thread per test process: the suite runs on 2 cores with 2 xdist workers, and
    oversubscribed OpenMP threads thrash. Tests that never import torch are left alone."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
