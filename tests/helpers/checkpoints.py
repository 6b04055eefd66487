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


def untrained_brats_checkpoint(
    path: Path,
    *,
    tumour_bias: float | None = None,
    seed: int = 0,
    roi_size: tuple[int, int, int] = (48, 48, 48),
    spacing: tuple[float, float, float] | None = None,
    overlap: float = 0.5,
) -> Path:
    """Save a freshly initialized (seeded) compact SegResNet of the brats pipeline (48^3 patches).

    ``tumour_bias`` fills the output bias, so that the label volumes of an untrained net are not empty.
    ``roi_size``, ``spacing`` (mm; None: the reference grid) and ``overlap`` are its preprocessing:
    a coarse spacing and one large patch keep real 240x240x155 volumes fast on a CPU.
    """
    task = get_pipeline("brats")
    network = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3}
    meta = {
        "pipeline": "brats",
        "architecture": "segresnet-compact",
        "network": network,
        "labels": list(task.labels),
        "preprocessing": {
            **task.preprocessing("segresnet-compact", roi_size),
            "spacing": list(spacing) if spacing else None,
            "overlap": overlap,
        },
        "training": {"note": "untrained"},
    }
    torch.manual_seed(seed)
    model = build_network("segresnet-compact", **network)
    if tumour_bias is not None:
        with torch.no_grad():
            model.conv_final[-1].conv.bias.fill_(tumour_bias)
    return save_checkpoint(path, model, meta)
