"""``medimg federated simulate``: a 2-D pipeline's institutions handed to :mod:`continual.federated`.

Each site folder is split by patient into train / validation / test (the same split as ``medimg
continual``). The federation (FedAvg or FedProx, a BN policy) runs on Flower's simulation engine
(:mod:`continual.flower`, the ``federated`` extra) or, with ``engine="inprocess"``, on the
engine-free reference loop; both run the same client and server functions. The baselines use the
same loop and budget: ``local_<site>`` is a federation of that site alone (R rounds of E local
epochs, the best round by its own validation split), ``pooled`` one site holding every site's
training and validation data (it breaks the premise that images stay at their site: an upper
bound). With ``leave_one_out``, ``heldout_<h>`` is the federation of every site but h, to be scored
on h, an institution it never saw. Everything is trained once per seed.

Outputs (``OUT``): per seed ``seed<s>/`` with ``federated.pt`` (the best global model),
``rounds.csv`` (per-round validation of the global model), ``local_<site>.pt``, ``pooled.pt`` and
``heldout_<site>/federated.pt``; then ``cross_site.csv`` (every model on every test split it is
scored on, with its role and BN), ``predictions.csv``, ``summary.json`` (``local_gain``,
``generalizability_gain`` with 95% intervals; see :mod:`continual.crosssite`) and ``report.html``
(:mod:`pipelines.federated_eval`). A rerun reuses the checkpoints it finds if they were trained
with the same settings (delete one to train it again).
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

from medimg.writers import write_csv
from pipelines.base import Pipeline

__all__ = [
    "Federation",
    "evaluate_dataset",
    "load_federation",
    "save_server",
    "simulate_federation",
    "site_names",
    "train_seed",
    "write_rounds",
]

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
    #: per site: the patient (exam) of each test image, in the test split's order
    test_groups: dict[str, list[str]] = field(default_factory=dict)
    #: per site: its training and validation images through the inference transforms (test-time BN)
    unlabelled: dict[str, Any] = field(default_factory=dict)

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
    from torch.utils.data import ConcatDataset

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
    names = [str(n) for n in s["site_names"]] if s.get("site_names") and site_dir is None else site_names(dirs)
    if len(names) != len(dirs):
        raise ValueError(f"{len(names)} site names for {len(dirs)} site folders")
    cache = s.get("cache_dir")
    fed = Federation(pipeline, meta, {k: v.detach().clone() for k, v in model.state_dict().items()}, [], dirs, config,
                     settings=dict(s))  # fmt: skip
    for index, (name, folder) in enumerate(zip(names, dirs, strict=True)):
        if only_site is not None and index != only_site:
            fed.sites.append(Site(name=name, train=None, val=None, test=None))
            continue
        splits = site_splits(pipeline, folder)
        sub = Path(cache) / name if cache else None

        def dataset(part: str, train: bool = False, sub: Path | None = sub, splits: dict = splits) -> Any:
            return site_dataset(pipeline, splits[part], meta["preprocessing"], train=train, cache_dir=sub)

        fed.sites.append(Site(name=name, train=dataset("train", True), val=dataset("val"), test=dataset("test")))
        fed.test_groups[name] = [str(item["patient_id"]) for item in splits["test"]]
        # training + validation images through the inference transforms (own cache: the keys are the items)
        plain = site_dataset(
            pipeline, splits["train"], meta["preprocessing"], train=False, cache_dir=sub / "inference" if sub else None
        )
        fed.unlabelled[name] = ConcatDataset([plain, fed.sites[-1].val])
    return fed


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


def save_server(
    fed: Federation,
    server: Any,
    path: Path,
    role: str,
    *,
    personalised: bool = True,
    trained_on: Sequence[str] | None = None,
) -> None:
    """The best global model to ``path``; under the ``local`` BN policy also each site's personalised
    model (best global weights + that site's own BN) to ``<stem>_<site>.pt`` beside it.

    ``trained_on``: the names of the sites whose images trained it (default: the federation's
    sites), recorded in the checkpoint as ``training.federated.trained_on``.
    """
    from medimg.models import save_checkpoint

    model = fed.make_model()
    extra = {
        "best_round": server.best_round,
        "best_val_" + fed.config.monitor: server.best_value,
        "trained_on": list(trained_on) if trained_on is not None else [s.name for s in fed.sites],
    }
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


def _check_arguments(engine: str, site_dirs: Sequence[Any], bn_policy: str, weights: Any, seeds: Sequence[int],
                     leave_one_out: bool) -> None:  # fmt: skip
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {list(ENGINES)}")
    if len(site_dirs) < 2:
        raise ValueError(f"a federation needs at least 2 sites, got {len(site_dirs)}")
    if leave_one_out and len(site_dirs) < 3:
        raise ValueError(f"--leave-one-out needs at least 3 sites (a federation of the others), got {len(site_dirs)}")
    if bn_policy == "global_frozen" and weights is None:
        raise ValueError("bn_policy 'global_frozen' keeps the initial model's BN statistics: give --weights")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"give one or more distinct seeds, got {list(seeds)}")


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
    seeds: Sequence[int] = (0, 1, 2),
    leave_one_out: bool = False,
    engine: str = "flower",
    baselines: bool = True,
    n_boot: int = 1000,
    quiet: bool = True,
) -> dict[str, Any]:
    """Federated training of ``pipeline_name`` over the site folders, with baselines and cross-site scores.

    For every seed (``OUT/seed<s>/``): the federation of all sites (``federated.pt``; FedBN also
    ``federated_<site>.pt``), with ``baselines`` each site's local-only model (``local_<site>.pt``)
    and the pooled model (``pooled.pt``), with ``leave_one_out`` for every site h the federation of
    the other sites (``heldout_<h>/federated.pt``), which never sees h's images. Then every model is
    scored on the test splits (:func:`pipelines.federated_eval.score_seed`) and the gains are
    summarised over seeds with bootstrap intervals (:mod:`continual.crosssite`).

    Args:
        seeds: training seeds; each one trains every model again (initialisation and data order).
        leave_one_out: also train and score the held-out federations (needs >= 3 sites).
        n_boot: bootstrap replicates of the intervals.
        (the others: see ``medimg federated simulate --help``)

    Returns:
        The ``summary.json`` content.

    Raises:
        DatasetError: a site folder is not usable (named in the message).
        ValueError: fewer than 2 sites (3 with ``leave_one_out``), an unknown engine or bad settings.
        ImportError: ``engine="flower"`` without the ``federated`` extra (the message says how to install it).
    """
    from pipelines.federated_eval import score_seed, write_outputs

    seeds = [int(s) for s in seeds]
    _check_arguments(engine, site_dirs, bn_policy, weights, seeds, leave_one_out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = {
        "pipeline": pipeline_name,
        "sites": [str(Path(d)) for d in site_dirs],
        "site_names": site_names(site_dirs),
        "weights": str(weights) if weights else None,
        "weights_data": _weights_data(weights),
        "architecture": architecture,
        "image_size": list(image_size) if image_size else None,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "proximal_mu": proximal_mu,
        "bn_policy": bn_policy,
        "cache_dir": str(out / "cache"),
    }
    scores: list[Any] = []
    fed = None
    for seed in seeds:
        settings = {**base, "seed": seed, "out": str(out / f"seed{seed}")}
        fed = train_seed(settings, engine=engine, baselines=baselines, leave_one_out=leave_one_out, quiet=quiet)
        scores += score_seed(fed, Path(settings["out"]), baselines=baselines, leave_one_out=leave_one_out)
    assert fed is not None
    run = {**base, "seeds": seeds, "leave_one_out": leave_one_out, "baselines": baselines, "engine": engine,
           "out": str(out)}  # fmt: skip
    return write_outputs(fed, scores, out, settings=run, n_boot=n_boot)


def _weights_data(weights: str | Path | None) -> str | None:
    """The training data a starting checkpoint records (``training.data``), if any."""
    if not weights:
        return None
    from medimg.models import read_checkpoint

    data = read_checkpoint(weights)["meta"].get("training", {}).get("data")
    return str(data) if data else None


def _train_federation(fed: Federation, settings: Mapping[str, Any], *, engine: str, quiet: bool) -> Path:
    """``settings["out"]/federated.pt``: the federation of ``fed.sites`` (trained unless it is there)."""
    out = Path(str(settings["out"]))
    path = out / "federated.pt"
    _check_reuse(fed, [path])
    if path.is_file():
        return path
    out.mkdir(parents=True, exist_ok=True)
    if engine == "flower":
        from continual.flower import simulate as flower_simulate
        from pipelines.federated_app import client_app_for, server_app_for

        flower_simulate(server_app_for(settings), client_app_for(settings), num_sites=len(fed.sites), quiet=quiet)
        if not path.is_file():
            raise RuntimeError(f"the Flower simulation ended without writing {path}; see its log above")
    else:
        server = _run_inprocess(fed, fed.sites, fed.config)
        write_rounds(out, server.history)
        save_server(fed, server, path, "federated")
    return path


def train_seed(
    settings: Mapping[str, Any], *, engine: str, baselines: bool, leave_one_out: bool, quiet: bool = True
) -> Federation:
    """Train (or reuse) one seed's models under ``settings["out"]``; return the federation of all sites.

    The held-out federation of site h is loaded from settings that name only the other sites, so
    h's images are never read by its clients (its folder is not in the federation).

    Raises:
        ValueError: a checkpoint in the folder was trained with other settings.
    """
    fed = load_federation(settings)
    seed_dir = Path(str(settings["out"]))
    _train_federation(fed, settings, engine=engine, quiet=quiet)
    if baselines:
        for site in fed.sites:
            path = seed_dir / f"local_{site.name}.pt"
            _check_reuse(fed, [path])
            if not path.is_file():
                server = _run_inprocess(fed, [site], fed.config)
                save_server(fed, server, path, f"local:{site.name}", personalised=False, trained_on=[site.name])
        path = seed_dir / "pooled.pt"
        _check_reuse(fed, [path])
        if not path.is_file():
            server = _run_inprocess(fed, [_pooled_site(fed)], fed.config)
            save_server(fed, server, path, "pooled", personalised=False)
    if leave_one_out:
        names = [s.name for s in fed.sites]
        for held in names:
            keep = [i for i, name in enumerate(names) if name != held]
            sub = {
                **settings,
                "sites": [fed.site_dirs[i] for i in keep],
                "site_names": [names[i] for i in keep],
                "out": str(seed_dir / f"heldout_{held}"),
            }
            _train_federation(load_federation(sub), sub, engine=engine, quiet=quiet)
    return fed


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
