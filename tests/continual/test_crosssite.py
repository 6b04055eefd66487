"""Cross-site gains, their bootstrap intervals and claim statuses by hand; test-time BN without labels."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torch import nn

from continual.bn import recompute_bn_stats
from continual.crosssite import (
    Score,
    adapt_bn_statistics,
    bootstrap,
    claim_status,
    combine,
    replicate,
    seed_quantities,
    summarize,
)


def _table() -> list[dict]:
    """A hand-made score table: two seeds, sites a and b (scores are kappas)."""
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        rows += [
            {"seed": seed, "role": "local_own", "bn": "site_own", "site": "a", "score": 0.8},
            {"seed": seed, "role": "local_own", "bn": "site_own", "site": "b", "score": 0.6},
            {"seed": seed, "role": "federated_own", "bn": "federation_mean", "site": "a", "score": 0.5},
            {"seed": seed, "role": "federated_own", "bn": "federation_mean", "site": "b", "score": 0.5},
            {"seed": seed, "role": "personalized_own", "bn": "site_own", "site": "a", "score": 0.9 + shift},
            {"seed": seed, "role": "personalized_own", "bn": "site_own", "site": "b", "score": 0.7},
            {"seed": seed, "role": "local_unseen", "bn": "training_site", "site": "b", "score": 0.1},
            {"seed": seed, "role": "local_unseen", "bn": "training_site", "site": "a", "score": 0.3},
            {"seed": seed, "role": "local_unseen", "bn": "tta", "site": "b", "score": 0.4},
            {"seed": seed, "role": "local_unseen", "bn": "tta", "site": "a", "score": 0.4},
            {"seed": seed, "role": "heldout", "bn": "federation_mean", "site": "a", "score": 0.2 + shift},
            {"seed": seed, "role": "heldout", "bn": "federation_mean", "site": "b", "score": 0.4},
            {"seed": seed, "role": "heldout", "bn": "tta", "site": "a", "score": 0.6},
            {"seed": seed, "role": "heldout", "bn": "tta", "site": "b", "score": float("nan")},
        ]
    return rows


def test_gains_by_hand_on_a_score_table() -> None:
    """Breaking it: counting the personalized own-site scores as generalization, mixing the BN
    variants, or comparing against the shared model where FedBN has personalized ones."""
    per_seed = seed_quantities(_table())
    q0 = per_seed[0]
    assert q0["federated_own"] == pytest.approx((0.9 + 0.7) / 2)  # personalized wins over the shared model
    assert q0["federated_shared_own"] == pytest.approx(0.5)
    assert q0["local_own"] == pytest.approx(0.7)
    assert q0["local_gain"] == pytest.approx(((0.9 - 0.8) + (0.7 - 0.6)) / 2)
    assert q0["heldout"] == pytest.approx(0.3) and q0["local_unseen"] == pytest.approx(0.2)
    assert q0["heldout_tta"] == pytest.approx(0.6)  # NaN left out of the mean
    assert q0["local_unseen_tta"] == pytest.approx(0.4)
    assert math.isnan(q0["pooled_own"])
    g = combine(per_seed)
    assert g["local_gain"] == pytest.approx((0.1 + 0.15) / 2)
    assert g["local_gain_relative"] == pytest.approx(0.125 / 0.7)
    held = (0.3 + 0.35) / 2
    assert g["generalizability_gain_absolute"] == pytest.approx(held - 0.2)
    assert g["generalizability_gain"] == pytest.approx((held - 0.2) / 0.2)
    assert g["generalizability_gain_tta"] == pytest.approx((0.6 - 0.4) / 0.4)
    # a bootstrap draw of seeds counts repeats again
    assert combine(per_seed, [1, 1])["local_gain"] == pytest.approx(0.15)


def test_generalization_is_paired_over_the_held_out_sites() -> None:
    """A site where the held-out federation's score is undefined (NaN) leaves both sides: the local
    models' scores there do not count either. Breaking it: the unpaired means (G_local over every
    pair, 0.2 here) compare the federation at site a alone with the local models at a and b."""
    rows = [
        {"seed": 0, "role": "local_unseen", "bn": "training_site", "site": "b", "score": 0.1},
        {"seed": 0, "role": "local_unseen", "bn": "training_site", "site": "a", "score": 0.3},
        {"seed": 0, "role": "heldout", "bn": "federation_mean", "site": "a", "score": 0.5},
        {"seed": 0, "role": "heldout", "bn": "federation_mean", "site": "b", "score": float("nan")},
    ]
    q = seed_quantities(rows)[0]
    assert q["heldout"] == pytest.approx(0.5) and q["local_unseen"] == pytest.approx(0.3)
    assert combine({0: q})["generalizability_gain_absolute"] == pytest.approx(0.2)
    # without held-out rows the local models' mean over every unseen site is still reported
    q = seed_quantities(rows[:2])[0]
    assert math.isnan(q["heldout"]) and q["local_unseen"] == pytest.approx(0.2)
    # a relative gain over a local score at or below zero is undefined, not sign-flipped
    rows[1]["score"] = -0.1
    assert math.isnan(combine(seed_quantities(rows))["generalizability_gain"])


def test_claim_status_rule() -> None:
    """Breaking it: calling an interval that includes zero 'met'."""
    assert claim_status([0.01, 0.2]) == "met"
    assert claim_status([-0.01, 0.2]) == "not shown"
    assert claim_status([0.0, 0.2]) == "not shown"
    assert claim_status([-0.3, -0.1]) == "reversed"
    assert claim_status([float("nan"), 0.2]) == "not shown"


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(p.argmax(axis=1) == y)) if len(y) else math.nan


def _score(seed: int, model: str, role: str, bn: str, site: str, correct: list[bool], **kw: object) -> Score:
    y = np.zeros(len(correct), dtype=int)
    p = np.array([[0.9, 0.1] if c else [0.1, 0.9] for c in correct])
    return Score(seed, model, role, bn, site, y, p, **kw)  # type: ignore[arg-type]


def test_seed_resampling_interval_includes_zero_so_not_shown() -> None:
    """Seed 0: federated better at one site (gain +0.5); seed 1: worse (-0.5). Each cell is all right
    or all wrong, so resampling images changes nothing and the replicates are the seed draws:
    {0,0} -> +0.5, {1,1} -> -0.5, mixed -> 0. The 95% interval is [-0.5, +0.5]: not shown.
    Breaking it: not resampling seeds gives [0, 0]; a 'met' for an interval through zero."""
    both = [True, True]
    scores = []
    for seed, fed, local in ((0, (both, both), (both, [False, False])), (1, (both, [False, False]), (both, both))):
        for site, f, lo in zip("ab", fed, local, strict=True):
            scores.append(_score(seed, "federated", "federated_own", "federation_mean", site, f))
            scores.append(_score(seed, f"local_{site}", "local_own", "site_own", site, lo))
    groups = {"a": ["p1", "p2"], "b": ["p3", "p4"]}
    result = summarize(scores, groups, _accuracy, n_boot=400, seed=1)
    claim = result["claims"]["local_gain"]
    assert claim["value"] == pytest.approx(0.0)
    assert claim["ci95"] == pytest.approx([-0.5, 0.5])
    assert claim["status"] == "not shown"
    assert "generalizability_gain" not in result["claims"]  # no held-out scores: no generalization claim
    # federated right everywhere, local-only wrong everywhere: +1 in every replicate -> met
    scores = [_score(0, "federated", "federated_own", "federation_mean", "a", both),
              _score(0, "local_a", "local_own", "site_own", "a", [False, False])]  # fmt: skip
    met = summarize(scores, {"a": ["p1", "p2"]}, _accuracy, n_boot=50)["claims"]["local_gain"]
    assert met["ci95"] == [1.0, 1.0] and met["status"] == "met"


def test_test_images_are_resampled_by_patient() -> None:
    """One site, patients p1 (1 image, predicted right) and p2 (3 images, wrong). Drawing two
    patients: {p1,p1} -> accuracy 1, {p2,p2} -> 0, mixed -> 1/4, each pair with probability 1/4,
    1/4, 1/2, so the 97.5th percentile is 1. Resampling single images instead would give at most
    3/4 there (four right out of four has probability 1/256). Also a replicate by hand."""
    correct = [True, False, False, False]
    scores = [
        _score(0, "heldout_a", "heldout", "federation_mean", "a", correct, trained_on=("b",)),
        _score(0, "local_b", "local_unseen", "training_site", "a", [True] * 4, trained_on=("b",)),
    ]
    groups = {"a": ["p1", "p2", "p2", "p2"]}
    ci = bootstrap(scores, groups, _accuracy, n_boot=2000, seed=0)
    assert ci["heldout"] == pytest.approx((0.0, 1.0))
    assert ci["generalizability_gain_absolute"] == pytest.approx((-1.0, 0.0))
    # a replicate that drew p1 twice and p2 once (positions 0, 0, 1, 2, 3): 2 of 5 right
    rep = replicate(scores, _accuracy, {"a": np.array([0, 0, 1, 2, 3])})
    assert rep["heldout"] == pytest.approx(2 / 5) and rep["local_unseen"] == 1.0
    with pytest.raises(ValueError, match="patient keys"):
        bootstrap(scores, {"a": ["p1"]}, _accuracy, n_boot=1)


def test_a_model_is_never_scored_as_unseen_where_it_trained() -> None:
    """Breaking it: dropping the check lets a personalized or full federation pose as held-out."""
    with pytest.raises(ValueError, match="trained on a"):
        _score(0, "federated", "heldout", "federation_mean", "a", [True], trained_on=("a", "b"))
    with pytest.raises(ValueError, match="unknown BN"):
        _score(0, "local_a", "local_unseen", "mystery", "b", [True], trained_on=("a",))


class _NoLabels(Mapping):
    """A dataset item whose label raises when read."""

    def __init__(self, image: torch.Tensor) -> None:
        self._image = image

    def __getitem__(self, key: str) -> torch.Tensor:
        if key != "image":
            raise AssertionError(f"test-time BN read {key!r}")
        return self._image

    def __iter__(self):  # noqa: ANN204
        return iter(("image", "label"))

    def __len__(self) -> int:
        return 2


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_test_time_bn_never_reads_labels_and_gives_the_sites_statistics() -> None:
    """Breaking it: reading item['label'] (raises), or leaving the trained statistics in place."""
    torch.manual_seed(0)
    images = [torch.randn(1, 8, 8) * 3 + 2 for _ in range(7)]
    dataset = [_NoLabels(im) for im in images]
    model = _Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert adapt_bn_statistics(model, dataset, batch_size=3) == 7
    reference = _Net()
    reference.load_state_dict(before)
    recompute_bn_stats(reference, [torch.stack(images)])
    after = model.state_dict()
    torch.testing.assert_close(after["bn.running_mean"], reference.bn.running_mean)
    torch.testing.assert_close(after["bn.running_var"], reference.bn.running_var)
    assert not torch.allclose(after["bn.running_mean"], before["bn.running_mean"])
    for key in ("conv.weight", "bn.weight", "bn.bias", "head.weight"):
        assert torch.equal(after[key], before[key]), key
    with pytest.raises(ValueError, match="at least one image"):
        adapt_bn_statistics(model, [])
