"""One federation of a 2-D pipeline's institutions: its sites, model and checkpoints.

Shared by the simulation (:mod:`pipelines.federated`) and the Flower apps that run it for real
(:mod:`pipelines.federated_app`): :func:`load_federation` builds a :class:`Federation` from the
settings a run records (or from a Flower run config), :func:`save_server` writes a server's best
model (and FedBN's personalized ones) with :func:`federation_meta` in the checkpoint, and
:func:`write_rounds` the per-round validation.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.writers import write_csv
from pipelines.base import Pipeline

if TYPE_CHECKING:
    import torch

    from continual.federated import FedConfig, Site

__all__ = [
    "Federation",
    "duplicate_warnings",
    "evaluate_dataset",
    "federation_meta",
    "fingerprint",
    "load_federation",
    "save_server",
    "settings_from_run_config",
    "site_names",
    "split_warnings",
    "write_rounds",
]


@dataclass
class Federation:
    """A pipeline's federation: settings, architecture metadata, initial state and the sites."""

    pipeline: Pipeline
    meta: dict[str, Any]
    initial_state: dict[str, Any]
    sites: list[Site]
    site_dirs: list[str]
    config: FedConfig
    settings: dict[str, Any] = field(default_factory=dict)
    #: per site: the patient (exam) of each test image, in the test split's order
    test_groups: dict[str, list[str]] = field(default_factory=dict)
    #: per site: its training and validation images through the inference transforms (test-time BN)
    unlabelled: dict[str, Any] = field(default_factory=dict)
    #: what makes the averaged figures mislead: single-class splits, sites with identical data
    data_warnings: list[str] = field(default_factory=list)
    #: per site: a fingerprint of its items (patient, label, file name and size), see :func:`data_warnings`
    fingerprints: dict[str, str] = field(default_factory=dict)
    #: the loaded starting model when it is a TorchScript network: :meth:`make_model` copies it
    template: torch.nn.Module | None = None

    def make_model(self) -> torch.nn.Module:
        """A fresh network of the federation's architecture (random initialization; a bundle's
        network is built from its ``network_def``, with ``trust_model_code`` as the run says; a
        TorchScript network, which has no architecture to build, is a copy of :attr:`template`)."""
        from medimg.models import TORCHSCRIPT, build_network, copy_model

        if self.meta["architecture"] == TORCHSCRIPT:
            if self.template is None:
                raise ValueError("a TorchScript federation needs its loaded model (template) to copy")
            return copy_model(self.template)
        trust = bool(self.settings.get("trust_model_code"))
        return build_network(self.meta["architecture"], **self.meta["network"], trust_code=trust)

    def evaluate(self, model: torch.nn.Module, dataset: Any) -> dict[str, float]:
        """The pipeline's metrics of ``model`` on ``dataset`` (:func:`evaluate_dataset`)."""
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


def settings_from_run_config(config: Mapping[str, Any]) -> dict[str, Any]:
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
        settings: ``pipeline``, ``sites`` (folders), ``weights`` (the initial model: any kind
            :func:`medimg.model_sources.load_model` reads whose network medimg can rebuild, or None),
            ``trust_model_code`` and ``model_card`` (for ``weights``), ``architecture``,
            ``image_size``, ``seed``, ``cache_dir`` and the :class:`FedConfig` fields (``rounds``,
            ``local_epochs``, ``batch_size``, ``lr``, ``proximal_mu``, ``bn_policy``).
            Flower run configs (JSON-encoded lists) are accepted.
        only_site: load only this site's data (a client).
        site_dir: load this folder as the only site (a deployed SuperNode's own data).

    Raises:
        DatasetError: a site folder that does not have the pipeline's layout or has < 3 patients.
        ValueError: bad settings.
    """
    from continual.federated import Site

    s = settings_from_run_config(settings)
    pipeline = _classification_pipeline(str(s["pipeline"]))
    model, meta = _initial_model(pipeline, s)
    config = _fed_config(pipeline, s)
    dirs, names = _site_folders(s, only_site=only_site, site_dir=site_dir)
    cache = s.get("cache_dir")
    fed = Federation(pipeline, meta, {k: v.detach().clone() for k, v in model.state_dict().items()}, [], dirs, config,
                     settings=dict(s), template=model if meta["architecture"] == "torchscript" else None)  # fmt: skip
    for index, (name, folder) in enumerate(zip(names, dirs, strict=True)):
        if only_site is not None and index != only_site:
            fed.sites.append(Site(name=name, train=None, val=None, test=None))
        else:
            _add_site(fed, name, folder, Path(cache) / name if cache else None)
    fed.data_warnings.extend(duplicate_warnings(fed.fingerprints))
    return fed


def _classification_pipeline(name: str) -> Pipeline:
    """The pipeline called ``name``; ValueError for a segmentation pipeline (federated training classifies)."""
    from pipelines import get_pipeline

    pipeline = get_pipeline(name)
    if pipeline.unit == "study":
        raise ValueError(f"federated training is for 2-D classification pipelines; {pipeline.name!r} segments volumes")
    return pipeline


def _initial_model(pipeline: Pipeline, s: Mapping[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The starting model and its checkpoint metadata: ``weights`` when given (a medimg checkpoint, a
    MONAI bundle or a TorchScript model), else a fresh ``architecture`` (default ``compact``)
    initialized with ``seed``.

    Raises:
        medimg.model_sources.ModelSourceError: unreadable weights, or a ``torch.export`` program: an
            exported graph cannot be trained or re-initialised.
    """
    import torch

    from medimg.model_sources import ModelSourceError, load_model
    from medimg.models import build_network

    if s.get("weights"):
        loaded, loaded_meta = load_model(
            s["weights"], pipeline=pipeline.name, trust_code=bool(s.get("trust_model_code")), card=s.get("model_card")
        )
        if loaded_meta["architecture"] == "torch.export":
            raise ModelSourceError(
                f"{s['weights']}: a torch.export model cannot start a federation: an exported graph cannot be trained "
                "or re-initialised; use a medimg checkpoint, a MONAI bundle or a TorchScript (.ts) model"
            )
        return loaded, loaded_meta
    architecture = str(s.get("architecture") or "compact")
    image_size = s.get("image_size")
    meta: dict[str, Any] = {
        "pipeline": pipeline.name,
        "architecture": architecture,
        "network": {"spatial_dims": 2, "in_channels": 1, "out_channels": len(pipeline.labels)},
        "labels": list(pipeline.labels),
        "preprocessing": pipeline.preprocessing(architecture, tuple(image_size) if image_size else None),
        "training": {},
    }
    torch.manual_seed(int(s.get("seed", 0)))
    return build_network(architecture, **meta["network"]), meta


def _fed_config(pipeline: Pipeline, s: Mapping[str, Any]) -> FedConfig:
    """The :class:`continual.federated.FedConfig` of the settings (their defaults where absent)."""
    from continual.federated import FedConfig

    return FedConfig(
        rounds=int(s.get("rounds", 3)),
        local_epochs=int(s.get("local_epochs", 1)),
        batch_size=int(s.get("batch_size", 16)),
        lr=float(s.get("lr", 1e-3)),
        proximal_mu=float(s.get("proximal_mu", 0.0)),
        bn_policy=str(s.get("bn_policy", "average")),
        seed=int(s.get("seed", 0)),
        monitor=pipeline.monitor,
    )


def _site_folders(s: Mapping[str, Any], *, only_site: int | None, site_dir: str | None) -> tuple[list[str], list[str]]:
    """``(folders, names)`` of the sites: ``site_dir`` alone, else ``sites``, else ``site0`` ... for a deployed
    server (``only_site == -1``) that knows ``num_sites`` only; names from ``site_names`` or :func:`site_names`."""
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
    return dirs, names


def _add_site(fed: Federation, name: str, folder: str, cache: Path | None) -> None:
    """Load one site's splits into ``fed``: its train/val/test datasets, test patients and unlabelled images."""
    from torch.utils.data import ConcatDataset

    from continual.federated import Site
    from pipelines.continual_expansion import site_splits
    from pipelines.training import site_dataset

    pipeline, preprocessing = fed.pipeline, fed.meta["preprocessing"]
    splits = site_splits(pipeline, folder)
    fed.data_warnings.extend(split_warnings(name, splits))
    fed.fingerprints[name] = fingerprint([item for part in ("train", "val", "test") for item in splits[part]])

    def dataset(part: str, train: bool = False) -> Any:
        return site_dataset(pipeline, splits[part], preprocessing, train=train, cache_dir=cache)

    fed.sites.append(Site(name=name, train=dataset("train", True), val=dataset("val"), test=dataset("test")))
    fed.test_groups[name] = [str(item["patient_id"]) for item in splits["test"]]
    # training + validation images through the inference transforms (own cache: the keys are the items)
    plain = site_dataset(
        pipeline, splits["train"], preprocessing, train=False, cache_dir=cache / "inference" if cache else None
    )
    fed.unlabelled[name] = ConcatDataset([plain, fed.sites[-1].val])


def split_warnings(name: str, splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Warnings for a site whose training or test split has a single class (its scores mislead)."""
    out = []
    for part in ("train", "test"):
        labels = {str(item.get("label")) for item in splits.get(part, [])}
        if len(labels) == 1:
            out.append(
                f"site {name}: its {part} split has a single class ({labels.pop()}); "
                "its scores (and the gains averaged over sites) may mislead"
            )
    return out


def fingerprint(items: Sequence[Mapping[str, Any]]) -> str:
    """A hash of a site's items: patient, label, image file name and size (a copied site has the same)."""
    import hashlib

    def key(item: Mapping[str, Any]) -> str:
        images = item.get("image")
        paths = images if isinstance(images, list | tuple) else [images]
        files = [(Path(p).name, Path(p).stat().st_size if p and Path(p).is_file() else -1) for p in paths if p]
        return json.dumps([str(item.get("patient_id")), str(item.get("label")), files])

    return hashlib.sha256("\n".join(sorted(key(item) for item in items)).encode()).hexdigest()


def duplicate_warnings(fingerprints: Mapping[str, str]) -> list[str]:
    """Warnings for sites whose data is identical (the same :func:`fingerprint`)."""
    seen: dict[str, str] = {}
    out = []
    for name, value in fingerprints.items():
        if value in seen:
            out.append(
                f"sites {seen[value]} and {name} have identical data (same patients, labels and files): "
                "a held-out site is not unseen, and the averaged gains count it twice"
            )
        else:
            seen[value] = name
    return out


def federation_meta(fed: Federation, role: str, extra: Mapping[str, Any]) -> dict[str, Any]:
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
    personalized: bool = True,
    trained_on: Sequence[str] | None = None,
) -> None:
    """The best global model to ``path``; under the ``local`` BN policy also each site's personalized
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
    for name, state in server.site_models().items() if personalized and fed.config.bn_policy == "local" else ():
        model.load_state_dict(state)
        save_checkpoint(path.with_name(f"{path.stem}_{name}.pt"), model, federation_meta(fed, f"{role}:{name}", extra))
    model.load_state_dict(server.best_state if server.best_state is not None else server.state)
    save_checkpoint(path, model, federation_meta(fed, role, extra))


def write_rounds(out: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """``OUT/rounds.csv``: each site's validation of the global model after every round."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    write_csv(out / "rounds.csv", list(history), columns)
