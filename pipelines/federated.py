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

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.federation import Federation, federation_meta, load_federation, save_server, site_names, write_rounds

__all__ = ["ENGINES", "simulate_federation", "train_seed"]

ENGINES = ("flower", "inprocess")


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
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Federated training of ``pipeline_name`` over the site folders, with baselines and cross-site scores.

    For every seed (``OUT/seed<s>/``): the federation of all sites (``federated.pt``; FedBN also
    ``federated_<site>.pt``), with ``baselines`` each site's local-only model (``local_<site>.pt``)
    and the pooled model (``pooled.pt``), with ``leave_one_out`` for every site h the federation of
    the other sites (``heldout_<h>/federated.pt``), which never sees h's images. Then every model is
    scored on the test splits (:func:`pipelines.federated_eval.score_seed`) and the gains are
    summarized over seeds with bootstrap intervals (:mod:`continual.crosssite`).

    Args:
        weights: the initial model of every site and round (and of the baselines): a medimg
            checkpoint or a MONAI bundle (:func:`medimg.model_sources.load_model`, with
            ``trust_code`` and ``card``); None: a fresh ``architecture`` network.
        seeds: training seeds; each one trains every model again (initialization and data order).
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
        "trust_model_code": bool(trust_code),
        "model_card": str(card) if card else None,
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


def _weights_data(weights: str | os.PathLike[str] | None) -> str | None:
    """The training data a starting checkpoint records (``training.data``), if any (a bundle records none)."""
    from medimg.model_sources import model_kind

    if not weights or model_kind(weights) != "checkpoint":
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
                save_server(fed, server, path, f"local:{site.name}", personalized=False, trained_on=[site.name])
        path = seed_dir / "pooled.pt"
        _check_reuse(fed, [path])
        if not path.is_file():
            server = _run_inprocess(fed, [_pooled_site(fed)], fed.config)
            save_server(fed, server, path, "pooled", personalized=False)
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
        current = federation_meta(fed, "", {})["training"]["federated"]
        changed = [k for k in _REUSE_KEYS if recorded.get(k) != current.get(k)]
        if changed:
            raise ValueError(
                f"{path} was trained with other settings ({', '.join(changed)}); use another output folder"
            )
