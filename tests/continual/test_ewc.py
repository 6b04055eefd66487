"""Diagonal Fisher (hand-computed cases, batched vs loop, seeds, subsets, files) and the EWC penalty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from continual.ewc import (
    FISHER_MODES,
    EWCPenalty,
    Fisher,
    FisherFileError,
    estimate_fisher,
    ewc_penalty,
    fisher_loop_reference,
)
from medimg.models import CheckpointError

# A 3-class linear classifier logits = W x + b on 2 features, and 4 samples.
W = np.array([[0.5, -1.0], [1.5, 0.25], [-0.75, 0.5]])
B = np.array([0.1, -0.2, 0.3])
X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0], [2.0, 1.0]])
Y = np.array([0, 2, 1, 2])


def linear_model() -> nn.Linear:
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W, dtype=torch.float32))
        model.bias.copy_(torch.tensor(B, dtype=torch.float32))
    return model


def linear_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.tensor(X, dtype=torch.float32), torch.tensor(Y))]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def hand_fisher(targets: np.ndarray, *, logprob: bool, mean: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample gradients by hand: d log p_y / dW = (e_y - p) x^T, d z_y / dW = e_y x^T (bias: without x)."""
    p = softmax(X @ W.T + B)
    onehot = np.eye(3)[targets]
    delta = onehot - p if logprob else onehot  # (N, K)
    grad_w = delta[:, :, None] * X[:, None, :]  # (N, K, D)
    fw, fb = (grad_w**2).sum(0), (delta**2).sum(0)
    return (fw / len(X), fb / len(X)) if mean else (fw, fb)


class TinyCNN(nn.Module):
    """conv -> BN -> ReLU (in place) -> conv -> BN -> ReLU -> pool -> linear: a small classifier with BN."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, padding=1, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def trained_cnn(seed: int = 0) -> TinyCNN:
    """A TinyCNN whose BN running statistics are not the defaults (a few train-mode forwards)."""
    torch.manual_seed(seed)
    model = TinyCNN()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, 10, 10) * 2 + 0.5)
    return model


def cnn_data(n: int = 12, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 10, 10, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    return [(images[:5], labels[:5]), (images[5:], labels[5:])]  # unequal batches


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"image": self.images[index], "label": int(self.labels[index])}


def assert_fisher_close(a: Fisher, b: Fisher, rtol: float = 1e-4, atol: float = 1e-9) -> None:
    assert list(a.values) == list(b.values)
    for name in a.values:
        torch.testing.assert_close(a.values[name], b.values[name], rtol=rtol, atol=atol, msg=name)


# ---------------------------------------------------------------------------------------------
# hand-computed


@pytest.mark.parametrize("mode", ["empirical_logprob", "qtim_logit_sum"])
@pytest.mark.parametrize("reference", [False, True])
def test_linear_classifier_by_hand(mode: str, reference: bool) -> None:
    fisher = (fisher_loop_reference if reference else estimate_fisher)(linear_model(), linear_data(), mode=mode)
    logprob = mode == "empirical_logprob"
    fw, fb = hand_fisher(Y, logprob=logprob, mean=logprob)
    np.testing.assert_allclose(fisher.values["weight"].numpy(), fw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fisher.values["bias"].numpy(), fb, rtol=1e-5, atol=1e-7)
    meta = fisher.meta
    assert meta["mode"] == mode and meta["n_samples"] == 4 and meta["n_classes"] == 3
    assert meta["normalization"] == ("mean" if logprob else "sum")
    assert meta["bn_eval"] is logprob  # qtim: BN in train mode by default
    assert meta["algorithm"] == ("loop" if reference else ("vmap" if logprob else "shared forward"))
    assert meta["shapes"] == {"weight": [3, 2], "bias": [3]}
    torch.testing.assert_close(fisher.anchor["weight"], torch.tensor(W, dtype=torch.float32))


def test_true_fisher_by_hand_and_seeded() -> None:
    seed = 7
    fisher = estimate_fisher(linear_model(), linear_data(), mode="true_fisher", seed=seed)
    # The documented protocol: one float64 uniform per sample from a Generator seeded with `seed`,
    # class = inverse CDF of softmax(logits) at it.
    u = torch.rand(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    cdf = softmax(X @ W.T + B).cumsum(-1)
    sampled = np.minimum((cdf < u[:, None]).sum(-1), 2)
    fw, fb = hand_fisher(sampled, logprob=True, mean=True)
    np.testing.assert_allclose(fisher.values["weight"].numpy(), fw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fisher.values["bias"].numpy(), fb, rtol=1e-5, atol=1e-7)
    again = estimate_fisher(linear_model(), linear_data(), mode="true_fisher", seed=seed)
    for name in fisher.values:
        assert torch.equal(fisher.values[name], again.values[name])
    assert fisher.meta["labels"].startswith("sampled") and fisher.meta["seed"] == seed


def test_true_fisher_converges_to_its_expectation() -> None:
    """Averaged over many draws, the true Fisher is E_x sum_y p_y ((e_y - p) x)^2."""
    reps = 4000
    x = torch.tensor(X, dtype=torch.float32).repeat(reps, 1)
    data = [(x, torch.zeros(len(x), dtype=torch.long))]
    fisher = estimate_fisher(linear_model(), data, mode="true_fisher", seed=3, batch_size=4000)
    p = softmax(X @ W.T + B)
    expected_b = np.zeros(3)
    for k in range(3):
        expected_b += (p[:, k : k + 1] * (np.eye(3)[k] - p) ** 2).mean(0)
    np.testing.assert_allclose(fisher.values["bias"].numpy(), expected_b, rtol=0.1)
    empirical = estimate_fisher(linear_model(), data)  # labels all 0: a different quantity
    assert not np.allclose(empirical.values["bias"].numpy(), expected_b, rtol=0.1)


# ---------------------------------------------------------------------------------------------
# batched == loop on a CNN with BatchNorm


@pytest.mark.parametrize("mode", FISHER_MODES)
def test_batched_equals_loop_on_bn_cnn(mode: str) -> None:
    model = trained_cnn()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batched = estimate_fisher(model, cnn_data(), mode=mode, seed=5, batch_size=4)
    loop = fisher_loop_reference(model, cnn_data(), mode=mode, seed=5, batch_size=4)
    assert_fisher_close(batched, loop)
    assert batched.meta["n_samples"] == 12 and batched.meta["n_batches"] == 2
    assert set(batched.values) == {n for n, _ in model.named_parameters()}
    assert all(bool((v >= 0).all()) and v.abs().sum() > 0 for v in batched.values.values())
    # inputs are never modified: parameters, BN buffers and modes are as before
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(m.training for m in model.modules())


def test_bn_eval_uses_running_statistics() -> None:
    """With BN in eval mode a sample's gradient does not depend on its batch mates; in train mode it does."""
    model = trained_cnn()
    data = cnn_data()
    images, labels = data[0]
    alone = [estimate_fisher(model, [(images[i : i + 1], labels[i : i + 1])]) for i in range(5)]
    together = estimate_fisher(model, [(images, labels)])
    for name in together.values:
        torch.testing.assert_close(together.values[name], sum(f.values[name] for f in alone) / 5, rtol=1e-4, atol=1e-9)
    train_mode = estimate_fisher(model, [(images, labels)], bn_eval=False)
    assert train_mode.meta["bn_eval"] is False
    assert not torch.allclose(train_mode.values["head.weight"], together.values["head.weight"])


def test_only_trainable_parameters_and_dataset_input() -> None:
    model = trained_cnn()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("features.1."))  # the first BN's gamma/beta only
    images = torch.cat([b[0] for b in cnn_data()])
    labels = torch.cat([b[1] for b in cnn_data()])
    from_dataset = estimate_fisher(model, DictDataset(images, labels), batch_size=5)
    from_batches = estimate_fisher(model, cnn_data())
    assert set(from_dataset.values) == {"features.1.weight", "features.1.bias"}
    assert_fisher_close(from_dataset, from_batches)
    assert from_dataset.meta["subset"] == "all"


def test_max_samples_subset_is_seeded() -> None:
    gen = torch.Generator().manual_seed(2)
    images, labels = torch.randn(20, 1, 10, 10, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    dataset, model = DictDataset(images, labels), trained_cnn()
    first = estimate_fisher(model, dataset, max_samples=8, seed=11, batch_size=3)
    again = estimate_fisher(model, dataset, max_samples=8, seed=11, batch_size=3)
    other = estimate_fisher(model, dataset, max_samples=8, seed=12, batch_size=3)
    assert first.meta["n_samples"] == 8 and first.meta["subset"] == "random" and first.meta["max_samples"] == 8
    for name in first.values:
        assert torch.equal(first.values[name], again.values[name])
    assert not torch.allclose(first.values["head.weight"], other.values["head.weight"])
    # the documented draw: randperm(N, Generator(seed))[:M], visited in index order
    indices = sorted(torch.randperm(20, generator=torch.Generator().manual_seed(11))[:8].tolist())
    explicit = estimate_fisher(model, [(images[indices], labels[indices])])
    assert_fisher_close(first, explicit)
    # an iterable of batches: its first max_samples samples
    head = estimate_fisher(model, cnn_data(), max_samples=7)
    assert head.meta["n_samples"] == 7 and head.meta["subset"] == "first"
    images12, labels12 = torch.cat([b[0] for b in cnn_data()]), torch.cat([b[1] for b in cnn_data()])
    assert_fisher_close(head, estimate_fisher(model, [(images12[:7], labels12[:7])]))


def test_estimate_errors() -> None:
    model = linear_model()
    with pytest.raises(ValueError, match="Fisher mode"):
        estimate_fisher(model, linear_data(), mode="diagonal")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        estimate_fisher(model, [(torch.zeros(2, 2), torch.tensor([0, 3]))])
    with pytest.raises(ValueError, match="no samples"):
        estimate_fisher(model, [])
    with pytest.raises(ValueError, match="max_samples"):
        estimate_fisher(model, linear_data(), max_samples=0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        estimate_fisher(model, linear_data())


# ---------------------------------------------------------------------------------------------
# files


def test_save_load_round_trip(tmp_path: Path) -> None:
    fisher = estimate_fisher(trained_cnn(), cnn_data(), mode="true_fisher", seed=4)
    path = fisher.save(tmp_path / "sub" / "fisher_A.pt")
    assert [p.name for p in path.parent.iterdir()] == ["fisher_A.pt"]  # no temporary left behind
    loaded = Fisher.load(path)
    assert loaded.meta == fisher.meta
    for name in fisher.values:
        assert torch.equal(loaded.values[name], fisher.values[name])
        assert torch.equal(loaded.anchor[name], fisher.anchor[name])
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "medimg-fisher" and raw["version"] == 1
    Fisher(values=fisher.values, meta={}, anchor=None).save(tmp_path / "bare.pt")
    assert Fisher.load(tmp_path / "bare.pt").anchor is None


class Pickled:
    pass


def test_load_bad_files(tmp_path: Path) -> None:
    good = {"weight": torch.ones(3, 2)}

    def write(name: str, payload: object) -> Path:
        torch.save(payload, tmp_path / name)
        return tmp_path / name

    base = {"format": "medimg-fisher", "version": 1, "values": good, "meta": {}, "anchor": None}
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    cases = {
        tmp_path / "missing.pt": "does not exist",
        tmp_path / "garbage.pt": "could not be read",
        write("pickled.pt", {"format": "medimg-fisher", "obj": Pickled()}): "pickled Python objects",
        write("checkpoint.pt", {"format": "medimg-checkpoint", "version": 1}): "not a medimg Fisher file",
        write("bare.pt", good): "not a medimg Fisher file",
        write("future.pt", {**base, "version": 2}): "version 2",
        write("values.pt", {**base, "values": {"weight": [1.0]}}): "'values' must be",
        write("negative.pt", {**base, "values": {"weight": -torch.ones(3, 2)}}): "negative or non-finite",
        write("anchor.pt", {**base, "anchor": {"weight": torch.ones(2, 3)}}): "anchor lacks or mis-shapes",
    }
    for path, message in cases.items():
        with pytest.raises(FisherFileError, match=message) as info:
            Fisher.load(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value, CheckpointError)


# ---------------------------------------------------------------------------------------------
# penalty


def test_penalty_known_value_zero_at_anchor_and_gradient() -> None:
    model = linear_model()
    fisher_w = torch.tensor([[1.0, 2.0], [0.0, 0.5], [3.0, 1.0]])
    fisher_b = torch.tensor([2.0, 0.0, 4.0])
    fisher = Fisher(values={"weight": fisher_w, "bias": fisher_b}, anchor=None)
    at_model = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert ewc_penalty(model, fisher, at_model, 10.0).item() == 0.0
    anchor = {"weight": at_model["weight"] - 1.0, "bias": at_model["bias"] + torch.tensor([1.0, 2.0, -0.5])}
    # (lam / 2) * (sum F_w * 1 + (2 * 1 + 0 * 4 + 4 * 0.25)) = 1.5 * (7.5 + 3) with lam = 3
    penalty = EWCPenalty(model, fisher, 3.0, anchor=anchor)
    value = penalty()
    assert value.item() == pytest.approx(1.5 * (7.5 + 3.0))
    value.backward()
    torch.testing.assert_close(model.weight.grad, 3.0 * fisher_w * (model.weight.detach() - anchor["weight"]))
    torch.testing.assert_close(model.bias.grad, 3.0 * fisher_b * (model.bias.detach() - anchor["bias"]))
    # frozen parameters contribute nothing; the value follows the parameters (lists built once)
    model.weight.requires_grad_(False)
    assert penalty().item() == pytest.approx(1.5 * 3.0)
    with torch.no_grad():
        model.bias.copy_(anchor["bias"])
    assert penalty().item() == 0.0


def test_penalty_uses_fisher_anchor_and_skips_missing() -> None:
    model = trained_cnn()
    fisher = estimate_fisher(model, cnn_data())
    assert ewc_penalty(model, fisher, None, 100.0).item() == 0.0
    fisher.values["gone.weight"] = torch.ones(2)
    fisher.anchor["gone.weight"] = torch.zeros(2)
    penalty = EWCPenalty(model, fisher, 1.0)
    assert penalty.missing == ["gone.weight"] and "gone.weight" not in penalty.names
    with torch.no_grad():
        model.head.bias.add_(1.0)
    assert penalty().item() == pytest.approx(0.5 * fisher.values["head.bias"].sum().item(), rel=1e-6)


def test_penalty_errors() -> None:
    model = linear_model()
    values = {"weight": torch.ones(3, 2)}
    anchor = {"weight": torch.zeros(3, 2)}
    with pytest.raises(ValueError, match="no EWC anchor"):
        EWCPenalty(model, values, 1.0)
    with pytest.raises(ValueError, match="shape"):
        EWCPenalty(model, {"weight": torch.ones(2, 3)}, 1.0, anchor=anchor)
    with pytest.raises(ValueError, match="anchor for 'weight' has shape"):
        EWCPenalty(model, values, 1.0, anchor={"weight": torch.zeros(6)})
    with pytest.raises(ValueError, match="lacks parameter"):
        EWCPenalty(model, values, 1.0, anchor={})
    with pytest.raises(ValueError, match="lambda"):
        EWCPenalty(model, values, -1.0, anchor=anchor)


def test_default_chunk_fits_the_memory_budget() -> None:
    from continual.ewc import default_chunk

    assert default_chunk(trained_cnn()) == 256  # a few hundred parameters: the cap
    big = nn.Linear(4096, 4096)  # 16.8 M parameters: 64 MB per sample -> the floor
    assert default_chunk(big) == 8
    assert default_chunk(nn.Linear(1000, 1000), memory=40 * 2**20) == 10  # 4 MB per sample
