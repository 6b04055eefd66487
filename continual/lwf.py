"""Learning without Forgetting (Li & Hoiem 2016) as a generic distillation loss.

The LwF baseline of domain expansion: while fine-tuning on site B, the adapted model's outputs on
B's images are pulled towards those of the frozen site-A model, so no site-A image is needed. The
loss here is the distillation term only; the caller adds its cross-entropy on B's labels::

    lwf = LwFLoss(model_a, temperature=2.0, alpha=1.0)
    logits = model(x_b)
    loss = F.cross_entropy(logits, y_b) + lwf(logits, x_b)

Written by hand because neither MONAI nor torch has it (Avalanche's ``LwFPlugin`` is not a
dependency). Domain expansion keeps one head for both sites, so old and new logits
have the same classes; Li & Hoiem's separate new-task head does not apply.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LwFLoss", "distillation_loss"]


def distillation_loss(new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Temperature-scaled distillation ``T^2 * KL(softmax(old / T) || softmax(new / T))``, mean over the batch.

    ``KL(p || q) = sum_k p_k (log p_k - log q_k)`` per sample, averaged over the samples
    (``reduction="batchmean"``). The ``T^2`` factor (Hinton et al. 2015) keeps the gradient's scale
    roughly independent of ``T``; as ``T`` grows the loss tends to ``sum_k (z_k - mean(z))^2 / (2K)``
    with ``z = new - old`` (logit matching). Li & Hoiem write the same term as a cross-entropy with
    soft targets and no ``T^2``: it differs by the old distribution's entropy, a constant, so the
    gradients differ only by the factor ``T^2``.

    Args:
        new_logits: ``(B, K)`` float logits of the model being trained (gradients flow).
        old_logits: ``(B, K)`` float logits of the old model (treated as constants).
        temperature: ``T > 0``.

    Returns:
        Scalar tensor (>= 0; 0 when the logits are equal up to a per-sample constant).

    Raises:
        ValueError: mismatched or non-2-D shapes, or ``T <= 0``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if new_logits.ndim != 2 or new_logits.shape != old_logits.shape:
        raise ValueError(
            f"new and old logits must both be (B, K), got {tuple(new_logits.shape)} and {tuple(old_logits.shape)}"
        )
    log_q = F.log_softmax(new_logits / temperature, dim=1)
    log_p = F.log_softmax(old_logits.detach().to(log_q.dtype) / temperature, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature**2


class LwFLoss(nn.Module):
    """LwF distillation term ``alpha * T^2 * KL(softmax(old(x) / T) || softmax(new_logits / T))``.

    The old model's logits are computed on the fly on the same (new-site) inputs, under
    ``torch.no_grad()``, by a private frozen copy of ``old_model`` that stays in eval mode (its BN
    layers use the old site's running statistics, dropout is off) even when this module or a parent
    is switched to ``train()``. The copy follows ``.to(device)`` and, if needed, moves itself to the
    inputs' device on the first call.

    Args:
        old_model: the model trained on the old site; deep-copied, so later changes to it (or
            training it in place) do not affect the targets, and it is not modified.
        temperature: distillation temperature ``T > 0`` (Li & Hoiem use 2).
        alpha: weight of the term relative to the caller's cross-entropy (``lambda_o`` in Li &
            Hoiem), ``>= 0``.

    Raises:
        ValueError: ``temperature <= 0`` or ``alpha < 0``.
    """

    def __init__(self, old_model: nn.Module, temperature: float = 2.0, alpha: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.old_model = copy.deepcopy(old_model)
        for parameter in self.old_model.parameters():  # detach_: a TorchScript copy's are clones with history
            parameter.detach_().requires_grad_(False)
        self.old_model.eval()

    def train(self, mode: bool = True) -> LwFLoss:
        """Sets this module's mode but keeps the old model in eval mode."""
        super().train(mode)
        self.old_model.eval()
        return self

    @torch.no_grad()
    def old_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The frozen old model's ``(B, K)`` logits on ``inputs`` (no graph)."""
        parameter = next(self.old_model.parameters(), None)
        if parameter is not None and parameter.device != inputs.device:
            self.old_model.to(inputs.device)
        self.old_model.eval()
        return self.old_model(inputs)

    def forward(self, new_logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The weighted distillation term for one batch of new-site images.

        Args:
            new_logits: ``(B, K)`` logits of the model being trained on ``inputs``.
            inputs: the batch the new logits came from (e.g. ``(B, C, H, W)`` float images).

        Returns:
            Scalar tensor ``alpha * distillation_loss(new_logits, old(inputs), T)``; gradients flow
            into ``new_logits`` only.
        """
        return self.alpha * distillation_loss(new_logits, self.old_logits(inputs), self.temperature)
