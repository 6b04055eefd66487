"""Collated batches as tensors: ``{"image", "label"}`` dicts or ``(image, label)`` tuples to ``(inputs, targets)``.

:func:`classification_batch` gives ``(B, C, *spatial)`` float images and ``(B,)`` int64 labels;
:func:`segmentation_batch` gives the images and ``(B, R, *spatial)`` float 0/1 masks on their grid.
Both raise ValueError naming the shapes when a batch does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor

__all__ = ["classification_batch", "segmentation_batch", "unpack_batch"]


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float, labels)`` as plain tensors (on the loader's device) from a collated batch."""
    if isinstance(batch, Mapping):
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"dataset items must hold 'image' and 'label'; this batch has keys {sorted(batch)}")
        images, labels = batch["image"], batch["label"]
    elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
    else:
        raise ValueError(
            f"dataset items must be {{'image', 'label'}} dicts or (image, label) tuples, not {type(batch)}"
        )
    if isinstance(images, MetaTensor):
        images = images.as_tensor()
    if isinstance(labels, MetaTensor):
        labels = labels.as_tensor()
    images = torch.as_tensor(images)
    if not torch.is_floating_point(images):
        images = images.float()
    return images, torch.as_tensor(labels)


def classification_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (B, C, *spatial) float, labels (B,) int64)`` on ``device`` from a collated batch."""
    images, labels = unpack_batch(batch)
    if labels.numel() != images.shape[0]:
        raise ValueError(
            f"labels must be one class index per item: got labels of shape {tuple(labels.shape)} "
            f"for {images.shape[0]} images"
        )
    return images.to(device, non_blocking=True), labels.reshape(-1).long().to(device, non_blocking=True)


def segmentation_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (B, C, *spatial) float, labels (B, R, *spatial) float 0/1)`` on ``device``."""
    images, labels = unpack_batch(batch)
    if labels.ndim != images.ndim or labels.shape[0] != images.shape[0] or labels.shape[2:] != images.shape[2:]:
        raise ValueError(
            f"segmentation labels must be (B, R, *spatial) multi-channel masks on the image grid (B, C, *spatial): "
            f"got labels of shape {tuple(labels.shape)} for images of shape {tuple(images.shape)}"
        )
    return images.to(device, non_blocking=True), labels.float().to(device, non_blocking=True)
