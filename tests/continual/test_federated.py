"""The engine-agnostic federated core: aggregation by hand, BN policies, FedProx, the in-process protocol."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from toy_classification import bright_square_dataset, roc_auc_metric, toy_meta

from continual.federated import (
    ClientResult,
    FedConfig,
    FedProxTerm,
    ServerState,
    Site,
    aggregate_states,
    apply_local_bn,
    bn_state_keys,
    client_update,
    simulate_inprocess,
)
from medimg.models import build_network


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def _states() -> list[dict[str, torch.Tensor]]:
    out = []
    for seed, nbt in ((0, 3), (1, 10)):
        torch.manual_seed(seed)
        net = BNNet()
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.num_batches_tracked.fill_(nbt)
        out.append({k: v.clone() for k, v in net.state_dict().items()})
    return out


def test_fedavg_is_the_example_weighted_mean_and_integers_stay_integers() -> None:
    a, b = _states()
    merged = aggregate_states([a, b], [1, 3])
    for key, value in merged.items():
        assert value.dtype == a[key].dtype, key
        if value.is_floating_point():
            expected = (a[key].double() * 1 + b[key].double() * 3) / 4
            torch.testing.assert_close(value, expected.float(), rtol=0, atol=1e-7)
    # num_batches_tracked: (3 * 1 + 10 * 3) / 4 = 8.25 -> 8, still int64 (Flower's FedAvg makes it float64)
    assert merged["bn.num_batches_tracked"].dtype == torch.int64
    assert int(merged["bn.num_batches_tracked"]) == 8
    # equal weights and a single client
    torch.testing.assert_close(aggregate_states([a], [5])["conv.weight"], a["conv.weight"], rtol=0, atol=0)


def test_global_frozen_keeps_the_reference_stats_bit_for_bit_and_averages_affine() -> None:
    a, b = _states()
    reference = {k: v + 1 if v.is_floating_point() else v + 100 for k, v in a.items()}
    keys = bn_state_keys(BNNet())
    assert keys == {
        "affine": {"bn.weight", "bn.bias"},
        "stats": {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"},
    }
    merged = aggregate_states([a, b], [1, 1], bn_policy="global_frozen", bn_keys=keys, reference=reference)
    for key in keys["stats"]:
        assert torch.equal(merged[key], reference[key]), key
    torch.testing.assert_close(merged["bn.weight"], (a["bn.weight"] + b["bn.weight"]) / 2)
    torch.testing.assert_close(merged["head.bias"], (a["head.bias"] + b["head.bias"]) / 2)


def test_aggregation_errors() -> None:
    a, b = _states()
    with pytest.raises(ValueError, match="no client states"):
        aggregate_states([], [])
    with pytest.raises(ValueError, match="positive"):
        aggregate_states([a, b], [1, 0])
    with pytest.raises(ValueError, match="2 weights for 1"):
        aggregate_states([a], [1, 2])
    with pytest.raises(ValueError, match="unknown BN policy"):
        aggregate_states([a], [1], bn_policy="fedbn")
    with pytest.raises(ValueError, match="needs bn_keys"):
        aggregate_states([a], [1], bn_policy="global_frozen")
    short = dict(b)
    del short["head.bias"]
    with pytest.raises(ValueError, match="other state keys"):
        aggregate_states([a, short], [1, 1])
    wrong = dict(b, **{"head.bias": b["head.bias"].double()})
    with pytest.raises(ValueError, match="head.bias"):
        aggregate_states([a, wrong], [1, 1])


def test_local_bn_replaces_only_bn_entries() -> None:
    a, b = _states()
    keys = bn_state_keys(BNNet())
    own = {k: b[k] for k in keys["affine"] | keys["stats"]}
    merged = apply_local_bn(a, own)
    for key in merged:
        assert torch.equal(merged[key], b[key] if key in own else a[key]), key
    assert apply_local_bn(a, None) == a
    with pytest.raises(ValueError, match="not in the model"):
        apply_local_bn(a, {"nope": torch.zeros(1)})


def test_fedprox_term_value_and_gradient() -> None:
    torch.manual_seed(0)
    net = BNNet()
    term = FedProxTerm(net, mu=0.5)
    assert float(term().detach()) == 0.0
    with torch.no_grad():
        net.head.weight.add_(0.2)
    value = term()
    assert math.isclose(float(value.detach()), 0.5 / 2 * 0.2**2 * net.head.weight.numel(), rel_tol=1e-5)
    value.backward()
    torch.testing.assert_close(net.head.weight.grad, torch.full_like(net.head.weight, 0.5 * 0.2))
    assert float(net.conv.weight.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError):
        FedProxTerm(net, mu=-1)


def test_server_keeps_the_best_round_by_weighted_validation() -> None:
    a, b = _states()
    server = ServerState(a, FedConfig(monitor="kappa"), bn_state_keys(BNNet()))
    server.aggregate([ClientResult(a, 1), ClientResult(b, 1)])
    assert server.record_validation(1, [("x", 10, {"kappa": 0.5}), ("y", 30, {"kappa": 0.9})]) == pytest.approx(0.8)
    best = {k: v.clone() for k, v in server.state.items()}
    server.aggregate([ClientResult(b, 1)])
    assert server.record_validation(2, [("x", 10, {"kappa": 0.1}), ("y", 30, {"kappa": float("nan")})]) == 0.1
    assert server.best_round == 1 and server.best_value == pytest.approx(0.8)
    assert all(torch.equal(server.best_state[k], best[k]) for k in best)
    assert [r["site"] for r in server.history].count("(weighted mean)") == 2


def _toy_sites(n: int = 2) -> list[Site]:
    return [
        Site(f"s{i}", bright_square_dataset(16, seed=10 + i), bright_square_dataset(8, seed=20 + i),
             bright_square_dataset(8, seed=30 + i))
        for i in range(n)
    ]  # fmt: skip


def _make_model() -> nn.Module:
    return build_network("compact", spatial_dims=2, in_channels=1, out_channels=2)


def _evaluate(model: nn.Module, dataset: object) -> dict[str, float]:
    import numpy as np

    xs = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(len(dataset))])
    ys = np.array([dataset[i]["label"] for i in range(len(dataset))])
    with torch.no_grad():
        prob = torch.softmax(model(xs), dim=1).numpy()
    return roc_auc_metric(ys, prob)


def _simulate(config: FedConfig, sites: list[Site]) -> ServerState:
    torch.manual_seed(0)
    initial = _make_model().state_dict()
    return simulate_inprocess(
        _make_model, initial, sites, config=config, metric_fn=roc_auc_metric, evaluate=_evaluate,
        checkpoint_meta=toy_meta(),
    )  # fmt: skip


@pytest.mark.slow
def test_inprocess_protocol_is_deterministic_and_policies_hold() -> None:
    sites = _toy_sites()
    config = FedConfig(rounds=2, batch_size=8, lr=1e-2, monitor="roc_auc")
    first, second = _simulate(config, sites), _simulate(config, sites)
    assert all(torch.equal(first.state[k], second.state[k]) for k in first.state)
    assert first.best_round in (1, 2) and len([r for r in first.history if r["site"] == "s0"]) == 2
    # a one-site federation, one round = the shared loop's training of that site with the round's seed
    torch.manual_seed(0)
    initial = _make_model().state_dict()
    single = client_update(
        _make_model(), initial, sites[0], config=FedConfig(rounds=1, batch_size=8, lr=1e-2, monitor="roc_auc"),
        server_round=1, site_index=0, metric_fn=roc_auc_metric, checkpoint_meta=toy_meta(),
    )  # fmt: skip
    one = _simulate(FedConfig(rounds=1, batch_size=8, lr=1e-2, monitor="roc_auc"), sites[:1])
    assert all(torch.equal(one.state[k], single.state[k]) for k in single.state)
    assert single.num_examples == 16 and "local_roc_auc" in single.metrics

    # global_frozen: the initial BN statistics survive every round bit for bit
    torch.manual_seed(0)
    model = _make_model()
    keys = bn_state_keys(model)
    frozen = _simulate(FedConfig(rounds=2, batch_size=8, lr=1e-2, monitor="roc_auc", bn_policy="global_frozen"), sites)
    assert keys["stats"]
    for key in keys["stats"]:
        assert torch.equal(frozen.state[key], model.state_dict()[key]), key
    assert not torch.equal(frozen.state[sorted(keys["affine"])[0]], model.state_dict()[sorted(keys["affine"])[0]])

    # FedProx with a huge mu keeps the clients near the global model
    free = _simulate(FedConfig(rounds=1, batch_size=8, lr=1e-2, monitor="roc_auc"), sites)
    prox = _simulate(FedConfig(rounds=1, batch_size=8, lr=1e-2, monitor="roc_auc", proximal_mu=1e4), sites)
    drift = {
        name: sum(float((s.state[k] - model.state_dict()[k]).float().norm()) for k in keys["affine"])
        for name, s in (("free", free), ("prox", prox))
    }
    assert drift["prox"] < 0.5 * drift["free"]


@pytest.mark.slow
def test_local_bn_policy_keeps_each_sites_bn() -> None:
    sites = _toy_sites()
    calls: list[tuple[int, float]] = []
    torch.manual_seed(0)
    initial = _make_model().state_dict()
    server = simulate_inprocess(
        _make_model, initial, sites, config=FedConfig(rounds=2, batch_size=8, lr=1e-2, monitor="roc_auc",
                                                      bn_policy="local"),
        metric_fn=roc_auc_metric, evaluate=_evaluate, checkpoint_meta=toy_meta(),
        on_round=lambda r, v: calls.append((r, v)),
    )  # fmt: skip
    assert [r for r, _ in calls] == [1, 2]
    keys = bn_state_keys(_make_model())
    stat = sorted(keys["stats"] - {k for k in keys["stats"] if k.endswith("num_batches_tracked")})[0]
    # the server's BN is the mean of two different local BNs (so it differs from the initial one)
    assert not torch.equal(server.state[stat], initial[stat])


def test_fedprox_term_reaches_the_training_loop() -> None:
    """client_update passes FedProx's term as the loop's ``extra_loss``: a huge mu keeps the local
    model near the global one (with mu = 0 the same round drifts further), nothing is left on the model."""
    site = Site("s0", bright_square_dataset(16, seed=10), bright_square_dataset(8, seed=20))
    torch.manual_seed(0)
    reference = _make_model()
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    parameters = [name for name, _ in reference.named_parameters()]
    drift = {}
    for mu in (0.0, 1e4):
        model = _make_model()
        result = client_update(
            model, initial, site, config=FedConfig(rounds=1, batch_size=8, lr=1e-2, monitor="roc_auc", proximal_mu=mu),
            server_round=1, site_index=0, metric_fn=roc_auc_metric, checkpoint_meta=toy_meta(),
        )  # fmt: skip
        assert not hasattr(model, "auxiliary_loss")
        drift[mu] = sum(float((result.state[k] - initial[k]).norm()) for k in parameters)
    assert drift[1e4] < 0.5 * drift[0.0]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="BN policy"):
        FedConfig(bn_policy="x")
    with pytest.raises(ValueError):
        FedConfig(rounds=0)
    with pytest.raises(ValueError):
        FedConfig(proximal_mu=-1)
