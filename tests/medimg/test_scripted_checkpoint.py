"""A TorchScript network inside a medimg checkpoint (architecture ``"torchscript"``), and the
batch-norm helpers of :mod:`continual.bn` on TorchScript BN layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_files import write_torchscript

from continual.bn import bn_modules, freeze_bn_stats, is_batch_norm, recompute_bn_stats, snapshot_bn_stats
from medimg.model_sources import load_model
from medimg.model_sources.export import ExportError, export_model
from medimg.models import CheckpointError, copy_model, load_checkpoint, monai_network_def, save_checkpoint

SIZE = (32, 32)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_torchscript(tmp_path_factory.mktemp("scripted") / "density.ts", "density", image_size=SIZE)


def _trained(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` after a few train-mode forwards (BN statistics move) and a weight change."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 1, *SIZE))
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model.eval()


def test_a_torchscript_network_round_trips_through_a_checkpoint(scripted: Path, tmp_path: Path) -> None:
    model, meta = load_model(scripted, pipeline="density")
    _trained(model)
    path = save_checkpoint(tmp_path / "adapted.pt", model, meta)
    again, again_meta = load_checkpoint(path, pipeline="density")
    assert (
        again_meta["architecture"] == "torchscript" and again_meta["network"]["adapter"] == meta["network"]["adapter"]
    )
    assert isinstance(again.network, torch.jit.ScriptModule)
    x = torch.rand(3, 1, *SIZE)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    # The trained weights come from the state dict: they differ from the .ts file's own.
    original, _ = load_model(scripted, pipeline="density")
    with torch.no_grad():
        assert not torch.allclose(again(x), original(x))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_torchscript_checkpoint_without_or_with_a_broken_program_is_refused(scripted: Path, tmp_path: Path) -> None:
    model, meta = load_model(scripted, pipeline="density")
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    payload = torch.load(path, weights_only=True)
    del payload["torchscript_program"]
    torch.save(payload, tmp_path / "no_program.pt")
    with pytest.raises(CheckpointError, match=r"no_program\.pt: cannot build its network.*needs its program"):
        load_checkpoint(tmp_path / "no_program.pt")
    payload = torch.load(path, weights_only=True)
    payload["torchscript_program"] = payload["torchscript_program"][:1000].clone()
    torch.save(payload, tmp_path / "truncated.pt")
    with pytest.raises(CheckpointError, match=r"truncated\.pt.*program could not be read"):
        load_checkpoint(tmp_path / "truncated.pt")
    with pytest.raises(ValueError, match="needs a TorchScript network"):
        save_checkpoint(tmp_path / "plain.pt", torch.nn.Linear(2, 2), meta)


def test_a_torchscript_checkpoint_exports_as_torchscript_but_not_as_a_bundle(scripted: Path, tmp_path: Path) -> None:
    model, meta = load_model(scripted, pipeline="density")
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    assert monai_network_def("torchscript", meta["network"]) is None
    with pytest.raises(ExportError, match="not one MONAI network class"):
        export_model(path, tmp_path / "bundle", fmt="bundle")
    result = export_model(path, tmp_path / "exported", fmt="torchscript")
    again, _ = load_model(result.path / "model.ts", pipeline="density")
    x = torch.rand(2, 1, *SIZE)
    with torch.no_grad():
        assert torch.allclose(torch.softmax(again(x), 1), torch.softmax(model(x), 1), atol=1e-5)


def test_copy_model_gives_a_scripted_network_its_own_leaf_parameters(scripted: Path) -> None:
    model, _ = load_model(scripted, pipeline="density")
    copy = copy_model(model)
    assert all(p.is_leaf and p.requires_grad for p in copy.parameters())
    copy(torch.rand(2, 1, *SIZE)).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    assert not torch.equal(next(copy.parameters()), next(model.parameters()))


# --- continual.bn on TorchScript BN layers ---------------------------------------------------------


def test_scripted_bn_layers_are_found_and_update_in_train_mode(scripted: Path) -> None:
    model, _ = load_model(scripted, pipeline="density")
    layers = bn_modules(model)
    assert layers and all(isinstance(m, torch.jit.ScriptModule) for m in layers.values())
    assert "network.features.norm0" in layers
    assert not is_batch_norm(model.network.features.conv0) and not is_batch_norm(torch.nn.InstanceNorm2d(3))
    before = snapshot_bn_stats(model)
    assert len(before) == 3 * len(layers)  # running_mean, running_var, num_batches_tracked each
    model.eval()
    with torch.no_grad():
        model(torch.rand(4, 1, *SIZE))
    assert all(torch.equal(before[k], v) for k, v in snapshot_bn_stats(model).items())
    _trained(model)
    after = snapshot_bn_stats(model)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))


def test_freeze_bn_stats_holds_scripted_bn_layers_through_train(scripted: Path) -> None:
    model, _ = load_model(scripted, pipeline="density")
    before = snapshot_bn_stats(model)
    with freeze_bn_stats(model) as handle:
        model.train()
        assert all(not m.training for m in handle.modules.values())
        assert model.network.training  # the other layers follow train()
        with torch.no_grad():
            model(torch.rand(4, 1, *SIZE))
    assert all(torch.equal(before[k], v) for k, v in snapshot_bn_stats(model).items())
    assert all(m.training for m in handle.modules.values())  # unfrozen: the model's mode again


def test_recompute_bn_stats_of_scripted_layers_equals_the_python_network(scripted: Path) -> None:
    from monai.networks.nets import DenseNet

    model, _ = load_model(scripted, pipeline="density")
    network = model.network
    eager = DenseNet(
        spatial_dims=2, in_channels=1, out_channels=4, init_features=8, growth_rate=4, block_config=(2, 2), bn_size=2
    )  # fmt: skip
    eager.load_state_dict(network.state_dict())
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(n, 1, *SIZE, generator=generator) for n in (3, 2)]
    before = snapshot_bn_stats(network)
    assert recompute_bn_stats(network, batches) == recompute_bn_stats(eager, batches) == 5
    mine, reference = snapshot_bn_stats(network), snapshot_bn_stats(eager)
    assert mine.keys() == reference.keys() == before.keys()
    for key, value in reference.items():
        assert torch.allclose(mine[key].double(), value.double(), rtol=1e-5, atol=1e-6), key
        if key.endswith("running_mean"):
            assert not torch.allclose(mine[key], before[key])
    assert int(mine["features.norm0.num_batches_tracked"]) == 2
