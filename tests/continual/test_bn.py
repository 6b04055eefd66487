"""Batch-norm statistics: discovery, snapshot, freezing across train(), BN-only training, exact recompute, checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from continual.bn import (
    PostconditionError,
    bn_modules,
    check_postconditions,
    freeze_bn_stats,
    is_bn_frozen,
    recompute_bn_stats,
    set_trainable,
    snapshot_bn_stats,
    snapshot_params,
)


class DropNet(nn.Module):
    """conv -> BN -> ReLU -> dropout -> conv -> BN -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def make_net(seed: int = 0) -> DropNet:
    """A DropNet whose BN running statistics are not the defaults."""
    torch.manual_seed(seed)
    model = DropNet()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(6, 1, 8, 8) * 1.5 + 0.3)
    return model


def train_steps(model: nn.Module, steps: int = 3, seed: int = 1) -> None:
    """A few Adam steps of cross-entropy on shifted random data, after ``model.train()``."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        images = torch.randn(6, 1, 8, 8, generator=gen) * 3 - 1  # "site B": other statistics
        labels = torch.randint(0, 3, (6,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


def test_bn_modules_and_snapshot() -> None:
    model = nn.Sequential(
        nn.BatchNorm1d(3),
        nn.BatchNorm2d(3),
        nn.BatchNorm3d(3),
        nn.SyncBatchNorm(3),
        nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
        nn.GroupNorm(1, 3),
        nn.BatchNorm2d(3, track_running_stats=False),
    )
    assert list(bn_modules(model)) == ["0", "1", "2", "3", "6"]
    stats = snapshot_bn_stats(model)
    assert sorted(stats) == sorted(
        f"{i}.{key}" for i in range(4) for key in ("running_mean", "running_var", "num_batches_tracked")
    )
    stats["0.running_mean"] += 1  # a copy
    assert torch.equal(model[0].running_mean, torch.zeros(3))
    params = snapshot_params(model)
    assert "4.weight" in params and params["1.weight"] is not model[1].weight


def test_freeze_survives_train_and_training_steps_but_affine_and_dropout_stay_live() -> None:
    model = make_net()
    anchor_bn, anchor = snapshot_bn_stats(model), snapshot_params(model)
    handle = freeze_bn_stats(model)
    model.train()
    assert model.training and model.drop.training  # dropout still active
    assert not model.bn1.training and not model.bn2.training
    assert is_bn_frozen(model.bn1)
    train_steps(model)
    model.bn2.training = True  # even a direct assignment is undone before the next forward
    train_steps(model, steps=1, seed=2)
    for name, value in snapshot_bn_stats(model).items():
        assert torch.equal(value, anchor_bn[name]), name
    assert not torch.equal(model.bn1.weight, anchor["bn1.weight"])
    assert not torch.equal(model.bn2.bias, anchor["bn2.bias"])
    check_postconditions(model, anchor, anchor_bn, freeze_bn_stats=True, trainable="all")
    # dropout really is active: two forwards of the same input differ in train mode
    x = torch.randn(2, 1, 8, 8)
    assert not torch.equal(model(x), model(x))
    handle.remove()
    assert model.bn1.training and not is_bn_frozen(model.bn1)  # follows the model's mode again
    train_steps(model, steps=1)
    assert not torch.equal(model.bn1.running_mean, anchor_bn["bn1.running_mean"])
    with pytest.raises(PostconditionError, match="bn1.running_mean"):
        check_postconditions(model, anchor, anchor_bn, freeze_bn_stats=True, trainable="all")


def test_freeze_context_nesting_and_copies() -> None:
    model = make_net()
    with freeze_bn_stats(model):
        with freeze_bn_stats(model):
            model.train()
            assert not model.bn1.training
        model.train()
        assert not model.bn1.training  # the outer freeze still holds
        clone = copy.deepcopy(model)
        clone.train()
        assert clone.bn1.training and not is_bn_frozen(clone.bn1)  # a copy is not frozen
    model.eval()
    assert "train" not in model.bn1.__dict__ and not model.bn1.training
    with freeze_bn_stats(nn.Linear(2, 2)) as handle:  # no BN: nothing to freeze
        assert handle.modules == {}


def test_bn_affine_leaves_everything_else_bit_for_bit() -> None:
    model = make_net()
    anchor, anchor_bn = snapshot_params(model), snapshot_bn_stats(model)
    trainable = set_trainable(model, "bn_affine")
    assert trainable == ["bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"]
    assert not model.head.weight.requires_grad  # the classifier head is frozen too
    train_steps(model)
    for name, p in model.named_parameters():
        changed = not torch.equal(p, anchor[name])
        assert changed == name.startswith("bn"), name
    check_postconditions(model, anchor, anchor_bn, freeze_bn_stats=False, trainable="bn_affine")
    with pytest.raises(PostconditionError, match="frozen BN statistics changed: bn1.running_mean"):
        check_postconditions(model, anchor, anchor_bn, freeze_bn_stats=True, trainable="bn_affine")
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] += 1e-7
    with pytest.raises(PostconditionError, match=r"non-BN parameters changed: conv2.weight \(max \|diff\|"):
        check_postconditions(model, anchor, anchor_bn, freeze_bn_stats=False, trainable="bn_affine")
    assert set_trainable(model, "all") == list(anchor)
    with pytest.raises(ValueError, match="trainable mode"):
        set_trainable(model, "head")
    with pytest.raises(ValueError, match="no"):
        set_trainable(nn.Linear(2, 2), "bn_affine")


def test_postcondition_on_a_changed_buffer() -> None:
    model = make_net()
    anchor, anchor_bn = snapshot_params(model), snapshot_bn_stats(model)
    check_postconditions(model, anchor, anchor_bn, freeze_bn_stats=True, trainable="bn_affine")
    model.bn2.num_batches_tracked += 1
    with pytest.raises(AssertionError, match="bn2.num_batches_tracked"):
        check_postconditions(model, anchor, anchor_bn, freeze_bn_stats=True, trainable="all")
    check_postconditions(model, anchor, anchor_bn, freeze_bn_stats=False, trainable="all")
    del model.bn2
    with pytest.raises(PostconditionError, match="missing from the model"):
        check_postconditions(model, anchor, anchor_bn, freeze_bn_stats=True, trainable="all")


def test_recompute_bn_stats_is_exact_over_unequal_batches() -> None:
    model = make_net()
    model.train()
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, 1, 8, 8, generator=gen) * 2 + 1 for n in (5, 3, 7)]
    loader = [(b, torch.zeros(len(b), dtype=torch.long)) for b in batches]
    momentum = model.bn1.momentum
    assert recompute_bn_stats(model, loader) == 15
    with torch.no_grad():
        features = model.conv1(torch.cat(batches)).double()  # bn1's input over all the data
    mean = features.mean(dim=(0, 2, 3))
    var = features.permute(1, 0, 2, 3).reshape(4, -1).var(dim=1, unbiased=True)
    torch.testing.assert_close(model.bn1.running_mean, mean.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn1.running_var, var.float(), rtol=1e-5, atol=1e-6)
    assert int(model.bn1.num_batches_tracked) == 3 and model.bn1.momentum == momentum
    assert all(m.training for m in model.modules())  # modes restored
    # PyTorch's cumulative average (momentum=None) averages per-batch variances: not exact here
    reference = copy.deepcopy(model)
    reference.bn1.reset_running_stats()
    reference.bn1.momentum = None
    with torch.no_grad():
        for b in batches:
            reference.bn1(reference.conv1(b))
    assert not torch.allclose(reference.bn1.running_var, var.float(), rtol=1e-3)
    with freeze_bn_stats(model), pytest.raises(RuntimeError, match="frozen"):
        recompute_bn_stats(model, loader)
    with pytest.raises(ValueError, match="no batches"):
        recompute_bn_stats(model, [])


def test_recompute_accepts_dicts_and_turns_dropout_off() -> None:
    model = make_net()
    images = torch.randn(10, 1, 8, 8)
    recompute_bn_stats(model, [{"image": images[:6]}, {"image": images[6:], "label": torch.zeros(4)}])
    first = snapshot_bn_stats(model)
    recompute_bn_stats(model, [images[:6], images[6:]])  # dropout off: the same statistics again
    for name, value in snapshot_bn_stats(model).items():
        torch.testing.assert_close(value, first[name], rtol=1e-6, atol=1e-7)
