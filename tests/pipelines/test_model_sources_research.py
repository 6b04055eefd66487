"""Bring your own model to the research commands: ``saliency audit``, ``continual`` and
``federated simulate`` with a MONAI bundle or a TorchScript model as ``--weights``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_files import write_classifier_bundle, write_exported, write_torchscript
from typer.testing import CliRunner

from medimg.cli import app
from medimg.model_sources import load_model
from medimg.models import load_checkpoint
from medimg.synth import generate_sample_data
from saliency.randomization import cascading_randomization, named_blocks
from saliency.support import method_support, randomization_problem

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
CXR = SAMPLE / "cxr"
SIZE = (32, 32)
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("byom-research")
    generate_sample_data(root / "data", seed=3, only=["mammo"], count=4)
    mammo = root / "data" / "mammo"
    return {
        "root": root,
        "a": mammo / "site_a",
        "c": mammo / "site_c",
        "ts": write_torchscript(root / "scripted.ts", "pneumonia", image_size=SIZE),
        "density_ts": write_torchscript(root / "density.ts", "density", image_size=SIZE),
        "pneumonia_bundle": write_classifier_bundle(root / "pneumonia_bundle", "pneumonia", image_size=SIZE),
        "density_bundle": write_classifier_bundle(root / "density_bundle", "density", image_size=SIZE),
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _audit(weights: Path, out: Path, methods: str, criteria: str) -> str:
    result = runner.invoke(
        app,
        [
            "saliency", "audit", "pneumonia", str(CXR), "--weights", str(weights), "--methods", methods,
            "--criteria", criteria, "--max-images", "2", "--batch-size", "8", "-o", str(out), "-q",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


# --- saliency audit ------------------------------------------------------------------------------


def test_torchscript_audit_runs_the_gradient_methods_and_says_why_gradcam_cannot(files: dict[str, Path]) -> None:
    out = files["root"] / "audit_ts"
    output = _audit(files["ts"], out, "gradient,gradcam,guided_backprop", "localization,randomization")
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model_source"]["kind"] == "torchscript"
    summary = _rows(out / "summary.csv")
    methods = {r["method"] for r in summary}
    assert "gradient" in methods and "gradcam" not in methods and "guided_backprop" not in methods
    report = (out / "report.html").read_text()
    for text in (output, report):
        flat = " ".join(text.split())
        assert "TorchScript model (torchscript): Grad-CAM not supported" in flat
        assert "no forward hooks" in flat and "Guided Backprop not supported" in flat
    # The scripted network was randomized block by block (its parameters redrawn in place).
    states = {r["stage"] for r in _rows(out / "randomization.csv") if r["method"] == "gradient"}
    assert {"logits", "denseblock2"} <= states


def test_bundle_audit_runs_gradcam_on_its_layer_and_randomizes_the_monai_network(files: dict[str, Path]) -> None:
    out = files["root"] / "audit_bundle"
    output = _audit(files["pneumonia_bundle"], out, "gradient,gradcam", "randomization")
    assert "not supported" not in output
    states = {r["stage"] for r in _rows(out / "randomization.csv") if r["method"] == "gradcam"}
    assert {"logits", "denseblock4", "denseblock1"} <= states


def test_randomization_of_a_scripted_network_leaves_the_original_alone(files: dict[str, Path]) -> None:
    model, _ = load_model(files["ts"], pipeline="pneumonia")
    x = torch.rand(2, 1, *SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model(x)
    blocks = named_blocks(model, include_stem=False)
    assert [label for label, _ in blocks] == ["logits", "denseblock2", "denseblock1"]
    states = dict(cascading_randomization(model, blocks, seed=0))
    assert torch.equal(states["original"](x), reference)
    assert not torch.allclose(states["denseblock1"](x), reference)
    # A copy's gradients never reach the original (deepcopy of a ScriptModule keeps autograd history).
    states["logits"](x.requires_grad_(True)).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_what_a_torch_export_program_supports_is_measured_on_the_model(files: dict[str, Path]) -> None:
    path = write_exported(files["root"] / "exported.pt2", "pneumonia", image_size=SIZE)
    model, meta = load_model(path, pipeline="pneumonia")
    reasons = method_support(model, meta["gradcam_layer"], torch.rand(1, 1, *SIZE))
    assert set(reasons) == {"gradcam", "guided_gradcam", "guided_backprop"}
    assert "cannot be re-initialized" in str(randomization_problem(model))
    scripted, scripted_meta = load_model(files["ts"], pipeline="pneumonia")
    assert randomization_problem(scripted) is None
    assert (
        "no forward hooks"
        in method_support(scripted, scripted_meta["gradcam_layer"], torch.rand(1, 1, *SIZE))["gradcam"]
    )


# --- continual -----------------------------------------------------------------------------------


def test_continual_expands_a_bundle_into_a_checkpoint_and_a_bundle(files: dict[str, Path]) -> None:
    from continual.metrics import site_metrics
    from pipelines import get_pipeline
    from pipelines.continual_expansion import site_splits
    from pipelines.training import predict_items

    root, bundle = files["root"], files["density_bundle"]
    fisher = root / "fisher.pt"
    result = runner.invoke(
        app, ["continual", "fisher", "density", str(files["a"]), "--weights", str(bundle), "-o", str(fisher)]
    )
    assert result.exit_code == 0, result.output
    out, exported = root / "expand", root / "expanded_bundle"
    result = runner.invoke(
        app,
        [
            "continual", "expand", "density", str(files["c"]), "--weights", str(bundle), "--fisher", str(fisher),
            "--method", "ewc-gbn", "--epochs", "1", "--batch-size", "8", "-o", str(out), "--bundle-out", str(exported),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    adapted, meta = load_checkpoint(metrics["checkpoint"], pipeline="density")
    assert meta["architecture"] == "monai" and meta["network"]["config"]["_target_"] == "DenseNet121"
    # The reloaded checkpoint gives what the in-memory model gave on the new site's test split.
    pipeline = get_pipeline("density")
    y, prob = predict_items(adapted, site_splits(pipeline, files["c"])["test"], pipeline, meta["preprocessing"])
    assert site_metrics(np.asarray(y), np.asarray(prob)) == pytest.approx(metrics["new_after"], abs=1e-9)
    # ewc-gbn kept the old site's BN statistics of the bundle's network.
    original, _ = load_model(bundle, pipeline="density")
    frozen = [k for k in original.state_dict() if "running_" in k]
    assert frozen and all(torch.equal(adapted.state_dict()[k], original.state_dict()[k]) for k in frozen)
    # ... and the exported bundle is the same model.
    again, _ = load_model(exported, pipeline="density")
    x = torch.rand(2, 1, *SIZE)
    assert torch.allclose(torch.softmax(again(x), 1), torch.softmax(adapted(x), 1), atol=1e-5)
    assert metrics["bundle"]["path"] == str(exported)


def _bn_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running_" in k}


def test_continual_expands_a_torchscript_model_into_a_torchscript_checkpoint(files: dict[str, Path]) -> None:
    from continual.metrics import site_metrics
    from pipelines import get_pipeline
    from pipelines.continual_expansion import site_splits
    from pipelines.training import predict_items

    root, scripted = files["root"], files["density_ts"]
    fisher = root / "fisher_ts.pt"
    result = runner.invoke(
        app, ["continual", "fisher", "density", str(files["a"]), "--weights", str(scripted), "-o", str(fisher)]
    )
    assert result.exit_code == 0, result.output
    original, _ = load_model(scripted, pipeline="density")
    args = ["continual", "expand", "density", str(files["c"]), "--weights", str(scripted), "--fisher", str(fisher)]
    args += ["--epochs", "1", "--batch-size", "8"]
    # A TorchScript network cannot become a MONAI bundle: refused before any training.
    result = runner.invoke(app, [*args, "-o", str(root / "ts_no"), "--bundle-out", str(root / "ts_bundle")])
    flat = " ".join(result.output.split())
    assert result.exit_code != 0 and "not a MONAI network class" in flat and "--format torchscript" in flat
    assert not (root / "ts_no").exists() and not (root / "ts_bundle").exists()
    adapted = {}
    for method in ("ewc-gbn", "finetune", "lwf"):
        out = root / f"ts_{method}"
        result = runner.invoke(app, [*args, "--method", method, "-o", str(out)])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        model, meta = load_checkpoint(metrics["checkpoint"], pipeline="density")
        assert meta["architecture"] == "torchscript" and isinstance(model.network, torch.jit.ScriptModule)
        assert meta["training"]["continual"]["arm"] == method
        # The reloaded checkpoint gives what the in-memory model gave on the new site's test split.
        pipeline = get_pipeline("density")
        y, prob = predict_items(model, site_splits(pipeline, files["c"])["test"], pipeline, meta["preprocessing"])
        assert site_metrics(np.asarray(y), np.asarray(prob)) == pytest.approx(metrics["new_after"], abs=1e-9)
        adapted[method] = model
    # Every arm trained the weights; ewc-gbn kept the old BN statistics, finetune moved them.
    weights = [k for k in original.state_dict() if k.endswith("conv0.weight")]
    for model in adapted.values():
        assert weights and not torch.equal(model.state_dict()[weights[0]], original.state_dict()[weights[0]])
    old = _bn_stats(original)
    assert old and all(torch.equal(_bn_stats(adapted["ewc-gbn"])[k], v) for k, v in old.items())
    assert all(not torch.equal(_bn_stats(adapted["finetune"])[k], v) for k, v in old.items() if "running_mean" in k)


def test_continual_refuses_torch_export_and_untrusted_bundle_code(files: dict[str, Path]) -> None:
    root = files["root"]
    exported = write_exported(root / "density_exported.pt2", "density", image_size=SIZE)
    result = runner.invoke(
        app, ["continual", "fisher", "density", str(files["a"]), "--weights", str(exported), "-o", str(root / "f.pt")]
    )
    flat = " ".join(result.output.split())
    assert result.exit_code != 0 and "cannot be adapted by continual learning" in flat
    assert "cannot be trained or re-initialised" in flat and not (root / "f.pt").exists()
    coded = write_classifier_bundle(root / "coded_bundle", "density", image_size=SIZE)
    inference = coded / "configs" / "inference.json"
    config = json.loads(inference.read_text())
    config["network_def"]["out_channels"] = "$2 * 2"
    inference.write_text(json.dumps(config))
    args = ["continual", "fisher", "density", str(files["a"]), "--weights", str(coded), "-o", str(root / "f.pt")]
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and "--trust-model-code" in " ".join(result.output.split())
    assert not (root / "f.pt").exists()
    result = runner.invoke(app, [*args, "--trust-model-code"])
    assert result.exit_code == 0, result.output


# --- federated -----------------------------------------------------------------------------------


def test_federated_simulate_starts_every_site_from_a_bundle(files: dict[str, Path]) -> None:
    out = files["root"] / "federated"
    args = [
        "federated", "simulate", "density", "--site", str(files["a"]), "--site", str(files["c"]), "--rounds", "1",
        "--batch-size", "8", "--seeds", "0", "--engine", "inprocess", "--no-baselines", "--n-boot", "10", "-o",
    ]  # fmt: skip
    result = runner.invoke(app, [*args, str(out), "--weights", str(files["density_bundle"])])
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(out / "seed0" / "federated.pt", pipeline="density")
    assert meta["architecture"] == "monai" and meta["network"]["config"]["_target_"] == "DenseNet121"
    assert meta["training"]["federated"]["initial_weights"] == str(files["density_bundle"])
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["weights"] == str(files["density_bundle"]) and settings["trust_model_code"] is False
    # Every site and round starts from the bundle's weights, not from a fresh network.
    from pipelines.federation import load_federation

    fed = load_federation({**settings, "seed": 0})
    bundle_model, _ = load_model(files["density_bundle"], pipeline="density")
    assert all(torch.equal(fed.initial_state[k], v) for k, v in bundle_model.state_dict().items())
    assert fed.make_model().state_dict().keys() == bundle_model.state_dict().keys()
    exported = write_exported(files["root"] / "fed_exported.pt2", "density", image_size=SIZE)
    result = runner.invoke(app, [*args, str(files["root"] / "fed_pt2"), "--weights", str(exported)])
    flat = " ".join(result.output.split())
    assert result.exit_code != 0 and "cannot start a federation" in flat and "cannot be trained" in flat


def test_federated_simulate_starts_every_site_from_a_torchscript_model(files: dict[str, Path]) -> None:
    from pipelines.federation import load_federation

    out, scripted = files["root"] / "federated_ts", files["density_ts"]
    args = [
        "federated", "simulate", "density", "--site", str(files["a"]), "--site", str(files["c"]), "--rounds", "2",
        "--batch-size", "8", "--seeds", "0", "--engine", "inprocess", "--n-boot", "10",
        "--bn-policy", "local", "--weights", str(scripted), "-o", str(out),
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["weights"] == str(scripted)
    # The baselines were scored too, with test-time BN (statistics recomputed on the scripted layers).
    scored = _rows(out / "cross_site.csv")
    assert {"local_unseen", "pooled_own"} <= {r["role"] for r in scored} and "tta" in {r["bn"] for r in scored}
    # Every site and round starts from the .ts weights, in copies of the scripted network.
    fed = load_federation({**settings, "seed": 0})
    original, _ = load_model(scripted, pipeline="density")
    assert fed.initial_state.keys() == original.state_dict().keys()
    assert all(torch.equal(fed.initial_state[k], v) for k, v in original.state_dict().items())
    fresh = fed.make_model()
    assert isinstance(fresh.network, torch.jit.ScriptModule) and fresh.network is not fed.template.network
    with torch.no_grad():
        next(fresh.parameters()).add_(1.0)
    assert torch.equal(next(fed.template.parameters()), next(original.parameters()))
    # The global model and each site's personalized one (own BN statistics) reload as TorchScript.
    model, meta = load_checkpoint(out / "seed0" / "federated.pt", pipeline="density")
    assert meta["architecture"] == "torchscript" and meta["training"]["federated"]["initial_weights"] == str(scripted)
    conv = next(k for k in original.state_dict() if k.endswith("conv0.weight"))
    assert not torch.equal(model.state_dict()[conv], original.state_dict()[conv])
    personal = sorted((out / "seed0").glob("federated_*.pt"))
    assert len(personal) == 2
    stats = [_bn_stats(load_checkpoint(p, pipeline="density")[0]) for p in personal]
    assert any(not torch.equal(stats[0][k], stats[1][k]) for k in stats[0])
