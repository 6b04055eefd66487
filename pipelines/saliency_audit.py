"""``medimg saliency audit PIPELINE DATA``: a 2-D pipeline's data and models handed to :mod:`saliency.audit`.

This module is the only place where the generic audit meets a task: it loads the pipeline's
dataset with the pipeline's own inference transforms (exactly what the model sees), turns RSNA
boxes into masks on the network grid with the paper's rule (``int(c / 1023 * 320)`` for RSNA's
1024-pixel boxes, inclusive ends), loads the checkpoints and, with ``train_replicas``, trains the
missing replicates (same architecture, other seeds) and the second-architecture model with the
pipeline's own training.

Images audited: the items with ground-truth boxes (the positives, as in the paper) when the
dataset has boxes, otherwise every item (no localization criterion then); at most ``max_images``,
in the dataset's sorted order. The average-mask prior is, as in the paper, the mean of the training
and validation masks (:func:`training_prior`: the folder the model was trained on, its own test
split and the audited patients left out); ``prior="leave-one-out"`` uses the audited images instead
(image i's prior is the mean of the other images' masks), and so does an audit whose training
folder is not at hand, with a note in the report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.base import DatasetError, Pipeline

if TYPE_CHECKING:
    import torch

    from saliency.audit import AuditConfig, AuditData, AuditModel, AuditResult

__all__ = ["OTHER_ARCHITECTURE", "audit_pipeline", "load_audit_data", "localizer_baseline", "training_prior"]

#: Second architecture trained for reproducibility when none is named: the paper's pair (DenseNet121 and
#: InceptionV3) for those two, a compact ResNet and DenseNet for each other.
OTHER_ARCHITECTURE = {
    "densenet121": "inception_v3",
    "inception_v3": "densenet121",
    "compact": "resnet-compact",
    "resnet-compact": "compact",
    "resnet18": "densenet121",
}
LEAVE_ONE_OUT = "leave-one-out mean of the audited images' masks"


def _source_shape(path: str) -> tuple[int, int]:
    import pydicom

    from medimg.pictures import is_picture, picture_shape

    if is_picture(path):  # a PNG/JPEG dataset (NIH ChestX-ray14, CheXpert)
        return picture_shape(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
    return int(ds.Rows), int(ds.Columns)


def _masks(items: Sequence[dict[str, Any]], size_xy: Sequence[int]) -> np.ndarray:
    """Boxes (x, y, w, h in source pixels) -> (N, X, Y) bool masks on the network grid."""
    from saliency.criteria import boxes_to_mask

    nx, ny = int(size_xy[0]), int(size_xy[1])
    out = np.zeros((len(items), nx, ny), dtype=bool)
    for i, item in enumerate(items):
        mask = boxes_to_mask(item["boxes"], (ny, nx), source_shape=_source_shape(item["image"]))  # (rows, cols)
        out[i] = mask.T  # network grid (X = columns, Y = rows)
    return out


def load_audit_data(
    pipeline: Pipeline,
    data_dir: str | os.PathLike[str],
    preprocessing: dict[str, Any],
    *,
    max_images: int | None = None,
) -> AuditData:
    """The :class:`saliency.audit.AuditData` of a 2-D pipeline's dataset folder (see the module docstring).

    The prior is left to :func:`training_prior` (None here: leave-one-out over the audited images).

    Raises:
        DatasetError: the folder does not have the pipeline's layout, or has no images.
    """
    import torch

    from saliency.audit import AuditData

    items = pipeline.load_dataset(data_dir)
    with_boxes = [item for item in items if item.get("boxes")]
    chosen = with_boxes or items
    if max_images:
        chosen = chosen[: int(max_images)]
    if not chosen:
        raise DatasetError(f"{data_dir}: no images to audit")
    transform = pipeline.transforms(preprocessing, train=False)
    images = torch.stack([torch.as_tensor(pipeline.load(item, transform)).float() for item in chosen])
    masks = _masks(chosen, preprocessing["image_size"]) if with_boxes else None
    return AuditData(
        ids=[_patient(item) for item in chosen],
        images=images,
        masks=masks,
        labels=np.asarray([int(item["label"]) for item in chosen]),
        prior=None,
        prior_source=LEAVE_ONE_OUT if masks is not None else "",
        to_display=lambda a: np.asarray(a).T,
        description=f"{pipeline.name} {'positives with boxes' if with_boxes else 'images'} from {data_dir}",
    )


def _patient(item: Mapping[str, Any]) -> str:
    return str(item.get("patient_id", Path(item["image"]).stem))


def training_prior(
    pipeline: Pipeline, folder: str | os.PathLike[str], preprocessing: dict[str, Any], exclude: set[str]
) -> tuple[np.ndarray, str]:
    """The average-mask prior of a training folder: the mean of its training + validation masks.

    Items of the dataset's own test split and the audited patients (``exclude``) are left out.

    Raises:
        DatasetError: the folder is not a dataset of the pipeline, or has no boxes left.
    """
    from pipelines.base import is_held_out_test

    items = [
        item
        for item in pipeline.load_dataset(folder)
        if item.get("boxes") and not is_held_out_test(item) and _patient(item) not in exclude
    ]
    if not items:
        raise DatasetError(f"{folder}: no training or validation boxes to build the average-mask prior from")
    prior = _masks(items, preprocessing["image_size"]).mean(axis=0).astype(np.float32)
    return prior, f"mean of {len(items)} training + validation masks of {folder} (audited patients excluded)"


def _resolve_prior(
    pipeline: Pipeline,
    data: AuditData,
    preprocessing: dict[str, Any],
    prior: str,
    folder: Path | None,
) -> list[str]:
    """Set ``data.prior`` as asked; returns notes (a substitution the report must state)."""
    if data.masks is None or prior == "leave-one-out":
        return []
    if folder is None or not folder.is_dir():
        return [
            f"Average-mask prior: the training folder ({folder or 'not recorded in the weights'}) is not here, so the "
            "prior is the leave-one-out mean of the audited images' masks, not the training + validation masks the "
            "paper used (pass --prior-data or --train-data)."
        ]
    try:
        data.prior, data.prior_source = training_prior(pipeline, folder, preprocessing, set(data.ids))
    except DatasetError as exc:
        return [f"Average-mask prior: {exc}; the prior is the leave-one-out mean of the audited images' masks."]
    return []


def _localizer_training_set(
    pipeline: Pipeline, data_dir: str | os.PathLike[str], preprocessing: dict[str, Any], exclude: set[str]
) -> tuple[torch.Tensor, np.ndarray]:
    """Images and box masks (empty for negatives) of a training folder, minus the audited patients."""
    import torch

    items = [i for i in pipeline.load_dataset(data_dir) if str(i.get("patient_id")) not in exclude]
    if not any(i.get("boxes") for i in items):
        raise DatasetError(f"{data_dir}: no boxes to train the supervised localizer on")
    transform = pipeline.transforms(preprocessing, train=False)
    images = torch.stack([torch.as_tensor(pipeline.load(item, transform)).float() for item in items])
    return images, _masks(items, preprocessing["image_size"])


def localizer_baseline(
    pipeline: Pipeline,
    data: AuditData,
    preprocessing: dict[str, Any],
    out: Path,
    *,
    localizers: Sequence[str | os.PathLike[str]] = (),
    train_data: str | os.PathLike[str] | None = None,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Maps of the "fully supervised" localizer(s) on the audited images: ``(maps, replica maps, source)``.

    ``localizers`` are saved localizers (:func:`saliency.localizer.save_localizer`); with
    ``train_data`` the missing ones (up to two: seeds ``seed`` and ``seed + 1``) are trained on that
    folder's boxes, never on the audited patients, and saved under ``OUT/localizers/`` (a rerun
    reuses them).
    """
    from saliency.localizer import LocalizerConfig, load_localizer, localizer_maps, save_localizer, train_localizer

    models = [load_localizer(path)[0] for path in localizers][:2]
    sources = [str(path) for path in localizers][:2]
    if train_data is not None and len(models) < 2:
        training = None
        for index in range(len(models), 2):
            path = out / "localizers" / f"localizer_seed{seed + index}.pt"
            if not path.is_file():
                if training is None:
                    training = _localizer_training_set(pipeline, train_data, preprocessing, set(data.ids))
                config = LocalizerConfig(epochs=epochs, seed=seed + index)
                model, _ = train_localizer(training[0], training[1], config, progress=progress)
                save_localizer(path, model, {"pipeline": pipeline.name, "data": str(train_data)})
            models.append(load_localizer(path)[0])
            sources.append(str(path))
    if not models:
        return None, None, ""
    maps = [localizer_maps(m, data.images) for m in models]
    return maps[0], (maps[1] if len(maps) > 1 else None), ", ".join(sources)


def _train_missing(
    pipeline: Pipeline,
    meta: dict[str, Any],
    train_data: str | os.PathLike[str],
    run_dir: Path,
    *,
    architecture: str,
    seed: int,
    quiet: bool,
) -> Path:
    """Train one model with the trained model's own settings (another seed or architecture).

    Returns ``best.pt``, or ``last.pt`` when no epoch had a finite validation metric (e.g. a
    validation split of one class: then no epoch can be preferred).
    """
    from pipelines.training import TrainPipelineConfig, train_pipeline

    training = meta.get("training", {})
    config = TrainPipelineConfig(
        architecture=architecture,
        image_size=tuple(meta["preprocessing"]["image_size"]),
        epochs=int(training.get("epochs", 20)),
        batch_size=int(training.get("batch_size", 16)),
        lr=float(training.get("lr", 1e-3)),
        seed=seed,
        note=f"trained by the saliency audit ({architecture}, seed {seed})",
        quiet=quiet,
    )
    result = train_pipeline(pipeline, train_data, run_dir, config)
    return Path(result.best_checkpoint or result.last_checkpoint)


def _layer(model: torch.nn.Module, meta: Mapping[str, Any]) -> str | None:
    """The Grad-CAM layer: the model's own (a gated model names it), else its meta's (a bundle's or card's
    ``gradcam_layer``) or its architecture's; None when none is known."""
    from medimg.models import model_gradcam_layer

    return getattr(model, "gradcam_layer", None) or model_gradcam_layer(meta)


def _load_models(
    pipeline: Pipeline,
    weights: str | os.PathLike[str],
    meta: dict[str, Any],
    roles: Sequence[tuple[str, str | os.PathLike[str]]],
) -> list[AuditModel]:
    """AuditModels of the replicates, the other architecture and the variants; checks that they share the grid."""
    from medimg.models import load_checkpoint
    from saliency.audit import AuditModel

    arch = meta["architecture"]
    models = []
    for role, path in roles:
        net, other_meta = load_checkpoint(path, pipeline=pipeline.name)
        if other_meta["preprocessing"] != meta["preprocessing"]:
            raise ValueError(
                f"{path}: its preprocessing {other_meta['preprocessing']} differs from {weights}'s "
                f"{meta['preprocessing']}; maps must be compared on the same input grid"
            )
        if role.startswith("replica") and other_meta["architecture"] != arch:
            raise ValueError(
                f"{path}: a replicate must have the architecture {arch!r}, not {other_meta['architecture']!r}"
            )
        net_arch = other_meta["architecture"]
        layer = _layer(net, meta if role.startswith("variant:") else other_meta)
        models.append(AuditModel(role, net.eval(), net_arch, layer, str(path)))
    return models


def _missing_models(
    pipeline: Pipeline,
    meta: dict[str, Any],
    out: Path,
    source: Path | None,
    *,
    replicas: list[Path],
    other_arch: Path | None,
    other_architecture: str | None,
    wanted: int,
    seed: int,
    quiet: bool,
) -> tuple[list[Path], Path | None]:
    """Train the replicates (seeds ``seed + 1``, ...) up to ``wanted`` models in all, and the other architecture."""
    if source is None or not source.is_dir():
        raise DatasetError(f"{source or 'the weights record no training folder'}: no training data to train the "
                           "missing models on (pass --train-data)")  # fmt: skip
    arch = meta["architecture"]
    replicas = list(replicas)
    for index in range(len(replicas) + 1, wanted):
        run = out / "replicas" / f"replica{index}"
        replicas.append(_train_missing(pipeline, meta, source, run, architecture=arch, seed=seed + index, quiet=quiet))
    if other_arch is None:
        other = other_architecture or OTHER_ARCHITECTURE.get(arch, "resnet-compact")
        other_arch = _train_missing(pipeline, meta, source, out / "replicas" / other, architecture=other, seed=seed,
                                    quiet=quiet)  # fmt: skip
    return replicas, other_arch


def _check_request(pipeline: Pipeline, name: str, preset: str, prior: str) -> None:
    """Refuse what cannot be audited before any model or image is loaded: a 3-D pipeline, an unknown preset or prior."""
    from saliency.protocol import get_protocol

    if pipeline.unit != "image":
        raise ValueError(f"the saliency audit explains 2-D classifiers; {name!r} is a segmentation pipeline")
    get_protocol(preset)  # an unknown preset fails here
    if prior not in ("training", "leave-one-out"):
        raise ValueError(f"unknown prior {prior!r}; choose 'training' or 'leave-one-out'")


def _training_folder(meta: Mapping[str, Any], train_data: str | os.PathLike[str] | None) -> Path | None:
    """``train_data``, else the folder the weights record they were trained on (never the audited folder)."""
    recorded = train_data or meta.get("training", {}).get("data")
    return Path(recorded) if recorded else None


def _untrained(model: torch.nn.Module, meta: Mapping[str, Any], seed: int) -> tuple[torch.nn.Module | None, str]:
    """The model's architecture randomly initialized with ``seed``, and how it was made.

    A medimg architecture is built afresh; a foreign model (bundle, TorchScript, ``torch.export``)
    is copied and every layer re-initialized in place (:func:`saliency.randomization.reinitialize`),
    or None with the reason when some layer cannot be."""
    import torch

    from medimg.models import ARCHITECTURES, build_network
    from saliency.randomization import copy_model, reinitialize, stage_generator, unsupported_modules

    arch = meta["architecture"]
    if arch in ARCHITECTURES and arch != "monai":
        torch.manual_seed(seed)
        return build_network(arch, **meta["network"]).eval(), f"random initialization, seed {seed}"
    bad = unsupported_modules(model, [("all", [""])])
    if bad:
        return None, f"layer {bad[0]!r} cannot be re-initialized in place"
    untrained = copy_model(model)
    reinitialize(untrained, stage_generator(seed, 0))
    return untrained.eval(), f"every layer of a copy re-initialized in place, seed {seed}"


def _reference_models(
    model: torch.nn.Module, meta: Mapping[str, Any], weights: str | os.PathLike[str], seed: int
) -> tuple[list[AuditModel], list[str]]:
    """The ``trained`` model and its ``untrained`` twin (its architecture, randomly initialized with
    ``seed``; left out, with a note, when the model cannot be re-initialized)."""
    from saliency.audit import AuditModel
    from saliency.support import model_label

    arch = meta["architecture"]
    models = [AuditModel("trained", model.eval(), arch, _layer(model, meta), str(weights))]
    untrained, how = _untrained(model, meta, seed)
    if untrained is None:
        return models, [f"{model_label(meta)}: no untrained model for the localization reference: {how}."]
    return [*models, AuditModel("untrained", untrained, arch, _layer(untrained, meta), how)], []


def _supported(
    config: AuditConfig, model: torch.nn.Module, meta: Mapping[str, Any], example: torch.Tensor
) -> tuple[AuditConfig, list[str]]:
    """``config`` without the methods and criteria the model cannot support, and a note for each one left out.

    Raises:
        ValueError: none of the requested methods can run on this model.
    """
    from dataclasses import replace

    from saliency.methods import METHODS
    from saliency.support import method_support, model_label, randomization_problem
    from saliency.verdicts import method_label

    label, notes = model_label(meta), []
    reasons = method_support(model, _layer(model, meta), example)
    wanted = list(config.methods or METHODS)
    skipped = [m for m in wanted if m in reasons]
    if skipped:
        kept = [m for m in wanted if m not in reasons]
        if not kept:
            raise ValueError(f"none of the methods {', '.join(wanted)} can run on this {label}: {reasons[skipped[0]]}")
        for reason in dict.fromkeys(reasons[m] for m in skipped):
            names = ", ".join(method_label(m) for m in skipped if reasons[m] == reason)
            notes.append(f"{label}: {names} not supported: {reason}.")
        config = replace(config, methods=tuple(kept))
    if "randomization" in config.criteria:
        problem = randomization_problem(model, include_stem=config.include_stem)
        if problem:
            config = replace(config, criteria=tuple(c for c in config.criteria if c != "randomization"))
            notes.append(f"{label}: Randomization skipped: {problem}.")
    return config, notes


def _refuse_training_foreign(meta: Mapping[str, Any], weights: str | os.PathLike[str]) -> None:
    """``--train-replicas`` trains the audited architecture again: only a medimg architecture can be.

    Raises:
        ValueError: the model is a bundle, TorchScript or ``torch.export`` model.
    """
    from medimg.models import ARCHITECTURES
    from saliency.support import model_label

    if meta["architecture"] not in ARCHITECTURES or meta["architecture"] == "monai":
        raise ValueError(
            f"{weights}: --train-replicas trains more models of the audited architecture, which medimg cannot do "
            f"for a {model_label(meta)}; pass the replicates and the other architecture as medimg checkpoints "
            "(--replica, --other-arch)"
        )


def _comparison_models(
    pipeline: Pipeline,
    weights: str | os.PathLike[str],
    meta: dict[str, Any],
    out: Path,
    source: Path | None,
    *,
    replicas: Sequence[str | os.PathLike[str]],
    other_arch: str | os.PathLike[str] | None,
    other_architecture: str | None,
    variants: Mapping[str, str | os.PathLike[str]] | None,
    train_replicas: bool,
    wanted: int,
    seed: int,
    quiet: bool,
) -> list[AuditModel]:
    """The replicates (``replica1`` ...), the other architecture and the variants; with ``train_replicas``
    the missing replicates (up to ``wanted`` models in all) and the other architecture are trained first."""
    replica_paths = [Path(p) for p in replicas]
    other_path = Path(other_arch) if other_arch else None
    if train_replicas:
        replica_paths, other_path = _missing_models(
            pipeline, meta, out, source, replicas=replica_paths, other_arch=other_path,
            other_architecture=other_architecture, wanted=wanted, seed=seed, quiet=quiet,
        )  # fmt: skip
    roles: list[tuple[str, str | os.PathLike[str]]] = [(f"replica{i}", p) for i, p in enumerate(replica_paths, 1)]
    roles += [("other", other_path)] if other_path is not None else []
    roles += [(f"variant:{label}", path) for label, path in (variants or {}).items()]
    return _load_models(pipeline, weights, meta, roles)


def _add_localizer_baseline(
    pipeline: Pipeline,
    data: AuditData,
    preprocessing: dict[str, Any],
    out: Path,
    source: Path | None,
    *,
    localizers: Sequence[str | os.PathLike[str]],
    train: bool,
    epochs: int,
    seed: int,
    progress: bool,
) -> None:
    """Set ``data.localizer`` / ``data.localizer_replica`` (:func:`localizer_baseline`); ``train``: train the
    missing localizers on ``source``, the training folder."""
    if train and (source is None or not source.is_dir()):
        raise DatasetError(f"{source or 'the weights record no training folder'}: no training boxes for "
                           "--train-localizer (pass --train-data)")  # fmt: skip
    data.localizer, data.localizer_replica, located = localizer_baseline(
        pipeline, data, preprocessing, out, localizers=localizers, train_data=source if train else None,
        epochs=epochs, seed=seed, progress=progress,
    )  # fmt: skip
    data.description += f"; supervised localizer: {located}"


def audit_pipeline(
    pipeline_name: str,
    data_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    replicas: Sequence[str | os.PathLike[str]] = (),
    other_arch: str | os.PathLike[str] | None = None,
    other_architecture: str | None = None,
    train_replicas: bool = False,
    train_data: str | os.PathLike[str] | None = None,
    prior: str = "training",
    prior_data: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = (),
    criteria: Sequence[str] = (),
    preset: str = "paper",
    method_preset: str = "paper",
    include_stem: bool = False,
    max_images: int | None = 100,
    seed: int = 0,
    batch_size: int = 32,
    localizers: Sequence[str | os.PathLike[str]] = (),
    train_localizer: bool = False,
    localizer_epochs: int = 30,
    variants: Mapping[str, str | os.PathLike[str]] | None = None,
    progress: bool = True,
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
    ray: str | None = None,
) -> AuditResult:
    """Audit the saliency maps of a 2-D pipeline's model on ``data_dir``; returns the ``AuditResult``.

    ``preset`` is the protocol (:mod:`saliency.protocol`: ``paper`` or ``calibrated``),
    ``method_preset`` the methods' settings (``paper`` or ``captum``). ``replicas`` are further
    models of the same architecture (``replica1``, ``replica2``, ...; the presets use three models
    in all); ``train_replicas`` trains the missing ones and the other architecture
    (``other_architecture``, default :data:`OTHER_ARCHITECTURE`). ``prior="training"`` makes the
    average-mask prior from ``prior_data`` (or ``train_data``, or the folder the weights were
    trained on): its training + validation masks; ``"leave-one-out"`` from the audited images.
    ``localizers`` / ``train_localizer`` add the supervised-localizer baseline (see
    :func:`localizer_baseline`); ``variants`` maps a label to another checkpoint of the pipeline
    (e.g. attention models trained with 0%, 10% and 100% box supervision) whose maps (attention
    when gated, else Grad-CAM) are scored for localization on the same images.

    ``weights`` may be any model :func:`medimg.model_sources.load_model` reads (``trust_code``,
    ``card`` as there): a method or criterion the model cannot support (:mod:`saliency.support`,
    e.g. Grad-CAM on TorchScript) is left out with a note in the report. The replicates, the other
    architecture and the variants are medimg checkpoints. ``ray`` (``"auto"`` or ``HOST:PORT``)
    computes the maps on a Ray cluster (:mod:`pipelines.ray_maps`); the rest runs here.

    Raises:
        DatasetError: bad data folder; ValueError: a 3-D pipeline, models whose preprocessing differs,
            an unknown preset or prior.
        medimg.models.CheckpointError: unreadable or foreign weights.
    """
    from medimg.model_sources import load_model
    from pipelines import get_pipeline
    from saliency.audit import CRITERIA, AuditConfig, run_audit

    pipeline = get_pipeline(pipeline_name)
    _check_request(pipeline, pipeline_name, preset, prior)
    config = AuditConfig(
        methods=tuple(methods), criteria=tuple(criteria) or CRITERIA, preset=preset, method_preset=method_preset,
        include_stem=include_stem, seed=seed, batch_size=batch_size,
    )  # fmt: skip
    out = Path(out)
    model, meta = load_model(weights, pipeline=pipeline.name, trust_code=trust_code, card=card)
    if train_replicas:
        _refuse_training_foreign(meta, weights)
    data = load_audit_data(pipeline, data_dir, meta["preprocessing"], max_images=max_images)
    config, notes = _supported(config, model, meta, data.images[:1])
    source = _training_folder(meta, train_data)
    notes += _resolve_prior(pipeline, data, meta["preprocessing"], prior, Path(prior_data) if prior_data else source)
    models, untrained_notes = _reference_models(model, meta, weights, seed)
    notes += untrained_notes
    models += _comparison_models(
        pipeline, weights, meta, out, source, replicas=replicas, other_arch=other_arch,
        other_architecture=other_architecture, variants=variants, train_replicas=train_replicas,
        wanted=config.protocol.replicates, seed=seed, quiet=not progress,
    )  # fmt: skip
    if localizers or train_localizer:
        _add_localizer_baseline(
            pipeline, data, meta["preprocessing"], out, source, localizers=localizers, train=train_localizer,
            epochs=localizer_epochs, seed=seed, progress=progress,
        )  # fmt: skip
    title = f"Saliency trust audit: {pipeline.name} ({meta['architecture']})"
    settings: dict[str, Any] = {"pipeline": pipeline.name, "data_dir": str(data_dir), "weights": str(weights)}
    settings["model_source"] = meta.get("source")
    settings["ray"] = ray
    executor = None
    if ray is not None:
        from pipelines.ray_maps import ray_map_executor

        executor = ray_map_executor(ray)
    return run_audit(
        data, models, config, out, title=title, progress=progress, notes=notes, extra_settings=settings,
        map_executor=executor,
    )  # fmt: skip
