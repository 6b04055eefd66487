"""Shared test set-up: one torch thread per test, Flower's home out of $HOME, and the generated
data that several test files read.

Test helpers (``dicom_factory``, ``checkpoints``, ...) live in tests/helpers/ and import by module
name: pyproject.toml's ``pythonpath = ["tests/helpers"]`` puts that folder on the path.

The data fixtures are session-scoped: each xdist worker generates them once, in its own temporary
folder, whichever test asks first. Tests read them and write their outputs elsewhere (``tmp_path``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


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


@pytest.fixture(scope="session")
def synth_brain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated BraTS case (seed 0, ``BraTS2021_00000``, 96 x 96 x 64 at 2 mm): the ``brain``
    folder of ``medimg sample-data --only brain --count 1``, with ``nifti/`` and ``dicom/``. Read only."""
    from medimg.synth import generate_sample_data

    root = tmp_path_factory.mktemp("synth-brain")
    generate_sample_data(root, only=["brain"], count=1, seed=0)
    return root / "brain"


@pytest.fixture(scope="session")
def untrained_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained compact checkpoints of the 2-D pipelines (64 x 64 input, torch seed 0), by pipeline
    name: ``{"pneumonia": path, "density": path}``. Read only."""
    import torch
    from checkpoints import untrained_checkpoint

    root = tmp_path_factory.mktemp("untrained-weights")
    with torch.random.fork_rng():  # the checkpoints' seeding leaves the global RNG of the asking test alone
        return {name: untrained_checkpoint(root / f"{name}.pt", name) for name in ("pneumonia", "density")}
