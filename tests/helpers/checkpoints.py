"""Untrained checkpoints of the 2-D pipelines, for tests that need weights but not a trained model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medimg.models import build_network, save_checkpoint
from pipelines import get_pipeline


def untrained_checkpoint(
    path: Path,
    pipeline: str,
    *,
    architecture: str = "compact",
    size: tuple[int, int] = (64, 64),
    training: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Save a freshly initialized (seeded) classifier of ``pipeline`` with valid checkpoint metadata."""
    task = get_pipeline(pipeline)
    network = {"spatial_dims": 2, "in_channels": 1, "out_channels": len(task.labels)}
    meta = {
        "pipeline": pipeline,
        "architecture": architecture,
        "network": network,
        "labels": list(task.labels),
        "preprocessing": task.preprocessing(architecture, size),
        "training": dict(training or {"note": "untrained, for tests"}),
    }
    torch.manual_seed(seed)
    return save_checkpoint(path, build_network(architecture, **network), meta)
