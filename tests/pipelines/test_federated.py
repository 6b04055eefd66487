"""``medimg federated simulate`` on three generated institutions: outputs, the cross-site matrix, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medimg.cli import app
from medimg.models import load_checkpoint
from medimg.synth import generate_sample_data
from pipelines import get_pipeline
from pipelines.continual_expansion import site_splits

runner = CliRunner()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, untrained_weights: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("federated")
    generate_sample_data(root / "data", seed=4, only=["mammo"], count=6)
    mammo = root / "data" / "mammo"
    return {
        "root": root,
        "dirs": [mammo / "site_a", mammo / "site_b", mammo / "site_c"],
        "weights": untrained_weights["density"],
    }


def _args(sites: dict[str, Path], out: Path, *extra: str) -> list[str]:
    args = ["federated", "simulate", "density"]
    for folder in sites["dirs"]:
        args += ["--site", str(folder)]
    return [*args, "--rounds", "2", "--batch-size", "8", "--seeds", "0", "--n-boot", "20", "-o", str(out), *extra]


def _check_outputs(out: Path, sites: dict[str, Path]) -> dict:
    names = ["site_a", "site_b", "site_c"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "kappa_linear" and summary["sites"] == names and summary["seeds"] == [0]
    assert {"local_gain", "generalizability_gain", "personalized_own_site", "bootstrap", "matrix"} <= set(summary)
    assert {"value", "ci95", "status", "relative", "federated_own", "local_own"} <= set(summary["local_gain"])
    assert summary["local_gain"]["status"] in ("met", "not shown", "reversed")
    assert summary["generalizability_gain"] is None and "--leave-one-out" in summary["generalizability_note"]
    assert summary["paper"]["local_gain_relative"] == 0.063
    rows = list(csv.DictReader((out / "cross_site.csv").open()))
    models = ["federated", *(f"local_{n}" for n in names), "pooled"]
    assert {r["model"] for r in rows} >= set(models)
    for row in rows:
        assert row["bn"] and row["role"] and row["trained_on"]
        label = f"{row['model']} [{row['bn']}]"
        assert float(row["kappa_linear"]) == pytest.approx(summary["matrix"][label][row["site"]], nan_ok=True)
    unseen = [r for r in rows if r["role"] == "local_unseen"]
    as_trained = "initial_frozen" if summary["bn_policy"] == "global_frozen" else "training_site"
    assert len(unseen) == 2 * 6 and {r["bn"] for r in unseen} == {as_trained, "tta"}
    assert all(r["site"] not in r["trained_on"].split("+") for r in unseen)
    rounds = list(csv.DictReader((out / "seed0" / "rounds.csv").open()))
    assert [r["round"] for r in rounds if r["site"] == "(weighted mean)"] == ["1", "2"]
    html = (out / "report.html").read_text()
    assert "Cross-site matrix" in html and "Gains of the federated model" in html
    _, meta = load_checkpoint(out / "seed0" / "federated.pt", pipeline="density")
    fed = meta["training"]["federated"]
    assert fed["rounds"] == 2 and fed["best_round"] in (1, 2) and len(fed["sites"]) == 3
    return summary


@pytest.mark.slow
def test_inprocess_simulation_writes_the_cross_site_matrix_and_resumes(sites: dict[str, Path]) -> None:
    out = sites["root"] / "inprocess"
    result = runner.invoke(app, _args(sites, out, "--engine", "inprocess", "--bn-policy", "global_frozen",
                                      "--weights", str(sites["weights"])))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "local gain" in result.output and "paper +6.3%" in result.output
    summary = _check_outputs(out, sites)
    assert summary["personalized_own_site"] is None  # not FedBN
    # the baselines trained under the same frozen statistics, and their rows say so
    bns = {(r["role"], r["bn"]) for r in csv.DictReader((out / "cross_site.csv").open())}
    assert {
        ("local_own", "initial_frozen"),
        ("local_unseen", "initial_frozen"),
        ("pooled_own", "initial_frozen"),
    } <= bns
    assert not {bn for _, bn in bns} & {"site_own", "training_site", "pooled"}
    # global_frozen: the federated model keeps the initial model's BN statistics bit for bit
    fl, _ = load_checkpoint(out / "seed0" / "federated.pt", pipeline="density")
    init, _ = load_checkpoint(sites["weights"], pipeline="density")
    stats = [k for k in init.state_dict() if "running_" in k]
    assert stats and all(torch.equal(fl.state_dict()[k], init.state_dict()[k]) for k in stats)
    # a rerun reuses every checkpoint
    stamp = (out / "seed0" / "federated.pt").stat().st_mtime_ns
    same = ["--engine", "inprocess", "--bn-policy", "global_frozen", "--weights", str(sites["weights"])]
    assert runner.invoke(app, _args(sites, out, *same)).exit_code == 0
    assert (out / "seed0" / "federated.pt").stat().st_mtime_ns == stamp
    # ... and refuses checkpoints trained with other settings
    other = runner.invoke(app, _args(sites, out, "--engine", "inprocess", "--lr", "0.01"))
    assert other.exit_code == 2 and "other settings (lr, bn_policy)" in " ".join(other.output.split())


def test_fedbn_writes_one_personalized_model_per_site(sites: dict[str, Path]) -> None:
    """Breaking it: a server BN that is not the example-weighted mean of the sites' BN (what the
    held-out site is scored with), or personalized models that share their BN."""
    out = sites["root"] / "fedbn"
    result = runner.invoke(app, _args(sites, out, "--engine", "inprocess", "--bn-policy", "local", "--no-baselines"))
    assert result.exit_code == 0, result.output
    seed = out / "seed0"
    names = ("site_a", "site_b", "site_c")
    models = {n: load_checkpoint(seed / f"federated_{n}.pt", pipeline="density")[0].state_dict() for n in names}
    shared = load_checkpoint(seed / "federated.pt", pipeline="density")[0].state_dict()
    a, b = models["site_a"], models["site_b"]
    stats = [k for k in a if "running_mean" in k or "running_var" in k]
    assert stats and any(not torch.equal(a[k], b[k]) for k in stats)  # each site keeps its own BN
    conv = [k for k in a if k.endswith(".weight") and a[k].dim() == 4]
    assert conv and all(torch.equal(a[k], b[k]) and torch.equal(a[k], shared[k]) for k in conv)  # shared weights
    # the shared checkpoint's BN = the training-example-weighted mean of the sites' own BN (FedBN's server)
    n_train = {
        n: len(site_splits(get_pipeline("density"), d)["train"]) for n, d in zip(names, sites["dirs"], strict=True)
    }
    total = sum(n_train.values())
    for key in stats:
        mean = sum(models[n][key].double() * n_train[n] for n in names) / total
        torch.testing.assert_close(shared[key], mean.float(), rtol=1e-5, atol=1e-6, msg=key)
    rows = list(csv.DictReader((out / "cross_site.csv").open()))
    assert {(r["model"], r["role"], r["bn"]) for r in rows} == {
        ("federated", "federated_own", "federation_mean"),
        *((f"federated_{n}", "personalized_own", "site_own") for n in names),
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["local_gain"] is None and summary["personalized_own_site"]["ci95"]


def _paths(dataset: object) -> list[str]:
    """The image paths behind a (MONAI or Concat) dataset of the federation."""
    if hasattr(dataset, "datasets"):
        return [p for d in dataset.datasets for p in _paths(d)]
    return [str(item["image"]) for item in dataset.data]


def test_leave_one_out_never_trains_on_the_held_out_site(sites: dict[str, Path], monkeypatch) -> None:
    """Every held-out federation trains only on the other sites (recorded at every client update),
    its score at the held-out site comes in two labelled BN variants that differ, and test-time BN
    reads the held-out site's own training+validation images only, never a label.
    Breaking it: a held-out federation loading every site, test-time BN on the test split or
    with labels, or one BN variant labelled as the other."""
    import continual.crosssite as crosssite
    import continual.federated as federated

    trained: list[tuple[tuple[str, ...], str, list[str]]] = []
    current: list[tuple[str, ...]] = [()]
    simulate, update, adapt = federated.simulate_inprocess, federated.client_update, crosssite.adapt_bn_statistics

    def spy_simulate(make_model, initial, fed_sites, **kw):  # noqa: ANN001, ANN202
        current[0] = tuple(site.name for site in fed_sites)
        return simulate(make_model, initial, fed_sites, **kw)

    def spy_update(model, state, site, **kw):  # noqa: ANN001, ANN202
        trained.append((current[0], site.name, _paths(site.train) + _paths(site.val)))
        return update(model, state, site, **kw)

    adapted: list[list[str]] = []

    class NoLabels(torch.utils.data.Dataset):
        def __init__(self, dataset: object) -> None:
            self.dataset = dataset

        def __len__(self) -> int:
            return len(self.dataset)

        def __getitem__(self, i: int) -> dict:
            item = self.dataset[i]

            class Guard(dict):
                def __getitem__(self, key: str) -> object:
                    if key == "label":
                        raise AssertionError("test-time BN read a label")
                    return super().__getitem__(key)

            return Guard(image=item["image"], label=item["label"])

    def spy_adapt(model, dataset, **kw):  # noqa: ANN001, ANN202
        adapted.append(_paths(dataset))
        return adapt(model, NoLabels(dataset), **kw)

    monkeypatch.setattr(federated, "simulate_inprocess", spy_simulate)
    monkeypatch.setattr(federated, "client_update", spy_update)
    monkeypatch.setattr(crosssite, "adapt_bn_statistics", spy_adapt)
    out = sites["root"] / "loo"
    args = _args(sites, out, "--engine", "inprocess", "--bn-policy", "local", "--leave-one-out", "--rounds", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "generalization, sites never trained on" in result.output and "personalized own-site" in result.output
    names = ["site_a", "site_b", "site_c"]
    folder = dict(zip(names, sites["dirs"], strict=True))
    for held in names:
        others = tuple(n for n in names if n != held)
        calls = [(site, paths) for fed, site, paths in trained if fed == others]
        assert sorted(site for site, _ in calls) == sorted(others)  # one round, one update per member site
        assert not any(p.startswith(str(folder[held]) + "/") for _, paths in calls for p in paths), held
        _, meta = load_checkpoint(out / "seed0" / f"heldout_{held}" / "federated.pt", pipeline="density")
        assert meta["training"]["federated"]["trained_on"] == list(others)
    # test-time BN: 3 held-out federations + 6 (local model, unseen site) pairs, each on one site's
    # training+validation images and never on its test split
    assert len(adapted) == 9
    for paths in adapted:
        site = next(n for n in names if paths[0].startswith(str(folder[n]) + "/"))
        splits = site_splits(get_pipeline("density"), folder[site])
        assert sorted(paths) == sorted(str(i["image"]) for i in splits["train"] + splits["val"])
    rows = list(csv.DictReader((out / "cross_site.csv").open()))
    held = [r for r in rows if r["role"] == "heldout"]
    assert sorted((r["model"], r["bn"]) for r in held) == sorted(
        (f"heldout_{n}", bn) for n in names for bn in ("federation_mean", "tta")
    )
    assert all(r["site"] == r["model"].removeprefix("heldout_") and r["site"] not in r["trained_on"] for r in held)
    predictions = list(csv.DictReader((out / "predictions.csv").open()))
    probs = {}
    for p in predictions:
        if p["model"].startswith("heldout_"):
            probs.setdefault((p["model"], p["bn"]), []).append(float(p["prob_0"]))
    for n in names:
        assert probs[(f"heldout_{n}", "tta")] != probs[(f"heldout_{n}", "federation_mean")]  # the variants differ
    summary = json.loads((out / "summary.json").read_text())
    for key in ("local_gain", "generalizability_gain", "generalizability_gain_tta"):
        assert {"value", "ci95", "status", "relative", "relative_ci95", "undefined_replicates"} <= set(summary[key])
    # the generalization gain from the cross-site kappas: held-out federations and local models on
    # the sites they never saw, paired per held-out site (one seed)
    kappa = {(r["model"], r["bn"], r["site"]): float(r["kappa_linear"]) for r in rows}
    for key, (fed_bn, local_bn) in {"generalizability_gain": ("federation_mean", "training_site"),
                                    "generalizability_gain_tta": ("tta", "tta")}.items():  # fmt: skip
        held = {h: kappa[(f"heldout_{h}", fed_bn, h)] for h in names}
        unseen = {h: np.nanmean([kappa[(f"local_{k}", local_bn, h)] for k in names if k != h]) for h in names}
        kept = [h for h in names if np.isfinite(held[h]) and np.isfinite(unseen[h])]
        expected = np.mean([held[h] for h in kept]) - np.mean([unseen[h] for h in kept]) if kept else np.nan
        assert summary[key]["value"] == pytest.approx(expected, nan_ok=True), key
    assert summary["bn_compared"]["generalizability_gain"] == {
        "federated_heldout": "federation_mean",
        "local_unseen": "training_site",
    }
    assert summary["personalized_own_site"]["value"] == pytest.approx(
        summary["quantities"]["personalized_own"]["value"]
    )


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
    two = ["federated", "simulate", "density", "--site", str(sites["dirs"][0]), "--site", str(sites["dirs"][1]),
           "-o", str(tmp_path / "o4"), "--leave-one-out"]  # fmt: skip
    result = runner.invoke(app, two)
    assert result.exit_code == 2 and "at least 3 sites" in result.output
    result = runner.invoke(app, [*_args(sites, tmp_path / "o5"), "--seeds", "0,x"])
    assert result.exit_code == 2 and "--seeds" in result.output


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
        a, _ = load_checkpoint(out / "seed0" / f"{name}.pt", pipeline="density")
        b, _ = load_checkpoint(ref / "seed0" / f"{name}.pt", pipeline="density")
        for key, value in a.state_dict().items():
            # same functions, same seeds; only thread counts differ (Ray gives each client one CPU)
            torch.testing.assert_close(value, b.state_dict()[key], rtol=1e-3, atol=1e-4, msg=f"{name}: {key}")
