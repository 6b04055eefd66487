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


@pytest.fixture(autouse=True, scope="session")
def flower_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Flower writes its home (an id file, CLI config) even with telemetry off: keep it out of $HOME."""
    import os

    saved = {k: os.environ.get(k) for k in ("FLWR_HOME", "FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK")}
    os.environ["FLWR_HOME"] = str(tmp_path_factory.mktemp("flwr-home"))
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
