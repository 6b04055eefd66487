"""The eight saliency methods: shapes, paper-faithful numerics, guided backprop, batching, model safety."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from medimg.models import build_network
from saliency.methods import (
    LABELS,
    METHODS,
    MapBatch,
    default_layer,
    explain,
    method_settings,
    passes_per_image,
    supports_3d,
)
from saliency.postprocess import PostProcess, postprocess

# Small segmentation settings so XRAI on 48x48 test images stays fast (the defaults resize to 224).
FAST_XRAI = {"resize": None, "scales": (20, 60), "min_size": 20, "dilation_radius": 1, "min_pixel_diff": 10}


def _compact(spatial_dims: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_network("compact", spatial_dims=spatial_dims, in_channels=1, out_channels=2)
    # A positive head makes every Grad-CAM map have positive evidence (no degenerate maps by chance).
    with torch.no_grad():
        model.class_layers.out.weight.abs_()
    return model.eval()


@pytest.fixture(scope="module")
def compact2d() -> torch.nn.Module:
    return _compact(2)


@pytest.fixture(scope="module")
def images2d() -> torch.Tensor:
    return torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(1))


class _Poly(torch.nn.Module):
    """Logits ``(sum(w * x**power), -sum(w * x**power))``: analytic gradients."""

    def __init__(self, shape: tuple[int, ...], power: int, seed: int = 0) -> None:
        super().__init__()
        self.power = power
        self.w = torch.nn.Parameter(torch.rand(shape, generator=torch.Generator().manual_seed(seed)) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = (self.w * x**self.power).flatten(1).sum(1)
        return torch.stack([value, -value], dim=1)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _GuidedReLUModule(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU.apply(x)


def _reference_guided_backprop(model: torch.nn.Module, images: torch.Tensor, target: int) -> torch.Tensor:
    """Guided backprop by module replacement (every ReLU, including a reused one, becomes guided)."""
    guided = copy.deepcopy(model).eval()

    def swap(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, _GuidedReLUModule())
            else:
                swap(child)

    swap(guided)
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(guided(x)[:, target].sum(), x)
    return grad


# --------------------------------------------------------------------------------------------
# settings


def test_passes_per_image_and_settings_report() -> None:
    expected = {
        "gradient": 1,
        "smoothgrad": 25,
        "integrated_gradients": 10,
        "smoothgrad_ig": 250,
        "gradcam": 1,
        "guided_backprop": 1,
        "guided_gradcam": 2,
        "xrai": 200,
    }
    assert {m: passes_per_image(method_settings(m)) for m in METHODS} == expected
    assert passes_per_image(method_settings("integrated_gradients", "captum")) == 50
    assert passes_per_image(method_settings("smoothgrad", "captum")) == 5
    for preset in ("paper", "captum"):
        for method in METHODS:
            report = json.loads(json.dumps(method_settings(method, preset).to_dict()))
            assert report["method"] == method and report["label"] == LABELS[method] and report["preset"] == preset
            assert report["passes_per_image"] == passes_per_image(method_settings(method, preset))
    paper_sg = method_settings("smoothgrad").to_dict()
    assert (paper_sg["samples"], paper_sg["noise"], paper_sg["nt_type"]) == (25, 0.15, "smoothgrad_sq")
    ig = method_settings("integrated_gradients")
    assert (ig.steps, ig.baseline, ig.integration) == (10, "min", "riemann_equal")
    assert method_settings("xrai").postprocess == PostProcess(channel_reduce=None)
    assert method_settings("xrai").baseline == ("min", "max")
    gcam = method_settings("gradcam", "captum")
    assert (gcam.relu, gcam.interpolation, gcam.cam_normalize) == (False, "nearest", False)
    assert [m for m in METHODS if not supports_3d(m)] == ["xrai"]


def test_overrides() -> None:
    settings = method_settings("integrated_gradients", abs=False, steps=20, baseline=-1.0)
    assert settings.postprocess == PostProcess(abs=False) and settings.steps == 20 and settings.baseline == -1.0
    assert passes_per_image(settings) == 20
    with pytest.raises(ValueError, match="unknown setting"):
        method_settings("gradient", sigma=3)
    with pytest.raises(ValueError, match="unknown method"):
        method_settings("lime")
    with pytest.raises(ValueError, match="unknown preset"):
        method_settings("gradient", "pair")
    with pytest.raises(ValueError, match="equal-weight"):
        method_settings("integrated_gradients", implementation="captum", integration="riemann_equal")
    with pytest.raises(ValueError, match="baseline"):
        method_settings("integrated_gradients", baseline="black")
    with pytest.raises(TypeError):
        method_settings("xrai", xrai={"scale": 3})
    fast = method_settings("xrai", xrai=FAST_XRAI)
    assert fast == method_settings("xrai", xrai=dict(FAST_XRAI)) != method_settings("xrai")
    assert len({fast, method_settings("xrai", xrai=dict(FAST_XRAI))}) == 1  # hashable (cache keys)
    assert fast.to_dict()["xrai"]["scales"] == [20, 60]


# --------------------------------------------------------------------------------------------
# every method, 2-D and 3-D


@pytest.mark.parametrize("preset", ["paper", "captum"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_2d(method: str, preset: str, compact2d: torch.nn.Module, images2d: torch.Tensor) -> None:
    overrides = {"xrai": FAST_XRAI} if method == "xrai" else {}
    settings = method_settings(method, preset, **overrides)
    result = explain(compact2d, images2d, method, settings=settings, batch_size=64)
    assert isinstance(result, MapBatch)
    assert result.maps.shape == (2, 48, 48) and result.maps.dtype == np.float32
    assert not result.degenerate.any()
    assert np.nanmin(result.maps) == 0.0 and np.nanmax(result.maps) == 1.0
    with torch.no_grad():
        assert result.targets.tolist() == compact2d(images2d).argmax(1).tolist()
    if method == "guided_gradcam" and preset == "paper":
        assert result.raw is None
    else:
        assert result.raw is not None and result.raw.shape[0] == 2 and result.raw.shape[2:] == (48, 48)


def test_every_3d_method() -> None:
    model = _compact(3)
    volumes = torch.randn(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(2))
    for method in METHODS:
        if not supports_3d(method):
            with pytest.raises(ValueError, match="2-D only"):
                explain(model, volumes, method)
            continue
        overrides = {"samples": 4} if method in ("smoothgrad", "smoothgrad_ig") else {}
        result = explain(model, volumes, method, settings=method_settings(method, **overrides), batch_size=64)
        assert result.maps.shape == (2, 16, 32, 32), method
        assert not result.degenerate.any(), method
        assert np.nanmin(result.maps) == 0.0 and np.nanmax(result.maps) == 1.0, method


# --------------------------------------------------------------------------------------------
# guided backprop is really guided, and the caller's model is untouched


@pytest.mark.parametrize(("architecture", "size"), [("compact", 48), ("resnet18", 32), ("densenet121", 64)])
def test_guided_backprop_is_guided_and_model_untouched(architecture: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_network(architecture, spatial_dims=2, in_channels=1, out_channels=2)  # train mode
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    types = [(name, type(module)) for name, module in model.named_modules()]
    images = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(3))

    gbp = explain(model, images, "guided_backprop", target=1)
    grad = explain(model, images, "gradient", target=1)
    reference = _reference_guided_backprop(model, images, 1)
    # captum's hooks give the true guided gradient (also through MONAI ResNet's reused `act` ReLU)
    torch.testing.assert_close(
        torch.from_numpy(gbp.raw), reference, rtol=1e-4, atol=1e-6 * reference.abs().max().item()
    )
    correlation = np.corrcoef(gbp.raw.ravel(), grad.raw.ravel())[0, 1]
    assert correlation < 0.9, correlation
    assert np.abs(gbp.maps - grad.maps).max() > 0.5

    # the caller's model: same weights and buffers, same modules, still in-place, still in train mode
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [(name, type(module)) for name, module in model.named_modules()] == types
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and all(m.inplace for m in relus)


# --------------------------------------------------------------------------------------------
# Integrated Gradients


def test_paper_ig_is_the_equal_weight_riemann_sum() -> None:
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    model = _Poly((1, 6, 6), power=3)
    result = explain(model, x, "integrated_gradients", target=0)
    w = model.w.detach().double().numpy()
    xs = x.double().numpy()
    baseline = xs.reshape(2, -1).min(1).reshape(2, 1, 1, 1)
    delta = xs - baseline
    alphas = np.linspace(0.0, 1.0, 10)
    grads = [3 * w * (baseline + a * delta) ** 2 for a in alphas]
    expected = delta * np.mean(grads, axis=0)  # equal weights 1/10, both ends included
    np.testing.assert_allclose(result.raw, expected, rtol=1e-4, atol=1e-5)
    # captum's trapezoid rule (half-weight ends) gives another answer, so the test can tell them apart
    trapezoid = delta * (np.sum(grads[1:-1], axis=0) + 0.5 * (grads[0] + grads[-1])) / 9
    assert not np.allclose(result.raw, trapezoid, rtol=1e-3, atol=1e-4)
    # other baselines
    zero = explain(
        model, x, "integrated_gradients", target=0, settings=method_settings("integrated_gradients", baseline="zero")
    )
    np.testing.assert_allclose(
        zero.raw, xs * np.mean([3 * w * (a * xs) ** 2 for a in alphas], axis=0), rtol=1e-4, atol=1e-5
    )


def test_ig_completeness_on_a_linear_model() -> None:
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(5))
    model = _Poly((2, 5, 5), power=1)
    result = explain(model, x, "integrated_gradients", target=0)
    with torch.no_grad():
        black = x.flatten(1).min(1).values.view(-1, 1, 1, 1).expand_as(x)
        expected = model(x)[:, 0] - model(black)[:, 0]
    np.testing.assert_allclose(result.raw.reshape(3, -1).sum(1), expected.numpy(), rtol=1e-4)
    assert result.raw.shape == (3, 2, 5, 5) and result.maps.shape == (3, 5, 5)


def test_batched_ig_matches_captum(compact2d: torch.nn.Module, images2d: torch.Tensor) -> None:
    # the batched path code with captum's Gauss-Legendre rule == captum's IntegratedGradients
    batched = method_settings("integrated_gradients", integration="gausslegendre", baseline="zero", steps=16)
    ours = explain(compact2d, images2d, "integrated_gradients", settings=batched, batch_size=7)
    reference = method_settings("integrated_gradients", "captum", steps=16)
    captum = explain(compact2d, images2d, "integrated_gradients", settings=reference, batch_size=64)
    scale = np.abs(captum.raw).max()
    np.testing.assert_allclose(ours.raw, captum.raw, rtol=1e-3, atol=1e-5 * scale)


# --------------------------------------------------------------------------------------------
# SmoothGrad noise and batching


def test_smoothgrad_noise_is_seeded_and_relative_to_each_image() -> None:
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(6))
    x[1] = x[1] * 10 - 5  # range 10 instead of 1
    model = _Poly((1, 32, 32), power=2)
    first = explain(model, x, "smoothgrad", target=0, seed=1)
    again = explain(model, x, "smoothgrad", target=0, seed=1)
    other = explain(model, x, "smoothgrad", target=0, seed=2)
    np.testing.assert_array_equal(first.raw, again.raw)
    assert not np.allclose(first.raw, other.raw)
    # d/dx sum(w x^2) = 2 w x, so the mean of squared gradients estimates 4 w^2 (x^2 + sigma^2)
    w = model.w.detach().numpy()
    xs = x.numpy()
    sigma2 = (first.raw / (4 * w**2) - xs**2).reshape(2, -1).mean(1)
    ranges = xs.reshape(2, -1).max(1) - xs.reshape(2, -1).min(1)
    np.testing.assert_allclose(sigma2, (0.15 * ranges) ** 2, rtol=0.1)


@pytest.mark.parametrize(
    ("method", "preset"),
    [
        ("gradient", "paper"),
        ("smoothgrad", "paper"),
        ("integrated_gradients", "paper"),
        ("smoothgrad_ig", "paper"),
        ("guided_backprop", "paper"),
        ("smoothgrad", "captum"),
        ("smoothgrad_ig", "captum"),
    ],
)
def test_batch_size_does_not_change_the_maps(method: str, preset: str, compact2d: torch.nn.Module) -> None:
    images = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    overrides = {"samples": 3, "steps": 4} if method == "smoothgrad_ig" else {}
    settings = method_settings(method, preset, **overrides)
    one = explain(compact2d, images, method, settings=settings, batch_size=1)
    many = explain(compact2d, images, method, settings=settings, batch_size=64)
    np.testing.assert_allclose(one.raw, many.raw, rtol=1e-4, atol=1e-6 * np.abs(many.raw).max())
    np.testing.assert_allclose(one.maps, many.maps, atol=1e-4)
    # an image's map does not depend on the other images of the batch
    alone = explain(compact2d, images[2:], method, settings=settings, batch_size=64)
    np.testing.assert_allclose(alone.raw[0], many.raw[2], rtol=1e-4, atol=1e-6 * np.abs(many.raw).max())
    if method in ("smoothgrad", "smoothgrad_ig"):
        reseeded = explain(compact2d, images, method, settings=settings, batch_size=64, seed=5)
        assert not np.allclose(reseeded.raw, many.raw)


# --------------------------------------------------------------------------------------------
# Grad-CAM and Guided Grad-CAM


def test_gradcam_without_positive_evidence_is_degenerate(images2d: torch.Tensor) -> None:
    model = _compact(2)
    with torch.no_grad():
        model.class_layers.out.weight[0] = -model.class_layers.out.weight[0].abs()
    cam = explain(model, images2d, "gradcam", target=0)
    assert cam.degenerate.all() and np.isnan(cam.maps).all()
    assert explain(model, images2d, "guided_gradcam", target=0).degenerate.all()
    # captum's defaults (no ReLU) keep the negative map, which |.| then turns into a valid map
    assert not explain(
        model, images2d, "gradcam", target=0, settings=method_settings("gradcam", "captum")
    ).degenerate.any()
    positive = explain(model, images2d, "gradcam", target=1)
    assert not positive.degenerate.any() and positive.targets.tolist() == [1, 1]


def test_paper_guided_gradcam_is_the_product_of_postprocessed_maps(
    compact2d: torch.nn.Module, images2d: torch.Tensor
) -> None:
    ggcam = explain(compact2d, images2d, "guided_gradcam")
    gbp = explain(compact2d, images2d, "guided_backprop")
    cam = explain(compact2d, images2d, "gradcam")
    product = gbp.maps * cam.maps
    low = product.reshape(2, -1).min(1).reshape(2, 1, 1)
    high = product.reshape(2, -1).max(1).reshape(2, 1, 1)
    np.testing.assert_allclose(ggcam.maps, (product - low) / (high - low), rtol=1e-5, atol=1e-6)
    unscaled = explain(compact2d, images2d, "guided_gradcam", settings=method_settings("guided_gradcam", minmax=False))
    np.testing.assert_allclose(unscaled.maps, product, rtol=1e-5, atol=1e-7)


def test_gradcam_upsampling_and_layers(compact2d: torch.nn.Module, images2d: torch.Tensor) -> None:
    cam = explain(compact2d, images2d, "gradcam")
    # bilinear upsampling of a divide-by-max CAM: values in [0, 1] with a smooth (many-valued) map
    assert np.nanmax(cam.raw) <= 1.0 + 1e-6 and np.unique(cam.raw[0]).size > 50
    nearest = explain(compact2d, images2d, "gradcam", settings=method_settings("gradcam", interpolation="nearest"))
    assert np.unique(nearest.raw[0]).size <= 9  # a 3x3 feature map
    assert default_layer(compact2d) == "class_layers.relu"
    assert default_layer(build_network("resnet18", out_channels=2)) == "layer4"
    # a generic model: the input of the last global pooling == the output of the ReLU before it
    generic = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 2),
    )
    with pytest.raises(ValueError, match="no default"):
        default_layer(generic)
    auto = explain(generic, images2d[:1], "gradcam", target=0)
    named = explain(generic, images2d[:1], "gradcam", target=0, layer="3")
    np.testing.assert_allclose(auto.raw, named.raw, equal_nan=True)
    with pytest.raises(ValueError, match="no layer named"):
        explain(generic, images2d[:1], "gradcam", layer="nope")


# --------------------------------------------------------------------------------------------
# targets and errors


def test_targets_and_errors(compact2d: torch.nn.Module, images2d: torch.Tensor) -> None:
    given = explain(compact2d, images2d, "gradient", target=[1, 0])
    assert given.targets.tolist() == [1, 0] and given.targets.dtype == np.int64
    assert explain(compact2d, images2d, "gradient", target=1).targets.tolist() == [1, 1]
    flipped = explain(compact2d, images2d, "gradient", target=torch.tensor([0, 1]))
    assert not np.allclose(given.raw, flipped.raw)
    with pytest.raises(ValueError, match="target classes"):
        explain(compact2d, images2d, "gradient", target=2)
    with pytest.raises(ValueError, match="entries"):
        explain(compact2d, images2d, "gradient", target=[0, 1, 1])
    with pytest.raises(ValueError, match="settings are for"):
        explain(compact2d, images2d, "gradient", settings=method_settings("smoothgrad"))
    with pytest.raises(ValueError, match="images must be"):
        explain(compact2d, images2d[0], "gradient")
    # numpy input works too, and the raw map is post-processed by the method's chain
    result = explain(compact2d, images2d.numpy(), "gradient")
    np.testing.assert_allclose(result.maps, postprocess(result.raw, method_settings("gradient").postprocess)[0])
