"""Trainable attention gate (our design): shapes, gradients, losses, randomization, checkpoints, a toy."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from saliency_toy import lesion_data, train
from sklearn.metrics import average_precision_score

from medimg.models import build_network, load_checkpoint, save_checkpoint
from saliency.attention import (
    AttentionClassifier,
    attention_network,
    attention_regularizer,
    box_supervision_loss,
)
from saliency.randomization import cascading_randomization, named_blocks

SHAPES = {2: (2, 1, 32, 32), 3: (2, 1, 16, 32, 32)}
# Feature grids of the compact backbones: DenseNet /16, ResNet /32 (ceil).
GRIDS = {
    ("compact", 2): (2, 2),
    ("compact", 3): (1, 2, 2),
    ("resnet-compact", 2): (1, 1),
    ("resnet-compact", 3): (1, 1, 1),
}


def wrapped(architecture: str = "compact", spatial_dims: int = 2, heads: int = 1, activation: str = "sigmoid", **kw):
    torch.manual_seed(0)
    return attention_network(
        architecture,
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=3,
        heads=heads,
        activation=activation,
        **kw,
    )


def meta(model: AttentionClassifier) -> dict:
    return {
        "pipeline": "toy",
        "architecture": model.architecture,
        "network": model.network_kwargs(),
        "labels": ["a", "b", "c"],
        "preprocessing": {},
        "training": {},
    }


@pytest.mark.parametrize("architecture", ["compact", "resnet-compact"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("heads", [1, 2])
def test_shapes_of_logits_and_maps(architecture: str, spatial_dims: int, activation: str, heads: int) -> None:
    model = wrapped(architecture, spatial_dims, heads, activation).eval()
    x = torch.randn(SHAPES[spatial_dims])
    with torch.no_grad():
        logits = model(x)
        stored = model.last_attention
        logits2, maps = model.attention(x)
    grid = GRIDS[(architecture, spatial_dims)]
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert torch.allclose(logits, logits2)
    assert stored.shape == (2, heads, *grid)
    assert model.features(x).shape == (2, model.feature_channels, *grid)
    assert maps.shape == (2, 1, *x.shape[2:])
    assert float(stored.min()) >= 0.0 and float(stored.max()) <= 1.0
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    if activation == "softmax":
        torch.testing.assert_close(stored.flatten(2).sum(2), torch.ones(2, heads))
    # The gate starts near-uniform: global average pooling.
    uniform = 0.5 if activation == "sigmoid" else 1.0 / math.prod(grid)
    torch.testing.assert_close(stored, torch.full_like(stored, uniform), atol=0.02 * uniform, rtol=0)


def test_hidden_layer_and_softmax_maps_sum_to_one_on_a_larger_grid() -> None:
    model = wrapped(heads=2, activation="softmax", hidden=8).eval()
    with torch.no_grad():
        model(torch.randn(3, 1, 64, 64))
    assert model.last_attention.shape == (3, 2, 4, 4)
    torch.testing.assert_close(model.last_attention.sum(dim=(2, 3)), torch.ones(3, 2))
    assert model.gate.hidden is not None and model.gate.hidden.out_channels == 8


def test_densenet121_backbone_and_its_head_is_gone() -> None:
    model = wrapped("densenet121", heads=2).eval()
    with torch.no_grad():
        logits, maps = model.attention(torch.randn(1, 1, 64, 64))
    assert logits.shape == (1, 3) and maps.shape == (1, 1, 64, 64)
    assert model.last_attention.shape == (1, 2, 2, 2)
    assert model.feature_channels == 1024 and model.gradcam_layer == "backbone.class_layers.relu"
    keys = model.state_dict().keys()
    assert not any(k.startswith("backbone.class_layers") for k in keys)
    assert {"gate.score.weight", "gate.score.bias", "head.weight", "head.bias"} <= set(keys)
    resnet = wrapped("resnet-compact")
    assert not any(k.startswith("backbone.fc") for k in resnet.state_dict())
    assert resnet.gradcam_layer == "backbone.layer4" and resnet.feature_channels == 128


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="heads"):
        wrapped(heads=0)
    with pytest.raises(ValueError, match="activation"):
        wrapped(activation="relu")
    with pytest.raises(ValueError, match="segresnet"):
        attention_network("segresnet", spatial_dims=2, in_channels=1, out_channels=2)
    with pytest.raises(TypeError, match="DenseNet or ResNet"):
        AttentionClassifier(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), architecture="x", out_channels=2)
    with pytest.raises(ValueError, match="temperature"):
        build_network("compact", out_channels=2, wrapper={"name": "attention", "temperature": 2.0})


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("architecture", ["compact", "resnet-compact"])
def test_gradients_reach_gate_head_and_backbone(architecture: str) -> None:
    model = wrapped(architecture, heads=2, hidden=4)
    x = torch.randn(4, 1, 48, 48)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    for part in (model.gate.score, model.gate.hidden, model.head, model.backbone):
        assert _grad_norm(part) > 0
    model.zero_grad(set_to_none=True)
    model(x)
    masks = torch.zeros(4, 48, 48, dtype=torch.bool)
    masks[:, 10:30, 5:25] = True
    box_supervision_loss(model.last_attention, masks, torch.tensor([1.0, 1.0, 0.0, 1.0])).backward()
    assert _grad_norm(model.gate.score) > 0 and _grad_norm(model.backbone) > 0
    assert _grad_norm(model.head) == 0


def test_regularizers_known_answers() -> None:
    maps = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    assert float(attention_regularizer(maps, "sparsity")) == pytest.approx(0.75)
    # rows: |1-0|, |1-1| -> 0.5; columns: |1-0|, |1-1| -> 0.5
    assert float(attention_regularizer(maps, "tv")) == pytest.approx(1.0)
    assert float(attention_regularizer(maps, "none")) == 0.0
    assert float(attention_regularizer(torch.full((2, 3, 4, 5), 0.3), "tv")) == 0.0
    volume = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 1, 3)  # singleton axes contribute 0
    assert float(attention_regularizer(volume, "tv")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="entropy"):
        attention_regularizer(maps, "entropy")


def test_box_supervision_loss_known_answers() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True  # -> grid target [[1, 0], [0, 0]]
    half = torch.full((2, 1, 2, 2), 0.5, requires_grad=True)
    assert float(box_supervision_loss(half, masks, torch.ones(2)).detach()) == pytest.approx(math.log(2))
    exact = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]).expand(2, 2, 2, 2)  # two heads, mean = target
    assert float(box_supervision_loss(exact, masks)) == pytest.approx(0.0, abs=1e-6)
    mixed = torch.stack([exact[0], torch.full((2, 2, 2), 0.5)])
    assert float(box_supervision_loss(mixed, masks, torch.tensor([0.0, 1.0]))) == pytest.approx(math.log(2))
    assert float(box_supervision_loss(mixed, masks, torch.tensor([1.0, 0.0]))) == pytest.approx(0.0, abs=1e-6)
    # area downsampling: a cell half covered has target 0.5
    partial = torch.zeros(1, 4, 4)
    partial[0, 0, :2] = 1.0
    expected = (-math.log(0.5) * 4) / 4  # attention 0.5: BCE is ln 2 whatever the target
    assert float(box_supervision_loss(torch.full((1, 1, 2, 2), 0.5), partial)) == pytest.approx(expected)
    none = box_supervision_loss(half, masks, torch.zeros(2))
    assert float(none.detach()) == 0.0
    none.backward()  # still attached to the graph
    with pytest.raises(ValueError, match="masks"):
        box_supervision_loss(half, torch.zeros(2, 4, 4, 4))


def test_deepcopy_after_a_training_forward_and_blocks_include_the_gate() -> None:
    model = wrapped()
    model(torch.randn(2, 1, 32, 32))
    assert model.last_attention.requires_grad
    clone = copy.deepcopy(model)
    assert clone.last_attention is None
    labels = [label for label, _ in named_blocks(model)]
    assert labels == ["logits", "gate", "denseblock3", "denseblock2", "denseblock1", "stem"]
    assert dict(named_blocks(model))["gate"] == ["gate"]
    assert [label for label, _ in named_blocks(model, include_stem=False)][-1] == "denseblock1"
    resnet = [label for label, _ in named_blocks(wrapped("resnet-compact"))]
    assert resnet == ["logits", "gate", "layer4", "layer3", "layer2", "layer1", "stem"]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    from medimg.training import check_model_matches_meta

    model = wrapped("compact", heads=2, activation="softmax", hidden=4, dropout_prob=0.1).eval()
    info = meta(model)
    assert info["network"]["wrapper"] == {"name": "attention", "heads": 2, "activation": "softmax", "hidden": 4}
    assert info["network"]["dropout_prob"] == 0.1
    check_model_matches_meta(model, info)  # the training-time reference comparison (on the meta device)
    path = save_checkpoint(tmp_path / "attention.pt", model, info)
    loaded, loaded_meta = load_checkpoint(path, architecture="compact")
    assert isinstance(loaded, AttentionClassifier) and loaded_meta["architecture"] == "compact"
    assert (loaded.heads, loaded.activation, loaded.hidden) == (2, "softmax", 4)
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        expected, expected_maps = model.attention(x)
        got, got_maps = loaded.attention(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_maps, expected_maps)


def test_auxiliary_loss_is_passed_explicitly_to_the_training_loop(tmp_path: Path) -> None:
    """The gate's regularizer trains only when given as ``extra_loss``: the loop does not find it
    on the model. The sparsity term (mean attention, > 0) raises the training loss and changes the
    weights; without ``extra_loss`` the same configured model trains as if it had no regularizer."""
    from toy_classification import roc_auc_metric

    from medimg.training import TrainConfig, train_classifier

    images, labels, _ = lesion_data(16, 0, 48)
    data = [{"image": image, "label": int(label)} for image, label in zip(images, labels, strict=True)]

    def fit(name: str, weight: float, explicit: bool) -> tuple[AttentionClassifier, float]:
        torch.manual_seed(0)
        model = attention_network("compact", spatial_dims=2, in_channels=1, out_channels=2)
        model.configure_losses(regularizer="sparsity", regularizer_weight=weight)
        info = {**meta(model), "labels": ["no", "yes"]}
        result = train_classifier(
            model, data, data[:8], config=TrainConfig(epochs=1, batch_size=8, lr=1e-2), out_dir=tmp_path / name,
            metric_fn=roc_auc_metric, checkpoint_meta=info, quiet=True,
            extra_loss=model.auxiliary_loss if explicit else None,
        )  # fmt: skip
        return model, result.history[0]["train_loss"]

    plain, plain_loss = fit("plain", 0.0, explicit=False)
    ignored, ignored_loss = fit("ignored", 5.0, explicit=False)
    regularized, regularized_loss = fit("regularized", 5.0, explicit=True)
    assert ignored_loss == plain_loss
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), ignored.parameters(), strict=True))
    assert regularized_loss > plain_loss
    assert not all(torch.equal(p, q) for p, q in zip(plain.parameters(), regularized.parameters(), strict=True))


# ------------------------------------------------------------------------------------- planted-lesion toy


@pytest.fixture(scope="module")
def trained() -> tuple[AttentionClassifier, AttentionClassifier]:
    """(trained, untrained) compact sigmoid attention models on the 48x48 lesion toy (grid 3x3)."""
    torch.set_num_threads(1)
    images, labels, _ = lesion_data(64, 0, 48)
    torch.manual_seed(0)
    untrained = attention_network("compact", spatial_dims=2, in_channels=1, out_channels=2).eval()
    model = train(copy.deepcopy(untrained), images, labels, steps=60)
    return model, untrained


def _maps(model: AttentionClassifier, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits, maps = model.attention(images)
    return logits.numpy(), maps[:, 0].numpy()


def test_trained_attention_localizes_the_lesion(trained) -> None:
    model, untrained = trained
    images, labels, masks = lesion_data(32, 1, 48)
    logits, maps = _maps(model, images)
    assert (logits.argmax(1) == labels).mean() >= 0.9
    positives = labels == 1
    prevalence = masks[positives].mean()  # 144 / 2304 = 0.0625
    ap = average_precision_score(masks[positives].ravel(), maps[positives].ravel())
    _, before = _maps(untrained, images)
    ap_before = average_precision_score(masks[positives].ravel(), before[positives].ravel())
    assert ap > 3 * prevalence, (ap, prevalence)
    assert ap > ap_before, (ap, ap_before)


def test_attention_map_degrades_under_cascading_randomization(trained) -> None:
    model, _ = trained
    images, _, _ = lesion_data(8, 2, 48)
    _, original = _maps(model, images)
    states = dict(cascading_randomization(model, seed=0))
    assert list(states)[:3] == ["original", "logits", "gate"]
    np.testing.assert_allclose(_maps(states["original"], images)[1], original, atol=1e-6)
    # The map does not depend on the linear head ...
    np.testing.assert_allclose(_maps(states["logits"], images)[1], original, atol=1e-6)
    # ... the gate re-initialized (to its own near-uniform initializer) wipes it out.
    gate = _maps(states["gate"], images)[1]
    assert np.abs(gate - original).max() > 0.1
    assert gate.max() - gate.min() < 0.05 < original.max() - original.min()
    np.testing.assert_allclose(_maps(model, images)[1], original)  # the model itself is untouched


def test_gradcam_runs_on_the_wrapper_with_its_layer(trained) -> None:
    from saliency.methods import explain

    model, _ = trained
    images, _, _ = lesion_data(2, 3, 48)
    batch = explain(model, images, "gradcam", layer=model.gradcam_layer)
    assert batch.maps.shape == (2, 48, 48)
    assert np.isfinite(batch.maps).all()
