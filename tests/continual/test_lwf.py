"""Tests for the Learning-without-Forgetting distillation loss (``continual.lwf``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from continual.lwf import LwFLoss, distillation_loss


def _net(seed: int = 0) -> nn.Module:
    """A tiny classifier with BN and dropout, so eval vs train mode matters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def _trained_bn(model: nn.Module) -> nn.Module:
    """Give the BN layer non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 5) * 3 + 1)
    return model


def test_zero_when_the_new_model_equals_the_old() -> None:
    old = _trained_bn(_net())
    new = copy.deepcopy(old).eval()
    x = torch.randn(16, 5)
    loss = LwFLoss(old)(new(x), x)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    # Equal up to a per-sample constant is still zero (softmax is shift-invariant).
    logits = torch.randn(4, 3)
    assert distillation_loss(logits + torch.arange(4.0)[:, None], logits).item() == pytest.approx(0.0, abs=1e-6)


def test_known_value_on_hand_logits() -> None:
    # T = 2: old [0, 0] -> p = [1/2, 1/2]; new [2 ln 3, 0] -> q = softmax([ln 3, 0]) = [3/4, 1/4].
    # KL(p || q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); times T^2 = 4: 2 ln(4/3).
    old = torch.zeros(1, 2)
    new = torch.tensor([[2 * math.log(3.0), 0.0]])
    assert distillation_loss(new, old, temperature=2.0).item() == pytest.approx(2 * math.log(4 / 3), rel=1e-6)
    # Batch mean: a second, identical-logit sample halves it.
    assert distillation_loss(torch.cat([new, old]), torch.cat([old, old]), 2.0).item() == pytest.approx(
        math.log(4 / 3), rel=1e-6
    )


def test_matches_the_kl_definition_and_alpha() -> None:
    torch.manual_seed(1)
    new, old = torch.randn(6, 4), torch.randn(6, 4)
    t = 3.0
    p, q = torch.softmax(old / t, dim=1), torch.softmax(new / t, dim=1)
    expected = (p * (p.log() - q.log())).sum(dim=1).mean() * t**2
    assert distillation_loss(new, old, t).item() == pytest.approx(expected.item(), rel=1e-5)

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return old

    loss = LwFLoss(Fixed(), temperature=t, alpha=0.25)
    assert loss(new, torch.zeros(6, 1)).item() == pytest.approx(0.25 * expected.item(), rel=1e-5)


def test_temperature_scaling() -> None:
    torch.manual_seed(2)
    new, old = torch.randn(5, 4), torch.randn(5, 4)
    # T^2 * KL at temperature T is T^2 times the T = 1 loss of the logits divided by T.
    for t in (0.5, 2.0, 4.0):
        assert distillation_loss(new, old, t).item() == pytest.approx(
            t**2 * distillation_loss(new / t, old / t, 1.0).item(), rel=1e-5
        )
    # T = 1 is plain KL(softmax(old) || softmax(new)).
    plain = F.kl_div(F.log_softmax(new, 1), F.softmax(old, 1), reduction="batchmean")
    assert distillation_loss(new, old, 1.0).item() == pytest.approx(plain.item(), rel=1e-5)
    # Large T: logit matching, sum_k (z_k - mean z)^2 / (2K) with z = new - old, averaged over samples.
    z = (new - old).double()
    limit = ((z - z.mean(dim=1, keepdim=True)) ** 2).sum(dim=1).mean() / (2 * 4)
    assert distillation_loss(new.double(), old.double(), 1e3).item() == pytest.approx(limit.item(), rel=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(new, old, 0.0)


def test_gradients_flow_into_the_new_model_only() -> None:
    old = _trained_bn(_net(0))
    new = _net(1)
    lwf = LwFLoss(old)
    x = torch.randn(8, 5)
    logits = new.train()(x)
    (F.cross_entropy(logits, torch.randint(0, 3, (8,))) + lwf(logits, x)).backward()
    assert all(p.grad is not None for p in new.parameters())
    assert all(p.grad is None and not p.requires_grad for p in lwf.old_model.parameters())
    # The caller's model is copied, not frozen or modified.
    assert all(p.requires_grad and p.grad is None for p in old.parameters())


def test_old_model_stays_frozen_in_eval_mode() -> None:
    old = _trained_bn(_net())
    stats = old[1].running_mean.clone()
    lwf = LwFLoss(old)
    lwf.train()
    assert lwf.training and not lwf.old_model.training
    x = torch.randn(8, 5)
    first = lwf.old_logits(x)
    second = lwf.old_logits(x)  # dropout off, BN running statistics: deterministic
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, old.eval()(x))
    torch.testing.assert_close(lwf.old_model[1].running_mean, stats)  # never updated
    assert not first.requires_grad


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        LwFLoss(_net(), temperature=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        LwFLoss(_net(), alpha=-0.1)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
