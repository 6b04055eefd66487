"""Cascading randomization: block lists per family, re-initialization, determinism, Adebayo's known answer."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from medimg.models import build_network
from saliency.randomization import (
    INIT_SCHEMES,
    NORM_RUNNING_STATS,
    cascading_randomization,
    init_scheme,
    named_blocks,
    prefix_blocks,
    randomization_settings,
    reinitialize,
    stage_generator,
)

# (architecture, spatial dims, tiny input shape) of the families exercised end to end.
FAMILIES = {
    "compact": (2, (1, 1, 32, 32)),
    "resnet18": (2, (1, 1, 16, 16)),
    "segresnet-compact": (3, (1, 1, 16, 16, 16)),
}
EXPECTED_LABELS = {
    "compact": ["logits", "denseblock3", "denseblock2", "denseblock1", "stem"],
    "densenet121": ["logits", "denseblock4", "denseblock3", "denseblock2", "denseblock1", "stem"],
    "resnet18": ["logits", "layer4", "layer3", "layer2", "layer1", "stem"],
    "segresnet-compact": ["head", "down_layers.2", "down_layers.1", "down_layers.0", "stem"],
}


def _build(architecture: str, spatial_dims: int = 2) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_network(architecture, spatial_dims=spatial_dims, in_channels=1, out_channels=2)


def _trained_like(model: nn.Module, seed: int = 1) -> nn.Module:
    """Perturb every parameter and set non-default norm statistics, as training would (in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=generator))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=generator) + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(17)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, nn.Module, tuple[int, ...]]:
    architecture = request.param
    spatial_dims, shape = FAMILIES[architecture]
    return architecture, _trained_like(_build(architecture, spatial_dims)), shape


def _stage_of(name: str, blocks: list[tuple[str, list[str]]]) -> int | None:
    """1-based stage whose modules own parameter/buffer ``name``, or None."""
    for index, (_, modules) in enumerate(blocks, start=1):
        if any(name.startswith(m + ".") for m in modules):
            return index
    return None


def _states(model: nn.Module, **kwargs) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    for label, state in cascading_randomization(model, **kwargs):
        yield label, {k: v.clone() for k, v in state.state_dict().items()}


def _digest(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------- block lists


@pytest.mark.parametrize("architecture", ["compact", "densenet121", "resnet18", "segresnet-compact"])
def test_block_lists_are_top_down_and_cover_every_parameter(architecture: str) -> None:
    spatial_dims = 3 if architecture.startswith("segresnet") else 2
    model = _build(architecture, spatial_dims)
    blocks = named_blocks(model)
    assert [label for label, _ in blocks] == EXPECTED_LABELS[architecture]
    modules = dict(model.named_modules())
    assert all(name in modules for _, names in blocks for name in names)
    # Every parameter belongs to exactly one stage.
    for name, _ in model.named_parameters():
        owners = [i for i, (_, ms) in enumerate(blocks) if any(name.startswith(m + ".") for m in ms)]
        assert len(owners) == 1, name
    # Without the stem: the same list minus the last stage, whose parameters are then uncovered.
    no_stem = named_blocks(model, include_stem=False)
    assert no_stem == blocks[:-1]


def test_densenet_block_membership() -> None:
    blocks = dict(named_blocks(_build("densenet121")))
    assert blocks["logits"] == ["class_layers.out"]
    assert blocks["denseblock4"] == ["features.denseblock4", "features.norm5"]
    assert blocks["denseblock3"] == ["features.denseblock3", "features.transition3"]
    assert blocks["denseblock1"] == ["features.denseblock1", "features.transition1"]
    assert blocks["stem"] == ["features.conv0", "features.norm0"]
    resnet = dict(named_blocks(_build("resnet18")))
    assert resnet["logits"] == ["fc"] and resnet["layer4"] == ["layer4"] and resnet["stem"] == ["conv1", "bn1"]
    segresnet = dict(named_blocks(_build("segresnet-compact", 3)))
    assert segresnet["head"] == ["conv_final", "up_layers", "up_samples"] and segresnet["stem"] == ["convInit"]


def test_generic_fallback_and_data_parallel() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    assert named_blocks(model) == [("4", ["4"]), ("2", ["2"]), ("0", ["0"])]
    assert named_blocks(model, include_stem=False) == [("4", ["4"]), ("2", ["2"])]
    wrapped = named_blocks(nn.DataParallel(_build("compact")))
    assert wrapped[0] == ("logits", ["module.class_layers.out"])
    assert wrapped[-1] == ("stem", ["module.features.conv0", "module.features.norm0"])


def test_invalid_blocks_are_rejected() -> None:
    model = _build("compact")
    with pytest.raises(ValueError, match="no module named"):
        next(cascading_randomization(model, [("x", ["features.nope"])]))
    with pytest.raises(ValueError, match="unique"):
        next(cascading_randomization(model, [("a", ["features.conv0"]), ("a", ["features.norm0"])]))
    with pytest.raises(ValueError, match="unique"):
        next(cascading_randomization(model, [("original", ["features.conv0"])]))
    with pytest.raises(ValueError, match="no blocks"):
        next(cascading_randomization(model, []))


# ------------------------------------------------------------------------------------ cascading states


def test_cascade_reinitializes_exactly_the_cumulative_set(family) -> None:
    architecture, model, shape = family
    blocks = named_blocks(model)
    before = _digest(model)
    original = dict(model.state_dict())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    labels = []
    for k, (label, state) in enumerate(cascading_randomization(model, seed=3)):
        labels.append(label)
        assert not state.training and state is not model
        sd = state.state_dict()
        for name, tensor in sd.items():
            stage = _stage_of(name, blocks)
            reinitialized = stage is not None and stage <= k
            is_buffer = name.endswith(("running_mean", "running_var", "num_batches_tracked"))
            if is_buffer or not reinitialized:  # norm statistics are kept; untouched blocks stay as trained
                assert torch.equal(tensor, original[name]), (label, name)
            else:
                assert not torch.equal(tensor, original[name]), (label, name)
                module = dict(state.named_modules())[name.rsplit(".", 1)[0]]
                if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
                    assert torch.all(tensor == (1.0 if name.endswith("weight") else 0.0)), name
                if isinstance(module, nn.Linear) and name.endswith("bias"):
                    assert torch.all(tensor == 0), name  # MONAI's classifier init: Linear bias 0
        with torch.no_grad():
            out = state(x)
        assert torch.isfinite(out).all()
    assert labels == ["original", *EXPECTED_LABELS[architecture]]
    # The input model is untouched (weights, statistics and mode).
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_last_state_changes_every_conv_and_linear_weight(family) -> None:
    _, model, _ = family
    *_, (label, last) = cascading_randomization(model, seed=0)
    assert label == "stem"
    trained = dict(model.named_modules())
    layers = [(n, m) for n, m in last.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]
    assert layers
    for name, module in layers:
        assert not torch.equal(module.weight, trained[name].weight), name


def test_same_seed_same_states_other_seed_differs() -> None:
    model = _trained_like(_build("compact"))
    blocks = named_blocks(model)
    first = list(_states(model, seed=5))
    again = list(_states(model, seed=5))
    other = list(_states(model, seed=6))
    for (label, a), (_, b), (_, c) in zip(first, again, other, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a), label
        if label != "original":
            conv = [k for k in a if k.endswith("weight") and a[k].ndim > 1 and _stage_of(k, blocks) is not None]
            changed = [k for k in conv if _stage_of(k, blocks) <= [lbl for lbl, _ in first].index(label)]
            assert changed and all(not torch.equal(a[k], c[k]) for k in changed), label
    # A block keeps the weights drawn at its own stage in every later state.
    for j in range(1, len(first)):
        for k in range(j, len(first)):
            for name, tensor in first[j][1].items():
                if _stage_of(name, blocks) == j:
                    assert torch.equal(tensor, first[k][1][name])
    # State k does not depend on how many stages follow it.
    _, short_last = list(_states(model, blocks=blocks[:2], seed=5))[-1]
    assert all(torch.equal(short_last[k], first[2][1][k]) for k in short_last)


def test_randomization_blocks_hook_is_honoured() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = build_network("compact", spatial_dims=2, in_channels=1, out_channels=2)
            self.gate = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone(x * torch.sigmoid(self.gate(x)))

        def randomization_blocks(self) -> list[tuple[str, list[str]]]:
            return [("gate", ["gate"]), *prefix_blocks(named_blocks(self.backbone), "backbone")]

    class WithStemArg(Gated):
        def randomization_blocks(self, include_stem: bool = True) -> list[tuple[str, list[str]]]:
            return [("gate", ["gate"]), ("everything", ["backbone"])] if include_stem else [("gate", ["gate"])]

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _trained_like(Gated())
    blocks = named_blocks(model)
    assert blocks[0] == ("gate", ["gate"])
    assert blocks[1] == ("logits", ["backbone.class_layers.out"])
    assert blocks[-1] == ("stem", ["backbone.features.conv0", "backbone.features.norm0"])
    assert named_blocks(model, include_stem=False) == blocks[:-1]  # hook without the argument: stem dropped
    assert named_blocks(WithStemArg(), include_stem=False) == [("gate", ["gate"])]
    states = dict(cascading_randomization(model, seed=0))
    assert list(states) == ["original", *(label for label, _ in blocks)]
    gate_only = states["gate"]
    assert not torch.equal(gate_only.gate.weight, model.gate.weight)
    assert all(
        torch.equal(a, b) for a, b in zip(gate_only.backbone.parameters(), model.backbone.parameters(), strict=True)
    )
    # The backbone keeps MONAI's DenseNet init (nearest known-family ancestor), the gate PyTorch's defaults.
    settings = randomization_settings(model, seed=0)
    assert set(settings["init_schemes"]) == {"monai-densenet", "pytorch-default"}
    conv = states["stem"].backbone.features.conv0.weight
    assert conv.abs().max() > 1 / math.sqrt(conv[0].numel())  # normal draws exceed the uniform default's bound


# ------------------------------------------------------------------------------------ re-initialization


def _z_scores(layers: list[nn.Module], std_of) -> torch.Tensor:
    return torch.cat([(m.weight.detach() / std_of(m)).flatten() for m in layers])


def _fans(module: nn.Module) -> tuple[int, int]:
    return nn.init._calculate_fan_in_and_fan_out(module.weight)


def test_densenet121_conv_weights_are_kaiming_normal() -> None:
    model = _trained_like(_build("densenet121"))
    assert init_scheme(model) == "monai-densenet"
    block = model.features.denseblock4
    reinitialize(block, torch.Generator().manual_seed(0), scheme=init_scheme(model))
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    z = _z_scores(convs, lambda m: math.sqrt(2.0 / _fans(m)[0]))  # kaiming_normal_: fan_in, gain sqrt(2)
    assert abs(float(z.std()) - 1.0) < 0.02 and abs(float(z.mean())) < 0.02
    assert abs(float((z.abs() > 2).float().mean()) - 0.0455) < 0.005  # Gaussian tails, not uniform
    for m in convs:  # each layer on its own
        assert abs(float(m.weight.detach().std()) / math.sqrt(2.0 / _fans(m)[0]) - 1.0) < 0.1
    # Same distribution as the constructor's own draw, layer by layer.
    fresh = dict(_build("densenet121").features.denseblock4.named_modules())
    for name, m in block.named_modules():
        if isinstance(m, nn.Conv2d):
            assert abs(float(m.weight.detach().std() / fresh[name].weight.detach().std()) - 1.0) < 0.1, name
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    assert all(torch.all(m.num_batches_tracked == 17) for m in norms)  # statistics kept
    head = model.class_layers.out
    reinitialize(head, torch.Generator().manual_seed(0), scheme="monai-densenet")
    bound = 1 / math.sqrt(head.in_features)  # PyTorch's Linear default weight, MONAI's zero bias
    assert torch.all(head.bias == 0) and head.weight.abs().max() <= bound


def test_resnet_and_segresnet_inits() -> None:
    resnet = _trained_like(_build("resnet18"))
    assert init_scheme(resnet) == "monai-resnet"
    reinitialize(resnet.layer4, torch.Generator().manual_seed(0), scheme="monai-resnet")
    convs = [m for m in resnet.layer4.modules() if isinstance(m, nn.Conv2d)]
    z = _z_scores(convs, lambda m: math.sqrt(2.0 / _fans(m)[1]))  # fan_out, relu
    assert abs(float(z.std()) - 1.0) < 0.01 and abs(float((z.abs() > 2).float().mean()) - 0.0455) < 0.003
    segresnet = _trained_like(_build("segresnet-compact", 3))
    assert init_scheme(segresnet) == "pytorch-default"
    reinitialize(segresnet.down_layers[2], torch.Generator().manual_seed(0))
    convs = [m for m in segresnet.down_layers[2].modules() if isinstance(m, nn.Conv3d)]
    # kaiming_uniform_(a=sqrt 5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std bound / sqrt(3)
    z = _z_scores(convs, lambda m: 1 / math.sqrt(_fans(m)[0]))
    assert float(z.abs().max()) <= 1.0 and abs(float(z.std()) * math.sqrt(3) - 1.0) < 0.02
    norms = [m for m in segresnet.down_layers[2].modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


def test_reinitialize_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 4), nn.PReLU(), nn.BatchNorm1d(4))
    rng_before = torch.get_rng_state()
    a, b, c = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    reinitialize(a, torch.Generator().manual_seed(1))
    reinitialize(b, torch.Generator().manual_seed(1))
    reinitialize(c, torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a[0].weight, c[0].weight) and not torch.equal(a[1].weight, c[1].weight)
    assert not torch.equal(a[0].weight, model[0].weight)  # Embedding through its reset_parameters()
    assert stage_generator(0, 1).initial_seed() == stage_generator(0, 1).initial_seed()
    assert stage_generator(0, 1).initial_seed() != stage_generator(0, 2).initial_seed()
    assert stage_generator(0, 1).initial_seed() != stage_generator(1, 1).initial_seed()


def test_reinitialize_rejects_what_it_cannot_redraw() -> None:
    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with pytest.raises(TypeError, match="reset_parameters"):
        reinitialize(nn.Sequential(Raw()), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="unknown init scheme"):
        reinitialize(nn.Linear(2, 2), torch.Generator(), scheme="xavier")


def test_randomization_settings_for_the_report() -> None:
    model = _build("compact")
    settings = randomization_settings(model, seed=4, include_stem=False)
    assert settings["granularity"] == "named blocks"
    assert settings["norm_running_stats"] == NORM_RUNNING_STATS == "kept"
    assert settings["seed"] == 4 and settings["include_stem"] is False and settings["stem_randomized"] is False
    assert [b["label"] for b in settings["blocks"]] == EXPECTED_LABELS["compact"][:-1]
    assert settings["n_states"] == 5
    assert settings["init_schemes"] == {"monai-densenet": INIT_SCHEMES["monai-densenet"]}


# ------------------------------------------------------------------------- Adebayo et al.: known answer


def _gradient_and_guided_backprop(model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Post-processed (abs, channel sum, p99 clip, min-max) maps for the predicted class of ``model``."""
    from saliency.methods import explain

    return explain(model, images, "gradient").maps, explain(model, images, "guided_backprop").maps


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_adebayo_logits_randomization_hits_gradient_not_guided_backprop() -> None:
    """Randomizing the logits layer changes Gradient maps strongly; Guided Backprop stays almost
    unchanged until lower blocks are randomized (Adebayo et al. 2018, Fig. 2 and README erratum)."""
    from skimage.metrics import structural_similarity
    from toy_classification import bright_square_dataset

    def tensors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = list(bright_square_dataset(n, seed=seed))
        images = torch.stack([torch.as_tensor(np.asarray(item["image"])) for item in items])
        return images, torch.tensor([item["label"] for item in items])

    images, labels = tensors(96, seed=3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_network("compact", spatial_dims=2, in_channels=1, out_channels=2)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        batches = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(60):
            index = torch.randint(0, len(images), (16,), generator=batches)
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test_images, test_labels = tensors(16, seed=11)
    with torch.no_grad():
        accuracy = float((model(test_images).argmax(1) == test_labels).float().mean())
    assert accuracy >= 0.9  # the model learnt the square, so its maps have something to lose
    probe = test_images[test_labels == 1][:6]

    ssim: dict[str, tuple[float, float]] = {}
    reference: tuple[np.ndarray, np.ndarray] | None = None
    for label, state in cascading_randomization(model, seed=0):
        maps = _gradient_and_guided_backprop(state, probe)
        if reference is None:
            reference = maps
            continue
        ssim[label] = tuple(  # type: ignore[assignment]
            float(np.mean([structural_similarity(a, b, data_range=1.0) for a, b in zip(ref, new, strict=True)]))
            for ref, new in zip(reference, maps, strict=True)
        )
    gradient_logits, guided_logits = ssim["logits"]
    _, guided_stem = ssim["stem"]
    assert gradient_logits < 0.6  # measured 0.25 (seeds 0-3 of the prototype: 0.25-0.35)
    assert guided_logits > 0.9  # measured 0.99
    assert guided_logits - gradient_logits > 0.3
    assert guided_stem < 0.6 and guided_logits - guided_stem > 0.3  # measured 0.18: lower blocks do distort it
