"""``medimg continual fisher|expand|compare`` on generated institutions: splits, files, post-conditions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from continual.ewc import Fisher
from medimg.cli import app
from medimg.models import load_checkpoint, read_checkpoint
from medimg.synth import generate_sample_data
from pipelines import DatasetError, get_pipeline
from pipelines.continual_expansion import site_splits

runner = CliRunner()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, untrained_weights: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("continual")
    generate_sample_data(root / "data", seed=3, only=["mammo"], count=6)
    mammo = root / "data" / "mammo"
    return {"root": root, "a": mammo / "site_a", "c": mammo / "site_c", "weights": untrained_weights["density"]}


def test_site_splits_are_by_patient_seeded_and_never_empty(sites: dict[str, Path]) -> None:
    pipeline = get_pipeline("density")
    splits = site_splits(pipeline, sites["a"])
    assert all(splits[name] for name in ("train", "val", "test"))
    patients = {name: {i["patient_id"] for i in part} for name, part in splits.items()}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert site_splits(pipeline, sites["a"]) == splits
    assert sum(len(p) for p in splits.values()) == len(pipeline.load_dataset(sites["a"]))
    # The generated site has VinDr-Mammo's split column: its test rows are exactly the test split.
    assert {i["image"] for i in splits["test"]} == {
        i["image"] for i in pipeline.load_dataset(sites["a"]) if i["split"] == "test"
    }


def test_site_splits_without_a_test_column_are_60_20_20(tmp_path: Path, sites: dict[str, Path]) -> None:
    pipeline = get_pipeline("density")
    src = sites["a"] / "breast-level_annotations.csv"
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    site = tmp_path / "site_a"
    site.mkdir()
    (site / "images").symlink_to(sites["a"] / "images")
    columns = [c for c in rows[0] if c != "split"]
    with open(site / "breast-level_annotations.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    splits = site_splits(pipeline, site)
    n = {name: len({i["patient_id"] for i in part}) for name, part in splits.items()}
    assert n["test"] == n["val"] == round(0.2 * sum(n.values())) and n["train"] == sum(n.values()) - 2 * n["test"]


def test_site_splits_need_patients_outside_the_given_test_split(tmp_path: Path, sites: dict[str, Path]) -> None:
    with open(sites["a"] / "breast-level_annotations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    site = tmp_path / "site_a"
    site.mkdir()
    (site / "images").symlink_to(sites["a"] / "images")
    with open(site / "breast-level_annotations.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "split": "test"} for row in rows)
    with pytest.raises(DatasetError, match="outside the test split"):
        site_splits(get_pipeline("density"), site)


def test_fisher_then_expand_keeps_the_old_bn_statistics(sites: dict[str, Path]) -> None:
    root = sites["root"]
    fisher = root / "fisher.pt"
    result = runner.invoke(
        app, ["continual", "fisher", "density", str(sites["a"]), "--weights", str(sites["weights"]), "-o", str(fisher)]
    )
    assert result.exit_code == 0, result.output
    loaded = Fisher.load(fisher)
    assert loaded.meta["mode"] == "empirical_logprob" and loaded.values
    out = root / "expand"
    result = runner.invoke(
        app,
        [
            "continual", "expand", "density", str(sites["c"]), "--weights", str(sites["weights"]), "--fisher",
            str(fisher), "--method", "ewc-gbn", "--lambda", "10", "--epochs", "1", "--batch-size", "8", "--old",
            str(sites["a"]), "-o", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arm"] == "ewc-gbn" and metrics["postconditions"] == "checked"
    assert {"new_before", "new_after", "old_before", "old_after"} <= set(metrics)
    adapted, meta = load_checkpoint(metrics["checkpoint"], pipeline="density")
    original, _ = load_checkpoint(sites["weights"], pipeline="density")
    frozen = [k for k in original.state_dict() if "running_" in k]
    assert frozen and all(torch.equal(adapted.state_dict()[k], original.state_dict()[k]) for k in frozen)
    assert meta["training"]["continual"]["freeze_bn_stats"] is True


def test_compare_writes_one_row_per_arm_lambda_and_seed(sites: dict[str, Path]) -> None:
    out = sites["root"] / "compare"
    result = runner.invoke(
        app,
        [
            "continual", "compare", "density", "--old", str(sites["a"]), "--new", str(sites["c"]), "--weights",
            str(sites["weights"]), "--arms", "old-only,finetune,ewc-gbn,bn-ewc-gbn,lwf,joint", "--lambdas", "1,100",
            "--epochs", "1", "--batch-size", "8", "-o", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with open(out / "arms.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["arm"], r["lambda"]) for r in rows] == [
        ("old-only", ""), ("finetune", ""), ("ewc-gbn", "1.0"), ("ewc-gbn", "100.0"), ("bn-ewc-gbn", "1.0"),
        ("bn-ewc-gbn", "100.0"), ("lwf", ""), ("joint", ""),
    ]  # fmt: skip
    for column in ("old_kappa_before", "old_kappa_after", "new_kappa_after", "forgetting"):
        assert column in rows[0]
    assert (out / "report.html").is_file() and (out / "summary.csv").is_file()
    # old-only does not train: before == after on both sites
    old_only = rows[0]
    assert old_only["old_accuracy_before"] == old_only["old_accuracy_after"]
    # Layer-reset attribution of every trained run: the adapted model, 4 depth groups, the old model.
    with open(out / "reset.csv", newline="") as fh:
        reset = list(csv.DictReader(fh))
    groups = ["none", "depth 1/4", "depth 2/4", "depth 3/4", "depth 4/4", "all"]
    assert [r["group"] for r in reset] == groups * 7
    for after in rows[1:]:
        run = [r for r in reset if (r["arm"], r["lambda"]) == (after["arm"], after["lambda"])]
        assert [r["group"] for r in run] == groups
        assert float(run[0]["old_kappa"]) == pytest.approx(float(after["old_kappa_after"]), nan_ok=True)
        assert float(run[-1]["old_kappa"]) == pytest.approx(float(after["old_kappa_before"]), nan_ok=True)
        assert float(run[-1]["new_kappa"]) == pytest.approx(float(after["new_kappa_before"]), nan_ok=True)
    assert "Where the forgetting is" in (out / "report.html").read_text()
    # The joint arm kept its epoch by the mean of both sites' validation kappas.
    with open(out / "runs" / "joint-l0-s0" / "metrics.csv", newline="") as fh:
        epoch = next(csv.DictReader(fh))
    assert float(epoch["kappa_linear"]) == pytest.approx(
        (float(epoch["new_kappa_linear"]) + float(epoch["old_kappa_linear"])) / 2, nan_ok=True
    )
    # Decoded images are cached once per preprocessing, apart for the training and inference chains.
    assert sorted(p.name for p in (out / "cache").glob("*/*")) == ["eval", "train"]


def test_the_image_cache_does_not_change_a_run(sites: dict[str, Path]) -> None:
    """``compare`` caches the decoded images; a run with the cache equals one without: the same
    weights bit for bit and the same validation losses (a validation split cached through the
    training transforms, with their random flips and zooms, would change those)."""
    from pipelines.continual_expansion import expand_site

    runs = {}
    for name, cache in (("plain", None), ("cached", sites["root"] / "cache-check")):
        out = sites["root"] / f"expand-{name}"
        metrics = expand_site(
            "density", sites["c"], sites["weights"], out, method="joint", data_a=sites["a"], epochs=1,
            batch_size=8, cache_dir=cache,
        )  # fmt: skip
        with open(out / "metrics.csv", newline="") as fh:
            val_loss = [row["val_loss"] for row in csv.DictReader(fh)]
        runs[name] = (metrics, read_checkpoint(out / "last.pt")["state_dict"], val_loss)
    (plain, plain_state, plain_loss), (cached, cached_state, cached_loss) = runs["plain"], runs["cached"]
    assert all(torch.equal(plain_state[k], cached_state[k]) for k in plain_state)
    assert plain_loss == cached_loss
    assert plain["new_after"] == cached["new_after"] and plain["old_after"] == cached["old_after"]
    assert any((sites["root"] / "cache-check").rglob("*.pt"))


def test_bad_inputs_are_clear(sites: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="patient"):
        site_splits(get_pipeline("density"), _tiny_site(tmp_path))
    result = runner.invoke(
        app,
        [
            "continual", "expand", "density", str(sites["c"]), "--weights", str(sites["weights"]), "--method",
            "ewc-gbn", "-o", str(tmp_path / "x"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2 and "Fisher" in result.output
    result = runner.invoke(
        app,
        [
            "continual", "expand", "density", str(sites["c"]), "--weights", str(sites["weights"]), "--method",
            "magic", "-o", str(tmp_path / "y"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2 and "unknown method" in result.output


def _tiny_site(tmp_path: Path) -> Path:
    generate_sample_data(tmp_path / "tiny", seed=4, only=["mammo"], count=2)
    return tmp_path / "tiny" / "mammo" / "site_a"


def test_train_never_uses_the_dataset_test_split(sites: dict[str, Path]) -> None:
    # What makes the old site's test metrics honest for a model trained with ``medimg train``.
    run = sites["root"] / "train-a"
    result = runner.invoke(
        app,
        [
            "train", "density", str(sites["a"].parent), "-o", str(run), "--architecture", "compact", "--epochs", "1",
            "--image-size", "32x40", "--batch-size", "8", "-q",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    training = read_checkpoint(run / "last.pt")["meta"]["training"]
    items = get_pipeline("density").load_dataset(sites["a"].parent)
    n_test = sum(i["split"] == "test" for i in items)
    assert n_test > 0 and training["split"]["held_out_test"] == n_test
    assert training["n_train"] + training["n_val"] == len(items) - n_test


def test_the_demo_sites_have_two_classes_in_every_split(tmp_path: Path) -> None:
    # Otherwise the demo's continual and federated tables show undefined kappas.
    from medimg.demo import small_sites

    sites = small_sites(tmp_path)
    pipeline = get_pipeline("density")
    for site in ("site_a", "site_b", "site_c"):
        splits = site_splits(pipeline, sites / site)
        assert all(len({i["label"] for i in part}) >= 2 for part in splits.values()), site
