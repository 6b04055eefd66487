"""Layer-reset attribution: groups partition the state, resets restore exactly the group, inputs untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from continual.layer_reset import depth_groups, reset_attribution


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    ).eval()


def test_depth_groups_partition_the_state_dict_in_order() -> None:
    net = _net()
    groups = depth_groups(net, 2)
    assert [g["group"] for g in groups] == ["depth 1/2", "depth 2/2"]
    assert [g["n_modules"] for g in groups] == [2, 2]  # Linear, BN | Linear, Linear (ReLU has no state)
    assert groups[0]["keys"] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"
    ]  # fmt: skip
    assert sum((g["keys"] for g in groups), []) == list(net.state_dict())
    assert groups[0]["n_params"] == 3 * 4 + 4 + 4 + 4 and groups[1]["n_params"] == 4 * 4 + 4 + 4 * 2 + 2
    assert (groups[1]["first"], groups[1]["last"]) == ("3", "4")
    with pytest.raises(ValueError, match="n_groups"):
        depth_groups(net, 5)


def test_resetting_a_group_restores_exactly_that_groups_state() -> None:
    a = _net()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].weight.add_(1.0)  # group 1 changed (a parameter and a BN statistic)
        b[1].running_mean.add_(0.5)
        b[4].bias.add_(-2.0)  # group 2 changed
    x = torch.randn(5, 3)
    before_a, before_b = copy.deepcopy(a.state_dict()), copy.deepcopy(b.state_dict())
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        assert not model.training
        seen.append(copy.deepcopy(model.state_dict()))
        return {"out": float(model(x).sum())}

    rows = reset_attribution(a, b, evaluate, n_groups=2)
    assert [r["group"] for r in rows] == ["none", "depth 1/2", "depth 2/2", "all"]
    assert rows[0]["out"] == pytest.approx(float(b(x).sum()))
    assert rows[-1]["out"] == pytest.approx(float(a(x).sum()))
    group1 = set(depth_groups(a, 2)[0]["keys"])
    for key, value in seen[1].items():  # depth 1/2 reset: group-1 entries from a, the rest from b
        assert torch.equal(value, (a if key in group1 else b).state_dict()[key])
    for key, value in seen[2].items():
        assert torch.equal(value, (b if key in group1 else a).state_dict()[key])
    assert rows[-1]["n_params"] == sum(p.numel() for p in a.parameters())
    for key in before_a:  # neither input model modified
        assert torch.equal(a.state_dict()[key], before_a[key]) and torch.equal(b.state_dict()[key], before_b[key])


def test_reset_attribution_refuses_different_architectures() -> None:
    with pytest.raises(ValueError, match="same architecture"):
        reset_attribution(_net(), torch.nn.Linear(3, 2), lambda m: {})
