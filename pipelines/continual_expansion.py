"""``medimg continual fisher|expand|compare``: a 2-D pipeline's sites handed to :mod:`continual`.

Each site folder is split by patient (seeded) into train / validation / test (the dataset's own
test split where it has one, else 60/20/20; :func:`site_splits`): the
Fisher is estimated on the old site's training split; fine-tuning uses the new site's training
split and picks its best epoch on the new site's validation split (never on old data); every
metric is measured on the test splits. Only the model and the Fisher cross from the old site to
the new one, except for the ``joint`` arm (pooled training, the reference for both sites together:
it trains on both training splits and keeps the epoch with the best mean of both sites' validation
metrics) and the old-site evaluation of ``compare``, which need the old site's images by definition.

The old model (``weights``) may be a medimg checkpoint, a MONAI bundle or a TorchScript model
(:func:`load_old_model`); the adapted model is a medimg checkpoint (architecture ``"monai"`` for a
bundle: the network's config and adapter travel in its meta; ``"torchscript"`` for a TorchScript
model: its program travels in the checkpoint, see :mod:`medimg.model_sources.scripted`).
``torch.export`` programs are refused: an exported graph cannot be trained or re-initialised.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.writers import write_csv, write_json
from pipelines.base import DatasetError, Pipeline, is_held_out_test
from pipelines.training import site_dataset

if TYPE_CHECKING:
    from continual.ewc import Fisher

__all__ = [
    "DEFAULT_LAMBDAS",
    "compare_arms",
    "estimate_site_fisher",
    "expand_site",
    "layer_reset_rows",
    "load_old_model",
    "site_splits",
]

#: EWC lambdas swept by ``compare`` (mean-normalized Fisher; log-uniform, as the paper's sweep).
DEFAULT_LAMBDAS: tuple[float, ...] = (1.0, 100.0, 10000.0)
SPLIT_SEED = 0


def site_splits(pipeline: Pipeline, data_dir: str | os.PathLike[str], *, seed: int = SPLIT_SEED) -> dict[str, list]:
    """``{"train", "val", "test"}`` item lists of one site, split by patient (seeded).

    When the dataset has its own test split (VinDr-Mammo's ``split`` column; see
    :func:`pipelines.base.is_held_out_test`), that is the test split: ``medimg train`` never trains
    on it, so a model trained with medimg at the old site is measured on images it never saw. The
    other patients are ordered by a hash of seed and patient ID; the first quarter (at least one) is
    the validation split, the rest training. Without a test column the patients are split
    60/20/20: the first 20% (at least one) test, the next 20% validation, the rest training.

    Raises:
        DatasetError: fewer than 3 patients, or no patient outside a given test split for training
            and validation.
    """
    items = pipeline.load_dataset(data_dir)

    def ordered(subset: Sequence[Mapping[str, Any]]) -> list[str]:
        return sorted(
            {str(item["patient_id"]) for item in subset},
            key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest(),
        )

    patients = ordered(items)
    if len(patients) < 3:
        raise DatasetError(f"{data_dir}: {len(patients)} patient(s); a train/val/test split needs at least 3")
    given = {str(item["patient_id"]) for item in items if is_held_out_test(item)}
    if given:
        rest = ordered([item for item in items if str(item["patient_id"]) not in given])
        if len(rest) < 2:
            raise DatasetError(
                f"{data_dir}: {len(rest)} patient(s) outside the test split; training and validation need 2"
            )
        n_val = max(1, round(0.25 * len(rest)))
        test, val = given, set(rest[:n_val])
    else:
        n_held = max(1, round(0.2 * len(patients)))
        test, val = set(patients[:n_held]), set(patients[n_held : 2 * n_held])
    part = {pid: "test" if pid in test else "val" if pid in val else "train" for pid in patients}
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for item in items:
        splits[part[str(item["patient_id"])]].append(item)
    return splits


def load_old_model(
    pipeline: Pipeline,
    weights: str | os.PathLike[str],
    *,
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The old site's model and meta (:func:`medimg.model_sources.load_model`), if continual learning can adapt it.

    Raises:
        medimg.model_sources.ModelSourceError: unreadable weights, or a ``torch.export`` program: an
            exported graph cannot be trained or re-initialised.
    """
    from medimg.model_sources import ModelSourceError, load_model

    model, meta = load_model(weights, pipeline=pipeline.name, trust_code=trust_code, card=card)
    if meta["architecture"] == "torch.export":
        raise ModelSourceError(
            f"{weights}: a torch.export model cannot be adapted by continual learning: an exported graph cannot be "
            "trained or re-initialised; use a medimg checkpoint, a MONAI bundle or a TorchScript (.ts) model"
        )
    return model, meta


def _cache_folders(cache_dir: str | os.PathLike[str] | None, preprocessing: Mapping[str, Any]) -> dict[bool, Any]:
    """``{train: folder}`` for :func:`site_dataset`: ``CACHE/<preprocessing hash>/train`` and ``/eval``
    (a cached image never meets other preprocessing or the other transform chain), or ``None``s."""
    if cache_dir is None:
        return {True: None, False: None}
    import json

    key = hashlib.sha256(json.dumps(preprocessing, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {train: Path(cache_dir) / key / ("train" if train else "eval") for train in (True, False)}


def _site_metrics(pipeline: Pipeline, model: Any, items: Sequence[Mapping[str, Any]], meta: Mapping) -> dict:
    from continual.metrics import site_metrics
    from pipelines.training import predict_items

    y, prob = predict_items(model, list(items), pipeline, meta["preprocessing"], batch_size=16)
    return site_metrics(np.asarray(y), np.asarray(prob))


def estimate_site_fisher(
    pipeline_name: str,
    data_a: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str = "empirical_logprob",
    max_samples: int | None = None,
    seed: int = 0,
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
) -> Fisher:
    """Estimate the Fisher diagonal of ``weights`` (:func:`load_old_model`) on the old site's training
    split; save it to ``out``."""
    from continual.ewc import estimate_fisher
    from medimg.model_sources import model_sha256
    from pipelines import get_pipeline

    pipeline = get_pipeline(pipeline_name)
    model, meta = load_old_model(pipeline, weights, trust_code=trust_code, card=card)
    train = site_dataset(pipeline, site_splits(pipeline, data_a)["train"], meta["preprocessing"], train=False)
    fisher = estimate_fisher(model, train, mode=mode, max_samples=max_samples, seed=seed)
    digest = model_sha256(weights, card)
    fisher.meta.update({"weights": str(weights), "weights_sha256": digest, "site": str(data_a)})
    fisher.save(out)
    return fisher


def expand_site(
    pipeline_name: str,
    data_b: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    method: str = "ewc-gbn",
    fisher: str | os.PathLike[str] | None = None,
    lam: float = 100.0,
    data_a: str | os.PathLike[str] | None = None,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-4,
    seed: int = 0,
    select: str = "metric",
    before: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    quiet: bool = True,
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
    bundle_out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Adapt ``weights`` (:func:`load_old_model`; ``trust_code``, ``card`` as there) to the new site
    with one arm: ``OUT/best.pt`` (+ the loop's files) and ``OUT/metrics.json`` (new-site test
    metrics before and after; old-site ones with ``data_a``).
    ``before``: the old model's ``new_before``/``old_before`` metrics when already measured.
    ``cache_dir``: decoded training and validation images cached there (MONAI
    ``PersistentDataset``: the deterministic transforms only, so the results do not change).
    ``bundle_out``: also write the adapted model there as a MONAI bundle
    (:func:`medimg.model_sources.export.export_model`, checked by a round trip); a folder that
    exists and is not empty is refused before any training, and so is ``bundle_out`` for a TorchScript
    old model (its network is a compiled program, not a MONAI network class: export the adapted
    checkpoint with ``medimg export --format torchscript`` instead)."""
    from continual.ewc import Fisher
    from continual.expansion import ARMS, expand
    from medimg.training import TrainConfig
    from pipelines import get_pipeline

    pipeline = get_pipeline(pipeline_name)
    if method not in ARMS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(ARMS)}")
    out = Path(out)
    if bundle_out is not None and Path(bundle_out).exists() and any(Path(bundle_out).iterdir()):
        raise ValueError(f"{bundle_out} exists and is not empty: choose another bundle folder")
    model_a, meta = load_old_model(pipeline, weights, trust_code=trust_code, card=card)
    if bundle_out is not None and meta["architecture"] == "torchscript":
        raise ValueError(
            f"--bundle-out: {weights} is a TorchScript model, whose network is a compiled program, not a MONAI network "
            "class, so the adapted model cannot be a MONAI bundle; leave out --bundle-out and export the adapted "
            "checkpoint with `medimg export --format torchscript`"
        )
    splits_b = site_splits(pipeline, data_b)
    splits_a = site_splits(pipeline, data_a) if data_a is not None else None
    fisher_obj = Fisher.load(fisher) if fisher is not None else None
    if ARMS[method].joint and splits_a is None:
        raise ValueError("the joint arm needs the old site's data (--old)")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, monitor=pipeline.monitor)
    cache = _cache_folders(cache_dir, meta["preprocessing"])

    def dataset(items: list, train: bool) -> Any:
        return site_dataset(pipeline, items, meta["preprocessing"], train=train, cache_dir=cache[train])

    joint = splits_a is not None and ARMS[method].joint
    model, info = expand(
        model_a,
        dataset(splits_b["train"], True),
        dataset(splits_b["val"], False),
        arm=method,
        out_dir=out,
        config=config,
        metric_fn=pipeline.metrics,
        checkpoint_meta=meta,
        fisher=fisher_obj,
        lam=lam,
        train_a=dataset(splits_a["train"], True) if joint else None,
        val_a=dataset(splits_a["val"], False) if joint else None,
        select=select,
        quiet=quiet,
    )
    metrics: dict[str, Any] = {
        **info,
        "new_before": before["new_before"] if before else _site_metrics(pipeline, model_a, splits_b["test"], meta),
        "new_after": _site_metrics(pipeline, model, splits_b["test"], meta),
        "weights": str(weights),
        "checkpoint": str(out / "best.pt") if (out / "best.pt").is_file() else str(out / "last.pt"),
        "fisher": str(fisher) if fisher else None,
        "new_site": str(data_b),
    }
    if splits_a is not None:
        metrics["old_before"] = (
            before["old_before"] if before else _site_metrics(pipeline, model_a, splits_a["test"], meta)
        )
        metrics["old_after"] = _site_metrics(pipeline, model, splits_a["test"], meta)
        metrics["old_site"] = str(data_a)
    if bundle_out is not None:
        from medimg.model_sources.export import export_model

        exported = export_model(
            metrics["checkpoint"], bundle_out, fmt="bundle", pipeline=pipeline.name, trust_code=trust_code
        )
        metrics["bundle"] = {"path": str(exported.path), "max_difference": exported.max_difference}
    write_json(out / "metrics.json", metrics)
    return metrics


def layer_reset_rows(
    pipeline_name: str,
    data_a: str | os.PathLike[str],
    data_b: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    runs: Sequence[Mapping[str, Any]],
    *,
    n_groups: int = 4,
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Where each adapted model forgot: :func:`continual.layer_reset.reset_attribution` of every
    run (``{"arm", "lambda", "seed", "checkpoint"}``) against ``weights``, scored by linear kappa on
    both sites' test splits. One row per run and group."""
    from continual.layer_reset import reset_attribution
    from continual.metrics import site_metrics
    from medimg.models import load_checkpoint
    from pipelines import get_pipeline
    from pipelines.training import predict_dataset

    if not runs:
        return []
    pipeline = get_pipeline(pipeline_name)
    model_a, meta = load_old_model(pipeline, weights, trust_code=trust_code, card=card)
    tests = {}
    for site, folder in (("old", data_a), ("new", data_b)):
        dataset = site_dataset(pipeline, site_splits(pipeline, folder)["test"], meta["preprocessing"], train=False)
        tests[site] = [dataset[i] for i in range(len(dataset))]  # decoded once, scored many times

    def evaluate(model: Any) -> dict[str, float]:
        return {
            f"{site}_kappa": site_metrics(*predict_dataset(model, data))["kappa_linear"] for site, data in tests.items()
        }

    rows: list[dict[str, Any]] = []
    for run in runs:
        model_b, _ = load_checkpoint(run["checkpoint"], pipeline=pipeline.name, trust_code=trust_code)
        for row in reset_attribution(model_a, model_b, evaluate, n_groups=n_groups):
            rows.append({"arm": run["arm"], "lambda": run["lambda"], "seed": run["seed"], **row})
    return rows


def compare_arms(
    pipeline_name: str,
    data_a: str | os.PathLike[str],
    data_b: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    arms: Sequence[str] = (),
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    seeds: Sequence[int] = (0,),
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-4,
    fisher_mode: str = "empirical_logprob",
    select: str = "metric",
    quiet: bool = True,
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Every arm (EWC arms at every lambda) and seed: ``OUT/arms.csv``, ``OUT/summary.csv``,
    ``OUT/reset.csv`` (layer-reset attribution of the first seed's models, :func:`layer_reset_rows`),
    ``OUT/report.html``; runs are resumable (each in ``OUT/runs/<arm>-l<lambda>-s<seed>``); the
    decoded training and validation images are cached once for all runs in ``OUT/cache``."""
    from continual.metrics import summarize_arms
    from continual.report import write_compare_report

    out = Path(out)
    model: dict[str, Any] = {"trust_code": trust_code, "card": card}
    fisher_path = _fisher_file(out / "fisher.pt", pipeline_name, data_a, weights, fisher_mode, model)
    rows, trained = _run_arms(
        pipeline_name, data_a, data_b, weights, out, fisher_path, arms=arms, lambdas=lambdas, seeds=seeds,
        epochs=epochs, batch_size=batch_size, lr=lr, select=select, quiet=quiet, model=model,
    )  # fmt: skip
    write_csv(out / "arms.csv", rows, list(rows[0]) if rows else [])
    summary = summarize_arms(rows)
    write_csv(out / "summary.csv", summary, list(summary[0]) if summary else [])
    reset = layer_reset_rows(pipeline_name, data_a, data_b, weights, trained, **model)
    if reset:
        write_csv(out / "reset.csv", reset, list(reset[0]))
    write_compare_report(out, rows, summary, reset=reset, settings={
        "pipeline": pipeline_name, "old": str(data_a), "new": str(data_b), "weights": str(weights),
        "lambdas": list(lambdas), "seeds": list(seeds), "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "fisher_mode": fisher_mode, "select": select,
    })  # fmt: skip
    return rows


def _fisher_file(
    path: Path,
    pipeline_name: str,
    data_a: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    fisher_mode: str,
    model: Mapping[str, Any],
) -> Path:
    """``path``, holding the old site's Fisher of ``weights``: estimated when missing (a rerun reuses it).

    Raises:
        ValueError: ``path`` holds a Fisher of another mode.
    """
    from continual.ewc import Fisher

    if not path.is_file():
        estimate_site_fisher(pipeline_name, data_a, weights, path, mode=fisher_mode, **model)
        return path
    found = Fisher.load(path).meta.get("mode")
    if found != fisher_mode:
        raise ValueError(f"{path} holds a {found!r} Fisher, not {fisher_mode!r}: use another output folder")
    return path


def _run_arms(
    pipeline_name: str,
    data_a: str | os.PathLike[str],
    data_b: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    out: Path,
    fisher_path: Path,
    *,
    arms: Sequence[str],
    lambdas: Sequence[float],
    seeds: Sequence[int],
    epochs: int,
    batch_size: int,
    lr: float,
    select: str,
    quiet: bool,
    model: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Adapt ``weights`` with every arm (EWC arms at every lambda) for every seed, each run in
    ``OUT/runs/<arm>-l<lambda>-s<seed>``: the ``arms.csv`` rows, and the first seed's trained runs
    (``{"arm", "lambda", "seed", "checkpoint"}``) for the layer-reset attribution."""
    from continual.expansion import ARMS
    from continual.metrics import arm_row

    rows: list[dict[str, Any]] = []
    before: dict[str, Any] | None = None
    naive: dict[int, dict[str, Any]] = {}  # per seed: the naive fine-tuning result (reference of the gaps)
    trained: list[dict[str, Any]] = []  # the first seed's adapted models, for the layer-reset attribution
    chosen = list(arms or ARMS)
    for seed in seeds:
        for arm in chosen:
            for lam in lambdas if ARMS[arm].ewc else (0.0,):
                run = out / "runs" / f"{arm}-l{lam:g}-s{seed}"
                result = expand_site(
                    pipeline_name, data_b, weights, run, method=arm, fisher=fisher_path, lam=lam, data_a=data_a,
                    epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, select=select, before=before,
                    cache_dir=out / "cache", quiet=quiet, **model,
                )  # fmt: skip
                before = {k: result[k] for k in ("new_before", "old_before")}  # the old model, measured once
                reference = naive.get(seed, {})
                row = arm_row(
                    arm, lam if ARMS[arm].ewc else None, seed, old_before=result["old_before"],
                    old_after=result["old_after"], new_before=result["new_before"], new_after=result["new_after"],
                    naive_old_after=reference.get("old_after"), naive_new_after=reference.get("new_after"),
                )  # fmt: skip
                if arm == "finetune":
                    naive[seed] = result
                if seed == seeds[0] and ARMS[arm].train:
                    checkpoint = result["checkpoint"]
                    trained.append({"arm": arm, "lambda": row["lambda"], "seed": seed, "checkpoint": checkpoint})
                rows.append(row)
    return rows, trained
