"""The training losses: cross-entropy or focal for classifiers, sigmoid Dice (+ BCE) for segmenters.

Each factory takes ``(loss name, class weights, device)`` and returns a :data:`Criterion`
``(outputs, targets) -> scalar``; :data:`LOSSES` and :data:`SEGMENTATION_LOSSES` are the names.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss, FocalLoss

from medimg.training.config import Criterion

__all__ = ["LOSSES", "SEGMENTATION_LOSSES", "classification_loss", "segmentation_loss"]

LOSSES: tuple[str, ...] = ("ce", "focal")
SEGMENTATION_LOSSES: tuple[str, ...] = ("dice", "dicece")


def classification_loss(loss: str, class_weights: list[float] | None, device: torch.device) -> Criterion:
    """``criterion(logits (B, K) float, labels (B,) int64) -> scalar``: cross-entropy or focal."""
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32, device=device)
    if loss == "ce":
        return torch.nn.CrossEntropyLoss(weight=weight)
    focal = FocalLoss(to_onehot_y=True, use_softmax=True, weight=weight)
    return lambda logits, labels: focal(logits, labels[:, None])


def segmentation_loss(loss: str, class_weights: list[float] | None, device: torch.device) -> Criterion:
    """``criterion(logits (B, R, *spatial), masks (B, R, *spatial) 0/1) -> scalar``: sigmoid Dice, or Dice + BCE.

    ``"dice"`` is the MONAI BraTS tutorial's loss (MONAI ``DiceLoss`` on sigmoids, squared
    denominators, no numerator smoothing). ``"dicece"`` is that Dice loss plus binary
    cross-entropy per channel (``BCEWithLogitsLoss``), weights 1 and 1. MONAI's ``DiceCELoss`` is
    not used: for R > 1 it applies a softmax cross-entropy across the channels, wrong for
    overlapping regions such as TC inside WT. No numerator smoothing matters for patch training:
    with MONAI's default ``smooth_nr=1e-5`` a patch whose region is empty has the loss
    ``1 - 1e-5 / (sum(p) + 1e-5)``: about 0 when nothing is predicted and 1 otherwise, so the many
    patches without a small region (the enhancing rim) reward never predicting it, and it
    collapses (measured: ET validation Dice 0.00 on the demo data); with ``smooth_nr=0`` an empty
    region costs 1 whatever is predicted. ``class_weights`` and ``device`` are unused.
    """
    dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)
    terms: tuple[Criterion, ...] = (dice,) if loss == "dice" else (dice, torch.nn.BCEWithLogitsLoss())

    def criterion(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if logits.shape != masks.shape:
            raise ValueError(
                f"the network's logits have shape {tuple(logits.shape)} but the labels {tuple(masks.shape)}: "
                "labels need one binary channel per output channel (R = out_channels)"
            )
        return torch.stack([term(logits, masks) for term in terms]).sum()

    return criterion
