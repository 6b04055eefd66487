"""``medimg federated simulate`` on three generated institutions: outputs, the cross-site matrix, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from checkpoints import untrained_checkpoint
from typer.testing import CliRunner

from medimg.cli import app
from medimg.models import load_checkpoint
from medimg.synth import generate_sample_data

runner = CliRunner()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("federated")
    generate_sample_data(root / "data", seed=4, only=["mammo"], count=6)
    mammo = root / "data" / "mammo"
    return {
        "root": root,
        "dirs": [mammo / "site_a", mammo / "site_b", mammo / "site_c"],
        "weights": untrained_checkpoint(root / "a.pt", "density"),
    }


def _args(sites: dict[str, Path], out: Path, *extra: str) -> list[str]:
    args = ["federated", "simulate", "density"]
    for folder in sites["dirs"]:
        args += ["--site", str(folder)]
    return [*args, "--rounds", "2", "--batch-size", "8", "-o", str(out), *extra]


def _check_outputs(out: Path, sites: dict[str, Path]) -> dict:
    names = ["site_a", "site_b", "site_c"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "kappa_linear" and summary["sites"] == names
    assert {"local_gain", "local_gain_relative", "generalizability_gain", "generalizability_local"} <= set(summary)
    assert summary["paper"]["local_gain_relative"] == 0.063
    rows = list(csv.DictReader((out / "cross_site.csv").open()))
    models = ["federated", *(f"local_{n}" for n in names), "pooled"]
    assert sorted({r["model"] for r in rows}) == sorted(models)
    assert len(rows) == len(models) * 3
    for row in rows:
        assert float(row["kappa_linear"]) == pytest.approx(summary["matrix"][row["model"]][row["site"]], nan_ok=True)
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    assert [r["round"] for r in rounds if r["site"] == "(weighted mean)"] == ["1", "2"]
    html = (out / "report.html").read_text()
    assert "Cross-site matrix" in html and "Gains of the federated model" in html
    _, meta = load_checkpoint(out / "federated.pt", pipeline="density")
    fed = meta["training"]["federated"]
    assert fed["rounds"] == 2 and fed["best_round"] in (1, 2) and len(fed["sites"]) == 3
    return summary


def test_inprocess_simulation_writes_the_cross_site_matrix_and_resumes(sites: dict[str, Path]) -> None:
    out = sites["root"] / "inprocess"
    result = runner.invoke(app, _args(sites, out, "--engine", "inprocess", "--bn-policy", "global_frozen",
                                      "--weights", str(sites["weights"])))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "local gain" in result.output and "paper +6.3%" in result.output
    _check_outputs(out, sites)
    # global_frozen: the federated model keeps the initial model's BN statistics bit for bit
    fl, _ = load_checkpoint(out / "federated.pt", pipeline="density")
    init, _ = load_checkpoint(sites["weights"], pipeline="density")
    stats = [k for k in init.state_dict() if "running_" in k]
    assert stats and all(torch.equal(fl.state_dict()[k], init.state_dict()[k]) for k in stats)
    # a rerun reuses every checkpoint
    stamp = (out / "federated.pt").stat().st_mtime_ns
    same = ["--engine", "inprocess", "--bn-policy", "global_frozen", "--weights", str(sites["weights"])]
    assert runner.invoke(app, _args(sites, out, *same)).exit_code == 0
    assert (out / "federated.pt").stat().st_mtime_ns == stamp
    # ... and refuses checkpoints trained with other settings
    other = runner.invoke(app, _args(sites, out, "--engine", "inprocess", "--lr", "0.01"))
    assert other.exit_code == 2 and "other settings (lr, bn_policy)" in " ".join(other.output.split())


def test_fedbn_writes_one_personalised_model_per_site(sites: dict[str, Path]) -> None:
    out = sites["root"] / "fedbn"
    result = runner.invoke(app, _args(sites, out, "--engine", "inprocess", "--bn-policy", "local", "--no-baselines"))
    assert result.exit_code == 0, result.output
    models = {n: load_checkpoint(out / f"federated_{n}.pt", pipeline="density")[0] for n in ("site_a", "site_b")}
    shared = load_checkpoint(out / "federated.pt", pipeline="density")[0].state_dict()
    a, b = (m.state_dict() for m in models.values())
    stats = [k for k in a if "running_mean" in k]
    assert stats and any(not torch.equal(a[k], b[k]) for k in stats)  # each site keeps its own BN
    conv = [k for k in a if k.endswith("conv0.weight") or (k.endswith(".weight") and a[k].dim() == 4)]
    assert conv and all(torch.equal(a[k], b[k]) and torch.equal(a[k], shared[k]) for k in conv)  # shared weights
    rows = list(csv.DictReader((out / "cross_site.csv").open()))
    assert {r["model"] for r in rows} == {"federated"} and len(rows) == 3


def test_bad_inputs_exit_2_with_the_problem_named(sites: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty_site"
    empty.mkdir()
    args = ["federated", "simulate", "density", "--site", str(sites["dirs"][0]), "--site", str(empty), "-o",
            str(tmp_path / "o"), "--engine", "inprocess"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "empty_site" in result.output
    result = runner.invoke(app, ["federated", "simulate", "density", "--site", str(sites["dirs"][0]), "-o",
                                 str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 2 and "at least 2 sites" in result.output
    result = runner.invoke(app, [*_args(sites, tmp_path / "o2"), "--bn-policy", "global_frozen"])
    assert result.exit_code == 2 and "--weights" in result.output
    result = runner.invoke(app, [*_args(sites, tmp_path / "o3"), "--engine", "ray"])
    assert result.exit_code == 2 and "unknown engine" in result.output


@pytest.mark.slow
def test_flower_simulation_matches_the_inprocess_reference(sites: dict[str, Path]) -> None:
    """FedBN + FedProx through Flower (node state, mu in the train config) = the engine-free loop.
    (FedAvg with averaged BN runs through Flower in the loopback deployment test.)"""
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    settings = ["--bn-policy", "local", "--proximal-mu", "0.01"]
    out = sites["root"] / "flower"
    result = runner.invoke(app, _args(sites, out, "--engine", "flower", *settings))
    assert result.exit_code == 0, result.output
    _check_outputs(out, sites)
    ref = sites["root"] / "reference"
    result = runner.invoke(app, _args(sites, ref, "--engine", "inprocess", "--no-baselines", *settings))
    assert result.exit_code == 0, result.output
    for name in ("federated", "federated_site_a", "federated_site_b", "federated_site_c"):
        a, _ = load_checkpoint(out / f"{name}.pt", pipeline="density")
        b, _ = load_checkpoint(ref / f"{name}.pt", pipeline="density")
        for key, value in a.state_dict().items():
            # same functions, same seeds; only thread counts differ (Ray gives each client one CPU)
            torch.testing.assert_close(value, b.state_dict()[key], rtol=1e-3, atol=1e-4, msg=f"{name}: {key}")
