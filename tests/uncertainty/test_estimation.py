"""Uncertainty-map estimation: the entropy mapping, TTA, MC dropout, ensembles, uint8 maps."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from monai.networks.nets import SegResNet

from uncertainty.estimation import (
    DEFAULT_REGIONS,
    SUPPORTED_METHODS,
    UncertaintyResult,
    estimate_uncertainty,
    flip_combinations,
    predictive_entropy_map,
)

SHAPE = (1, 4, 16, 16, 16)


def _image(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _segresnet(dropout_prob: float | None = 0.3, seed: int = 0) -> SegResNet:
    torch.manual_seed(seed)
    return SegResNet(
        spatial_dims=3,
        in_channels=4,
        out_channels=3,
        init_filters=4,
        blocks_down=(1, 1),
        blocks_up=(1,),
        dropout_prob=dropout_prob,
        norm="batch",
    )


def _sigmoid_of_model(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(model(x))


def _pointwise(_model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A flip-equivariant predictor: the sigmoid of the first three input channels."""
    return torch.sigmoid(x[:, :3])


def _modes(model: torch.nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


# --- the mapping to [0, 100] ---------------------------------------------------------------


def test_entropy_is_100_at_one_half_and_0_at_certainty() -> None:
    u = predictive_entropy_map(torch.tensor([0.0, 0.5, 1.0]))
    assert u.dtype == torch.float32
    assert u.tolist() == [0.0, 100.0, 0.0]


def test_entropy_matches_the_formula_and_is_monotone_on_the_lower_half() -> None:
    p = torch.linspace(0.0, 0.5, 1001, dtype=torch.float64)
    u = predictive_entropy_map(p)
    assert torch.all(u[1:] > u[:-1])
    q = p[1:]
    expected = 100 * (-q * torch.log(q) - (1 - q) * torch.log(1 - q)) / math.log(2)
    torch.testing.assert_close(u[1:], expected.float(), atol=1e-4, rtol=1e-5)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
def test_entropy_is_symmetric_and_in_range(p: float) -> None:
    u = predictive_entropy_map(torch.tensor([p, 1.0 - p], dtype=torch.float64))
    assert 0.0 <= u.min().item() and u.max().item() <= 100.0
    assert u[0].item() == pytest.approx(u[1].item(), abs=1e-4)


def test_entropy_keeps_shape_and_accepts_integer_masks() -> None:
    probabilities = torch.rand(3, 4, 5, 6)
    assert predictive_entropy_map(probabilities).shape == (3, 4, 5, 6)
    assert predictive_entropy_map(torch.tensor([[0, 1], [1, 0]], dtype=torch.uint8)).eq(0).all()


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan")])
def test_entropy_rejects_values_outside_the_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predictive_entropy_map(torch.tensor([0.2, bad]))


# --- test-time augmentation ----------------------------------------------------------------


def test_flip_combinations_count_and_order() -> None:
    assert flip_combinations(1) == [(), (0,)]
    assert flip_combinations(2) == [(), (0,), (1,), (0, 1)]
    three = flip_combinations(3)
    assert len(three) == 8 and len(set(three)) == 8
    assert three == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    with pytest.raises(ValueError):
        flip_combinations(0)


@pytest.mark.parametrize(("shape", "expected"), [((1, 4, 16, 16, 16), 8), ((1, 4, 12, 10), 4)])
def test_tta_with_an_equivariant_predictor_equals_a_single_pass(shape: tuple[int, ...], expected: int) -> None:
    image = _image(1, shape)  # asymmetric: a flip that is not undone would change the mean
    result = estimate_uncertainty(_pointwise, image, torch.nn.Identity(), method="tta")
    assert result.samples == expected and result.method == "tta"
    single = _pointwise(torch.nn.Identity(), image)[0]
    assert result.mean_probability.shape == single.shape and result.mean_probability.dtype == torch.float32
    torch.testing.assert_close(result.mean_probability, single, atol=1e-6, rtol=0)
    assert list(result.maps) == list(DEFAULT_REGIONS)
    for region, channel in DEFAULT_REGIONS.items():
        torch.testing.assert_close(result.maps[region], predictive_entropy_map(single[channel]), atol=1e-3, rtol=0)


def test_tta_feeds_flipped_inputs_in_order_and_undoes_each_flip() -> None:
    image = _image(2)
    seen: list[torch.Tensor] = []

    def recording(_model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        # Marks voxel (0, 0, 0) of the *input it received*: flipped back, the marks land on the
        # corners that the flips moved (0, 0, 0) to, unless each flip is undone.
        out = torch.full((1, 3, *x.shape[2:]), 0.5)
        out[..., 0, 0, 0] = 1.0
        return out

    result = estimate_uncertainty(recording, image, torch.nn.Identity(), method="tta", samples=3)
    assert result.samples == 3
    for x, dims in zip(seen, [[], [2], [3]], strict=True):
        torch.testing.assert_close(x, torch.flip(image, dims) if dims else image)
    mean = result.mean_probability
    # Identity leaves the mark at (0, 0, 0); flips over axis 0 / axis 1 are undone to (15, 0, 0) / (0, 15, 0).
    expected = torch.full_like(mean, 0.5)
    expected[:, 0, 0, 0] += 0.5 / 3
    expected[:, 15, 0, 0] += 0.5 / 3
    expected[:, 0, 15, 0] += 0.5 / 3
    torch.testing.assert_close(mean, expected)


def test_tta_with_a_position_dependent_predictor_reports_disagreement() -> None:
    image = _image(3)
    ramp = torch.linspace(0.0, 1.0, 16).view(1, 1, 16, 1, 1).expand(1, 3, 16, 16, 16)

    def position_dependent(_model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return ramp.clone()  # ignores the flip: not equivariant along axis 0

    result = estimate_uncertainty(position_dependent, image, torch.nn.Identity(), method="tta", flip_axes=[(), (0,)])
    assert result.samples == 2
    torch.testing.assert_close(result.mean_probability, torch.full((3, 16, 16, 16), 0.5))
    for u in result.maps.values():
        assert torch.all(u == 100.0)  # ramp and reversed ramp average to 0.5 everywhere
    single = predictive_entropy_map(ramp[0, 0])
    assert single[0].eq(0).all() and single[-1].eq(0).all()  # one pass alone is certain at the ends
    # Flips over axes 1 and 2 commute with this predictor: no disagreement, the single-pass map.
    agree = estimate_uncertainty(position_dependent, image, torch.nn.Identity(), method="tta", flip_axes=[(), (1, 2)])
    torch.testing.assert_close(agree.maps["WT"], single, atol=1e-3, rtol=0)


def test_tta_samples_cap_and_invalid_flip_axes() -> None:
    image = _image(4)
    assert estimate_uncertainty(_pointwise, image, torch.nn.Identity(), method="tta", samples=5).samples == 5
    assert estimate_uncertainty(_pointwise, image, [torch.nn.Identity()], method="tta", samples=50).samples == 8
    for bad in ([(3,)], [(0, 0)], [(-1,)], []):
        with pytest.raises(ValueError):
            estimate_uncertainty(_pointwise, image, torch.nn.Identity(), method="tta", flip_axes=bad)


def test_tta_runs_the_model_in_eval_mode_and_restores_it() -> None:
    model = _segresnet()
    model.train()
    before = _modes(model)
    inside: list[bool] = []

    def predict(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        inside.append(any(module.training for module in m.modules()))
        return _sigmoid_of_model(m, x)

    result = estimate_uncertainty(predict, _image(5), model, method="tta", samples=2)
    assert inside == [False, False]
    assert _modes(model) == before
    assert all(0.0 <= u.min().item() and u.max().item() <= 100.0 for u in result.maps.values())


def test_tta_accepts_a_metatensor_and_returns_plain_tensors() -> None:
    image = MetaTensor(_image(6), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    result = estimate_uncertainty(_pointwise, image, torch.nn.Identity(), method="tta", samples=2)
    assert type(result.mean_probability) is torch.Tensor
    assert all(type(u) is torch.Tensor for u in result.maps.values())


# --- MC dropout ----------------------------------------------------------------------------


def test_mc_dropout_is_reproducible_and_seed_dependent() -> None:
    model = _segresnet()
    image = _image(7)
    first = estimate_uncertainty(_sigmoid_of_model, image, model, method="mc-dropout", samples=4, seed=11)
    again = estimate_uncertainty(_sigmoid_of_model, image, model, method="mc-dropout", samples=4, seed=11)
    other = estimate_uncertainty(_sigmoid_of_model, image, model, method="mc-dropout", samples=4, seed=12)
    assert first.samples == 4 and first.method == "mc-dropout"
    torch.testing.assert_close(first.mean_probability, again.mean_probability, atol=0, rtol=0)
    for region in first.maps:
        torch.testing.assert_close(first.maps[region], again.maps[region], atol=0, rtol=0)
    assert not torch.equal(first.mean_probability, other.mean_probability)
    # The passes disagree: the mean differs from the deterministic (eval-mode) prediction.
    model.eval()
    with torch.no_grad():
        deterministic = _sigmoid_of_model(model, image)[0]
    assert (first.mean_probability - deterministic).abs().max() > 1e-4


def test_mc_dropout_switches_only_dropout_and_restores_every_mode() -> None:
    model = _segresnet()
    model.train()
    model.up_layers.eval()  # a mixed state must come back exactly as it was
    before = _modes(model)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert batch_norms and dropouts
    stats = [bn.running_mean.clone() for bn in batch_norms]
    seen: list[tuple[bool, bool]] = []

    def predict(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append((any(bn.training for bn in batch_norms), all(d.training for d in dropouts)))
        return _sigmoid_of_model(m, x)

    rng = torch.get_rng_state()
    estimate_uncertainty(predict, _image(8), model, method="mc-dropout", samples=3)
    assert seen == [(False, True)] * 3
    assert _modes(model) == before
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(batch_norms, stats, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is untouched

    model.eval()
    estimate_uncertainty(_sigmoid_of_model, _image(8), model, method="mc-dropout", samples=1)
    assert not any(_modes(model))


def test_mc_dropout_restores_modes_when_predict_raises() -> None:
    model = _segresnet()
    model.eval()
    model.convInit.train()
    before = _modes(model)
    calls = 0

    def failing(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("out of memory")
        return _sigmoid_of_model(m, x)

    with pytest.raises(RuntimeError, match="out of memory"):
        estimate_uncertainty(failing, _image(9), model, method="mc-dropout", samples=3)
    assert _modes(model) == before


def test_mc_dropout_needs_dropout_layers() -> None:
    with pytest.raises(ValueError, match="has no dropout layers.*dropout_prob"):
        estimate_uncertainty(_sigmoid_of_model, _image(10), _segresnet(dropout_prob=None), method="mc-dropout")
    with pytest.raises(ValueError, match="has no dropout layers"):
        estimate_uncertainty(_sigmoid_of_model, _image(10), _segresnet(dropout_prob=0.0), method="mc-dropout")


# --- ensembles -----------------------------------------------------------------------------


def _conv(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv3d(4, 3, kernel_size=3, padding=1)


def _hard(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Certain (0/1) predictions: any spread in the mean comes from disagreement alone."""
    return (model(x) > 0).float()


def test_ensemble_of_identical_models_is_certain_where_each_model_is() -> None:
    first = _conv(0)
    image = _image(11)
    result = estimate_uncertainty(_hard, image, [first, copy.deepcopy(first)], method="ensemble")
    assert result.samples == 2 and result.method == "ensemble"
    assert all(u.eq(0).all() for u in result.maps.values())
    # With soft predictions, identical members give exactly the single model's entropy.
    soft = estimate_uncertainty(_sigmoid_of_model, image, [first, copy.deepcopy(first)], method="ensemble")
    with torch.no_grad():
        single = _sigmoid_of_model(first, image)[0]
    for region, channel in DEFAULT_REGIONS.items():
        torch.testing.assert_close(soft.maps[region], predictive_entropy_map(single[channel]), atol=1e-3, rtol=0)


def test_ensemble_of_different_models_is_uncertain_where_they_disagree() -> None:
    models = [_conv(0), _conv(1)]
    image = _image(12)
    result = estimate_uncertainty(_hard, image, models, method="ensemble")
    with torch.no_grad():
        a, b = (_hard(m, image)[0] for m in models)
    disagree = a != b
    assert disagree.any() and (~disagree).any()
    for region, channel in DEFAULT_REGIONS.items():
        u = result.maps[region]
        assert torch.all(u[disagree[channel]] == 100.0)
        assert torch.all(u[~disagree[channel]] == 0.0)


def test_ensemble_needs_two_models_and_restores_modes() -> None:
    with pytest.raises(ValueError, match="at least 2 models"):
        estimate_uncertainty(_hard, _image(13), [_conv(0)], method="ensemble")
    with pytest.raises(ValueError, match="at least 2 models"):
        estimate_uncertainty(_hard, _image(13), _conv(0), method="ensemble")
    models = [_segresnet(seed=0), _segresnet(seed=1)]
    models[0].train()
    models[1].eval()
    before = [_modes(m) for m in models]
    estimate_uncertainty(_sigmoid_of_model, _image(13), models, method="ensemble")
    assert [_modes(m) for m in models] == before


# --- the result and input checks -----------------------------------------------------------


def test_uint8_maps_round_and_clip() -> None:
    values = torch.tensor([0.0, 0.4, 0.6, 49.4, 49.6, 99.5, 100.0, 100.4])
    result = UncertaintyResult(mean_probability=torch.zeros(1, 8), maps={"WT": values}, method="tta", samples=1)
    maps = result.uint8_maps()
    assert maps["WT"].dtype == torch.uint8
    assert maps["WT"].tolist() == [0, 0, 1, 49, 50, 100, 100, 100]
    assert result.maps["WT"] is values and values[-1].item() == pytest.approx(100.4)  # not modified


def test_custom_regions_mapping() -> None:
    image = _image(14)
    result = estimate_uncertainty(_pointwise, image, torch.nn.Identity(), method="tta", regions={"WT": 2, "ET": 0})
    assert list(result.maps) == ["WT", "ET"]
    torch.testing.assert_close(result.maps["WT"], predictive_entropy_map(result.mean_probability[2]))
    torch.testing.assert_close(result.maps["ET"], predictive_entropy_map(result.mean_probability[0]))
    with pytest.raises(ValueError, match="channels outside"):
        estimate_uncertainty(_pointwise, image, torch.nn.Identity(), method="tta", regions={"WT": 3})


def test_invalid_arguments_are_refused() -> None:
    image = _image(15)
    identity = torch.nn.Identity()
    assert SUPPORTED_METHODS == ("tta", "mc-dropout", "ensemble")
    with pytest.raises(ValueError, match="unknown uncertainty method"):
        estimate_uncertainty(_pointwise, image, identity, method="bayes")
    with pytest.raises(ValueError, match="samples"):
        estimate_uncertainty(_pointwise, image, identity, method="tta", samples=0)
    with pytest.raises(ValueError, match="exactly one model"):
        estimate_uncertainty(_pointwise, image, [identity, identity], method="tta")
    with pytest.raises(ValueError, match=r"\(1, C, \*spatial\)"):
        estimate_uncertainty(_pointwise, image[0], identity, method="tta")
    with pytest.raises(ValueError, match="probabilities in"):
        estimate_uncertainty(lambda m, x: x[:, :3] * 10, image, identity, method="tta")
    with pytest.raises(ValueError, match="predict returned shape"):
        estimate_uncertainty(lambda m, x: torch.sigmoid(x[:, :3, :8]), image, identity, method="tta")
