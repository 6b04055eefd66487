"""InceptionV3 against torchvision's, the reference implementation that cannot be installed here.

torchvision's wheels do not load beside the CPU build of torch 2.13.0, so the reference values
below were computed once with torchvision 0.28.0's ``Inception3(num_classes=2, aux_logits=False,
transform_input=False)`` (first convolution replaced by a 1-channel one) with every float tensor
of its state dict filled by :func:`_fill`, in float64, on the input of :func:`_input`. Our network
fills the same way (same registration order and shapes), so equal logits mean the same layers,
branch order, padding, pooling and concatenation. A swapped branch, a missing padding or a pool
counting its padding differently changes these numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medimg.inception import InceptionV3
from medimg.models import build_network, gradcam_layer
from saliency.randomization import named_blocks

#: torchvision 0.28.0 on the deterministic weights and input below (float64).
REFERENCE_LOGITS = [[-3.335178872100666, -2.0501964501808256], [-0.6087460407308468, -0.3202657653742932]]
#: torchvision's Inception3(aux_logits=False) parameter counts.
TORCHVISION_PARAMS_3CH_1000 = 23_834_568
TORCHVISION_PARAMS_1CH_2 = 21_789_090


def _fill(model: torch.nn.Module) -> torch.nn.Module:
    """Deterministic values for every float tensor, by its position in the state dict."""
    with torch.no_grad():
        for k, (name, tensor) in enumerate(model.state_dict().items()):
            if tensor.dtype not in (torch.float32, torch.float64):
                continue
            base = torch.sin(torch.arange(tensor.numel(), dtype=torch.float64) * 0.7 + k)
            if name.endswith("running_var"):
                values = 1.0 + 0.2 * base.abs()
            elif name.endswith("running_mean") or name.endswith("bias"):
                values = 0.05 * base
            elif tensor.ndim == 1:
                values = 1.0 + 0.1 * base
            else:
                values = base * math.sqrt(3.0 / tensor[0].numel())
            tensor.copy_(values.reshape(tensor.shape))
    return model


def _input() -> torch.Tensor:
    return torch.cos(torch.arange(2 * 96 * 112, dtype=torch.float64).reshape(2, 1, 96, 112) * 0.013)


def test_outputs_equal_torchvision_on_deterministic_weights() -> None:
    model = _fill(InceptionV3(in_channels=1, out_channels=2).double().eval())
    with torch.no_grad():
        logits = model(_input())
    assert torch.allclose(logits, torch.tensor(REFERENCE_LOGITS, dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_parameter_counts_equal_torchvision() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(InceptionV3(in_channels=3, out_channels=1000)) == TORCHVISION_PARAMS_3CH_1000
    assert count(build_network("inception_v3", in_channels=1, out_channels=2)) == TORCHVISION_PARAMS_1CH_2


def test_block_shapes_follow_the_keras_names() -> None:
    model = InceptionV3(in_channels=1, out_channels=2).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    for index in range(11):
        name = f"mixed{index}"
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape)))
    with torch.no_grad():
        model(torch.zeros(1, 1, 299, 299))
    channels = [256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048]
    grids = [35] * 3 + [17] * 5 + [8] * 3
    assert [shapes[f"mixed{i}"] for i in range(11)] == [(1, c, g, g) for c, g in zip(channels, grids, strict=True)]
    assert gradcam_layer("inception_v3") == "mixed10"


def test_randomization_stops_above_mixed0_as_the_paper_unless_the_stem_is_asked_for() -> None:
    model = InceptionV3(in_channels=1, out_channels=2)
    labels = [label for label, _ in named_blocks(model, include_stem=False)]
    assert labels == ["logits", *[f"mixed{i}" for i in range(10, 0, -1)]]
    full = named_blocks(model, include_stem=True)
    assert full[-1] == ("stem", ["stem", "mixed0"])


def test_bad_settings_and_small_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D only"):
        InceptionV3(spatial_dims=3)
    with pytest.raises(ValueError, match="at least 75"):
        InceptionV3().eval()(torch.zeros(1, 1, 64, 64))


def test_relus_are_modules_so_guided_backprop_can_hook_them() -> None:
    model = InceptionV3()
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(relus) == len(convs) == 94 and not any(r.inplace for r in relus)


def test_guided_backprop_is_not_the_gradient_and_gradcam_uses_mixed10() -> None:
    """torchvision's InceptionV3 uses F.relu, which hook-based guided backprop cannot see: it silently
    becomes the plain gradient. Ours has ReLU modules, so the two maps differ."""
    from saliency.methods import explain

    torch.manual_seed(0)
    model = InceptionV3(in_channels=1, out_channels=2).eval()
    images = torch.rand(2, 1, 80, 80)
    gradient = explain(model, images, "gradient", batch_size=2)
    guided = explain(model, images, "guided_backprop", batch_size=2)
    assert not np.allclose(gradient.maps, guided.maps, atol=1e-3)
    cam = explain(model, images, "gradcam", layer=gradcam_layer("inception_v3"), batch_size=2)
    assert cam.maps.shape == (2, 80, 80) and np.isfinite(cam.maps[~cam.degenerate]).all()


def test_randomization_redraws_inception_layers_with_their_own_initializer() -> None:
    """A re-initialized InceptionV3 block must look like a freshly built one (truncated normal, sd 0.1),
    not like PyTorch's layer defaults (about 8x smaller for mixed10's 1x1 convolutions)."""
    from saliency.randomization import cascading_randomization, init_scheme

    torch.manual_seed(0)
    model = InceptionV3(in_channels=1, out_channels=2)
    assert init_scheme(model) == "inception-v3"
    states = dict(cascading_randomization(model, [("mixed10", ["mixed10"])], seed=3))
    fresh = states["mixed10"].mixed10.branch1x1.conv.weight.detach()
    trained = model.mixed10.branch1x1.conv.weight.detach()
    assert not torch.equal(fresh, trained)
    assert abs(float(fresh.std()) - 0.1) < 0.01 and float(fresh.abs().max()) <= 2.0  # cut at +-2 (absolute)
