"""``medimg federated simulate``: a 2-D pipeline's institutions handed to :mod:`continual.federated`.

Each site folder is split by patient into train / validation / test (60/20/20, seeded; the same
split as ``medimg continual``). The federation (FedAvg or FedProx, a BN policy) runs on Flower's
simulation engine (:mod:`continual.flower`, the ``federated`` extra) or, with
``engine="inprocess"``, on the engine-free reference loop; both run the same client and server
functions. The baselines use the same loop and budget: ``local_<site>`` is a federation of that
site alone (R rounds of E local epochs, the best round by its own validation split), ``pooled``
one site holding every site's training and validation data (it breaks the premise that images stay
at their site: an upper bound). Every model is then scored on every site's test split: the
cross-site matrix of spec ``continual.md`` §4.2 step 6.

Outputs (``OUT``): ``federated.pt`` (the best global model), ``local_<site>.pt``, ``pooled.pt``,
``rounds.csv`` (per-round validation of the global model), ``cross_site.csv``, ``summary.json``
(``local_gain``, ``generalizability_gain`` ...), ``report.html``. A rerun reuses the checkpoints it
finds (delete one to train it again).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medimg.writers import write_csv, write_json
from pipelines.base import Pipeline

__all__ = [
    "PAPER_GAINS",
    "Federation",
    "evaluate_dataset",
    "load_federation",
    "simulate_federation",
]

#: Roth et al. 2020 (abstract): federated vs local-only on the own site, and relative generalizability gain.
PAPER_GAINS = {"local_gain_relative": 0.063, "generalizability_gain": 0.458}
ENGINES = ("flower", "inprocess")


@dataclass
class Federation:
    """A pipeline's federation: settings, architecture metadata, initial state and the sites."""

    pipeline: Pipeline
    meta: dict[str, Any]
    initial_state: dict[str, Any]
    sites: list[Any]
    site_dirs: list[str]
    config: Any
    settings: dict[str, Any] = field(default_factory=dict)

    def make_model(self) -> Any:
        from medimg.models import build_network

        return build_network(self.meta["architecture"], **self.meta["network"])

    def evaluate(self, model: Any, dataset: Any) -> dict[str, float]:
        return evaluate_dataset(self.pipeline, model, dataset)


def evaluate_dataset(pipeline: Pipeline, model: Any, dataset: Any, *, batch_size: int = 16) -> dict[str, float]:
    """The pipeline's metrics (e.g. accuracy, linear kappa) of ``model`` on a dataset of labelled items."""
    from pipelines.training import predict_dataset

    labels, probs = predict_dataset(model, dataset, batch_size=batch_size)
    return pipeline.metrics(labels, probs.astype(np.float64))


def site_names(site_dirs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Unique short names for the site folders (folder name, with its parent's if needed)."""
    names = [Path(d).name or str(d) for d in site_dirs]
    if len(set(names)) < len(names):
        names = [f"{Path(d).parent.name}-{Path(d).name}" for d in site_dirs]
    if len(set(names)) < len(names):
        names = [f"site{i}-{n}" for i, n in enumerate(names)]
    return [re.sub(r"[^A-Za-z0-9_.-]+", "_", n) for n in names]


def _from_run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Settings from a Flower run config (flat scalars; lists and null may come JSON-encoded)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, str) and (value[:1] in "[{" or value == "null"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out


def load_federation(
    settings: Mapping[str, Any], *, only_site: int | None = None, site_dir: str | None = None
) -> Federation:
    """Build the federation from its settings (as :func:`simulate_federation` records them).

    Args:
        settings: ``pipeline``, ``sites`` (folders), ``weights`` (initial checkpoint or None),
            ``architecture``, ``image_size``, ``seed``, ``cache_dir`` and the :class:`FedConfig`
            fields (``rounds``, ``local_epochs``, ``batch_size``, ``lr``, ``proximal_mu``, ``bn_policy``).
            Flower run configs (JSON-encoded lists) are accepted.
        only_site: load only this site's data (a client).
        site_dir: load this folder as the only site (a deployed SuperNode's own data).

    Raises:
        DatasetError: a site folder that does not have the pipeline's layout or has < 3 patients.
        ValueError: bad settings.
    """
    import torch

    from continual.federated import FedConfig, Site
    from medimg.models import build_network, load_checkpoint
    from pipelines import get_pipeline
    from pipelines.continual_expansion import site_splits
    from pipelines.training import site_dataset

    s = _from_run_config(settings)
    pipeline = get_pipeline(str(s["pipeline"]))
    if pipeline.unit == "study":
        raise ValueError(f"federated training is for 2-D classification pipelines; {pipeline.name!r} segments volumes")
    if s.get("weights"):
        model, meta = load_checkpoint(s["weights"], pipeline=pipeline.name)
    else:
        architecture = str(s.get("architecture") or "compact")
        image_size = s.get("image_size")
        meta = {
            "pipeline": pipeline.name,
            "architecture": architecture,
            "network": {"spatial_dims": 2, "in_channels": 1, "out_channels": len(pipeline.labels)},
            "labels": list(pipeline.labels),
            "preprocessing": pipeline.preprocessing(architecture, tuple(image_size) if image_size else None),
            "training": {},
        }
        torch.manual_seed(int(s.get("seed", 0)))
        model = build_network(architecture, **meta["network"])
    config = FedConfig(
        rounds=int(s.get("rounds", 3)),
        local_epochs=int(s.get("local_epochs", 1)),
        batch_size=int(s.get("batch_size", 16)),
        lr=float(s.get("lr", 1e-3)),
        proximal_mu=float(s.get("proximal_mu", 0.0)),
        bn_policy=str(s.get("bn_policy", "average")),
        seed=int(s.get("seed", 0)),
        monitor=pipeline.monitor,
    )
    if site_dir is not None:
        dirs = [site_dir]
    elif s.get("sites"):
        dirs = [str(d) for d in s["sites"]]
    elif only_site == -1 and int(s.get("num_sites", 0)) > 0:  # a deployed server knows how many sites, not where
        dirs = [f"site{i}" for i in range(int(s["num_sites"]))]
    else:
        raise ValueError("the settings name no sites (give 'sites', or 'num_sites' for a deployed server)")
    names = site_names(dirs)
    cache = s.get("cache_dir")
    sites = []
    for index, (name, folder) in enumerate(zip(names, dirs, strict=True)):
        if only_site is not None and index != only_site:
            sites.append(Site(name=name, train=None, val=None, test=None))
            continue
        splits = site_splits(pipeline, folder)
        sub = Path(cache) / name if cache else None
        sites.append(
            Site(
                name=name,
                train=site_dataset(pipeline, splits["train"], meta["preprocessing"], train=True, cache_dir=sub),
                val=site_dataset(pipeline, splits["val"], meta["preprocessing"], train=False, cache_dir=sub),
                test=site_dataset(pipeline, splits["test"], meta["preprocessing"], train=False, cache_dir=sub),
            )
        )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Federation(pipeline, meta, state, sites, dirs, config, settings=dict(s))


def _checkpoint_meta(fed: Federation, role: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    import copy

    meta = copy.deepcopy(fed.meta)
    meta.setdefault("training", {})["federated"] = {
        "role": role,
        "sites": list(fed.site_dirs),
        "rounds": fed.config.rounds,
        "local_epochs": fed.config.local_epochs,
        "batch_size": fed.config.batch_size,
        "lr": fed.config.lr,
        "proximal_mu": fed.config.proximal_mu,
        "bn_policy": fed.config.bn_policy,
        "seed": fed.config.seed,
        "initial_weights": fed.settings.get("weights"),
        **dict(extra),
    }
    return meta


def _save_server(fed: Federation, server: Any, path: Path, role: str, *, personalised: bool = True) -> None:
    """The best global model to ``path``; under the ``local`` BN policy also each site's personalised
    model (best global weights + that site's own BN) to ``<stem>_<site>.pt`` beside it."""
    from medimg.models import save_checkpoint

    model = fed.make_model()
    extra = {"best_round": server.best_round, "best_val_" + fed.config.monitor: server.best_value}
    for name, state in server.site_models().items() if personalised and fed.config.bn_policy == "local" else ():
        model.load_state_dict(state)
        save_checkpoint(path.with_name(f"{path.stem}_{name}.pt"), model, _checkpoint_meta(fed, f"{role}:{name}", extra))
    model.load_state_dict(server.best_state if server.best_state is not None else server.state)
    save_checkpoint(path, model, _checkpoint_meta(fed, role, extra))


def _run_inprocess(fed: Federation, sites: Sequence[Any], config: Any) -> Any:
    from continual.federated import simulate_inprocess

    return simulate_inprocess(
        fed.make_model, fed.initial_state, sites, config=config, metric_fn=fed.pipeline.metrics,
        evaluate=fed.evaluate, checkpoint_meta=fed.meta,
    )  # fmt: skip


def _pooled_site(fed: Federation) -> Any:
    from torch.utils.data import ConcatDataset

    from continual.federated import Site

    return Site(
        name="pooled",
        train=ConcatDataset([s.train for s in fed.sites]),
        val=ConcatDataset([s.val for s in fed.sites]),
    )


def simulate_federation(
    pipeline_name: str,
    site_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    rounds: int = 3,
    local_epochs: int = 1,
    batch_size: int = 16,
    lr: float = 1e-3,
    proximal_mu: float = 0.0,
    bn_policy: str = "average",
    weights: str | os.PathLike[str] | None = None,
    architecture: str = "compact",
    image_size: Sequence[int] | None = None,
    seed: int = 0,
    engine: str = "flower",
    baselines: bool = True,
    quiet: bool = True,
) -> dict[str, Any]:
    """Federated training of ``pipeline_name`` over the site folders, with baselines and the cross-site matrix.

    Returns:
        The ``summary.json`` content.

    Raises:
        DatasetError: a site folder is not usable (named in the message).
        ValueError: fewer than 2 sites, an unknown engine or bad settings.
        ImportError: ``engine="flower"`` without the ``federated`` extra (the message says how to install it).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {list(ENGINES)}")
    if len(site_dirs) < 2:
        raise ValueError(f"a federation needs at least 2 sites, got {len(site_dirs)}")
    if bn_policy == "global_frozen" and weights is None:
        raise ValueError("bn_policy 'global_frozen' keeps the initial model's BN statistics: give --weights")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "pipeline": pipeline_name,
        "sites": [str(Path(d)) for d in site_dirs],
        "weights": str(weights) if weights else None,
        "architecture": architecture,
        "image_size": list(image_size) if image_size else None,
        "seed": seed,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "proximal_mu": proximal_mu,
        "bn_policy": bn_policy,
        "cache_dir": str(out / "cache"),
        "out": str(out),
    }
    fed = load_federation(settings)
    names = [s.name for s in fed.sites]
    fl_path = out / "federated.pt"
    _check_reuse(fed, [fl_path, *(out / f"local_{n}.pt" for n in names), out / "pooled.pt"])
    if not fl_path.is_file():
        if engine == "flower":
            from continual.flower import simulate as flower_simulate
            from pipelines.federated_app import client_app_for, server_app_for

            flower_simulate(server_app_for(settings), client_app_for(settings), num_sites=len(names), quiet=quiet)
            if not fl_path.is_file():
                raise RuntimeError(f"the Flower simulation ended without writing {fl_path}; see its log above")
        else:
            server = _run_inprocess(fed, fed.sites, fed.config)
            write_rounds(out, server.history)
            _save_server(fed, server, fl_path, "federated")
    models: dict[str, Any] = {"federated": fl_path}
    if fed.config.bn_policy == "local":  # FedBN: each site uses the global weights with its own BN
        models["federated"] = {name: out / f"federated_{name}.pt" for name in names}
    if baselines:
        for site in fed.sites:
            path = out / f"local_{site.name}.pt"
            if not path.is_file():
                server = _run_inprocess(fed, [site], fed.config)
                _save_server(fed, server, path, f"local:{site.name}", personalised=False)
            models[f"local_{site.name}"] = path
        path = out / "pooled.pt"
        if not path.is_file():
            server = _run_inprocess(fed, [_pooled_site(fed)], fed.config)
            _save_server(fed, server, path, "pooled", personalised=False)
        models["pooled"] = path
    return write_cross_site(fed, models, out)


_REUSE_KEYS = ("sites", "rounds", "local_epochs", "batch_size", "lr", "proximal_mu", "bn_policy", "seed")


def _check_reuse(fed: Federation, paths: Sequence[Path]) -> None:
    """A rerun reuses the checkpoints in OUT only if they were trained with the same settings."""
    from medimg.models import read_checkpoint

    for path in paths:
        if not path.is_file():
            continue
        recorded = read_checkpoint(path)["meta"].get("training", {}).get("federated", {})
        current = _checkpoint_meta(fed, "", {})["training"]["federated"]
        changed = [k for k in _REUSE_KEYS if recorded.get(k) != current.get(k)]
        if changed:
            raise ValueError(
                f"{path} was trained with other settings ({', '.join(changed)}); use another output folder"
            )


def write_rounds(out: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """``OUT/rounds.csv``: each site's validation of the global model after every round."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    write_csv(out / "rounds.csv", list(history), columns)


def write_cross_site(fed: Federation, models: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Score every model on every site's test split: ``cross_site.csv``, ``summary.json``, ``report.html``.

    ``models[label]`` is a checkpoint, or ``{site: checkpoint}`` for a model that each site holds in
    its own variant (FedBN's personalised models).
    """
    from continual.federated import cross_site_summary
    from medimg.models import load_checkpoint

    monitor = fed.config.monitor
    rows: list[dict[str, Any]] = []
    matrix: dict[str, dict[str, float]] = {}
    for label, path in models.items():
        shared = None if isinstance(path, Mapping) else load_checkpoint(path, pipeline=fed.pipeline.name)[0]
        for site in fed.sites:
            model = shared if shared is not None else load_checkpoint(path[site.name], pipeline=fed.pipeline.name)[0]
            metrics = fed.evaluate(model, site.test)
            rows.append({"model": label, "site": site.name, "n_test": len(site.test), **metrics})
            matrix.setdefault(label, {})[site.name] = float(metrics[monitor])
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    write_csv(out / "cross_site.csv", rows, columns)
    names = [s.name for s in fed.sites]
    summary: dict[str, Any] = {"metric": monitor, "sites": names, "matrix": matrix}
    if all(f"local_{n}" in matrix for n in names):
        summary.update(cross_site_summary(matrix, names))
        summary["paper"] = {**PAPER_GAINS, "source": "Roth et al. 2020, abstract (7 institutions)"}
    summary["settings"] = {k: v for k, v in fed.settings.items() if k not in ("cache_dir",)}
    write_json(out / "summary.json", summary)
    from continual.report import write_federated_report

    rounds = out / "rounds.csv"
    write_federated_report(out, summary, rows, rounds_csv=rounds if rounds.is_file() else None)
    return summary
