"""``medimg saliency audit PIPELINE DATA``: a 2-D pipeline's data and models handed to :mod:`saliency.audit`.

This module is the only place where the generic audit meets a task: it loads the pipeline's
dataset with the pipeline's own inference transforms (exactly what the model sees), turns RSNA
boxes into masks on the network grid with the paper's rule (spec ``saliency.md`` §2.1), loads the
checkpoints and, with ``train_replicas``, trains the missing replicate (same architecture, another
seed) and second-architecture model with the pipeline's own training.

Images audited: the items with ground-truth boxes (the positives, as in the paper) when the
dataset has boxes, otherwise every item (no localisation criterion then); at most ``max_images``,
in the dataset's sorted order. The average-mask prior is leave-one-out over the audited images
(image i's prior is the mean of the other images' masks) unless ``prior_data`` names a folder whose
boxes make it (the paper used the training and validation masks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.base import DatasetError, Pipeline

__all__ = ["OTHER_ARCHITECTURE", "audit_pipeline", "load_audit_data"]

#: Second architecture trained for reproducibility when none is given (a ResNet for DenseNets and v.v.).
OTHER_ARCHITECTURE = {"compact": "resnet-compact", "densenet121": "resnet18", "resnet18": "densenet121"}


def _source_shape(path: str) -> tuple[int, int]:
    import pydicom

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
    prior_data: str | os.PathLike[str] | None = None,
) -> Any:
    """The :class:`saliency.audit.AuditData` of a 2-D pipeline's dataset folder (see the module docstring).

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
    size = preprocessing["image_size"]
    masks = _masks(chosen, size) if with_boxes else None
    prior, prior_source = None, "leave-one-out mean of the audited images' masks"
    if prior_data is not None and masks is not None:
        prior_items = [item for item in pipeline.load_dataset(prior_data) if item.get("boxes")]
        if not prior_items:
            raise DatasetError(f"{prior_data}: no boxes to build the average-mask prior from")
        prior = _masks(prior_items, size).mean(axis=0).astype(np.float32)
        prior_source = f"mean of {len(prior_items)} masks of {prior_data}"
    return AuditData(
        ids=[str(item.get("patient_id", Path(item["image"]).stem)) for item in chosen],
        images=images,
        masks=masks,
        labels=np.asarray([int(item["label"]) for item in chosen]),
        prior=prior,
        prior_source=prior_source if masks is not None else "",
        to_display=lambda a: np.asarray(a).T,
        description=f"{pipeline.name} {'positives with boxes' if with_boxes else 'images'} from {data_dir}",
    )


def _localizer_training_set(
    pipeline: Pipeline, data_dir: str | os.PathLike[str], preprocessing: dict[str, Any], exclude: set[str]
) -> tuple[Any, np.ndarray]:
    """Images and box masks (empty for negatives) of a training folder, minus the audited patients."""
    import torch

    items = [i for i in pipeline.load_dataset(data_dir) if str(i.get("patient_id")) not in exclude]
    if not any(i.get("boxes") for i in items):
        raise DatasetError(f"{data_dir}: no boxes to train the supervised localiser on")
    transform = pipeline.transforms(preprocessing, train=False)
    images = torch.stack([torch.as_tensor(pipeline.load(item, transform)).float() for item in items])
    return images, _masks(items, preprocessing["image_size"])


def localizer_baseline(
    pipeline: Pipeline,
    data: Any,
    preprocessing: dict[str, Any],
    out: Path,
    *,
    localizers: Sequence[str | os.PathLike[str]] = (),
    train_data: str | os.PathLike[str] | None = None,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Maps of the "fully supervised" localiser(s) on the audited images: ``(maps, replica maps, source)``.

    ``localizers`` are saved localisers (:func:`saliency.localizer.save_localizer`); with
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
    """Train one model with the trained model's own settings (another seed or architecture); best.pt path."""
    from pipelines.training import train_pipeline

    training = meta.get("training", {})
    train_pipeline(
        pipeline,
        train_data,
        run_dir,
        architecture=architecture,
        image_size=tuple(meta["preprocessing"]["image_size"]),
        epochs=int(training.get("epochs", 20)),
        batch_size=int(training.get("batch_size", 16)),
        lr=float(training.get("lr", 1e-3)),
        seed=seed,
        note=f"trained by the saliency audit ({architecture}, seed {seed})",
        quiet=quiet,
    )
    return run_dir / "best.pt"


def _layer(model: Any, architecture: str) -> str:
    """The Grad-CAM layer: the model's own (a gated model names it) or the architecture's."""
    from medimg.models import gradcam_layer

    return str(getattr(model, "gradcam_layer", None) or gradcam_layer(architecture))


def audit_pipeline(
    pipeline_name: str,
    data_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    replica: str | os.PathLike[str] | None = None,
    other_arch: str | os.PathLike[str] | None = None,
    train_replicas: bool = False,
    train_data: str | os.PathLike[str] | None = None,
    prior_data: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = (),
    criteria: Sequence[str] = (),
    preset: str = "paper",
    data_range: float = 1.0,
    max_images: int | None = 100,
    seed: int = 0,
    batch_size: int = 32,
    localizers: Sequence[str | os.PathLike[str]] = (),
    train_localizer: bool = False,
    localizer_epochs: int = 30,
    variants: Mapping[str, str | os.PathLike[str]] | None = None,
    progress: bool = True,
) -> Any:
    """Audit the saliency maps of a 2-D pipeline's model on ``data_dir``; returns the ``AuditResult``.

    ``localizers`` / ``train_localizer`` add the supervised-localiser baseline (see
    :func:`localizer_baseline`); ``variants`` maps a label to another checkpoint of the pipeline
    (e.g. attention models trained with 0%, 10% and 100% box supervision) whose maps (attention
    when gated, else Grad-CAM) are scored for localisation on the same images.

    Raises:
        DatasetError: bad data folder; ValueError: a 3-D pipeline, or models whose preprocessing differs.
        medimg.models.CheckpointError: unreadable or foreign weights.
    """
    import torch

    from medimg.models import build_network, load_checkpoint
    from pipelines import get_pipeline
    from saliency.audit import CRITERIA, AuditConfig, AuditModel, run_audit

    pipeline = get_pipeline(pipeline_name)
    if pipeline.unit != "image":
        raise ValueError(f"the saliency audit explains 2-D classifiers; {pipeline_name!r} is a segmentation pipeline")
    out = Path(out)
    model, meta = load_checkpoint(weights, pipeline=pipeline.name)
    data = load_audit_data(pipeline, data_dir, meta["preprocessing"], max_images=max_images, prior_data=prior_data)
    arch = meta["architecture"]
    models = [AuditModel("trained", model.eval(), arch, _layer(model, arch), str(weights))]
    torch.manual_seed(seed)
    untrained = build_network(arch, **meta["network"]).eval()
    models.append(
        AuditModel("untrained", untrained, arch, _layer(untrained, arch), f"random initialisation, seed {seed}")
    )

    source = Path(train_data) if train_data else Path(meta.get("training", {}).get("data", data_dir))
    if train_replicas and not source.is_dir():
        raise DatasetError(f"{source}: the training data folder does not exist (pass --train-data)")
    if replica is None and train_replicas:
        replica = _train_missing(
            pipeline, meta, source, out / "replicas" / "replica", architecture=arch, seed=seed + 1, quiet=not progress
        )
    if other_arch is None and train_replicas:
        other = OTHER_ARCHITECTURE.get(arch, "resnet-compact")
        other_arch = _train_missing(
            pipeline, meta, source, out / "replicas" / other, architecture=other, seed=seed, quiet=not progress
        )
    for role, path in (("replica", replica), ("other", other_arch)):
        if path is None:
            continue
        net, other_meta = load_checkpoint(path, pipeline=pipeline.name)
        if other_meta["preprocessing"] != meta["preprocessing"]:
            raise ValueError(
                f"{path}: its preprocessing {other_meta['preprocessing']} differs from {weights}'s "
                f"{meta['preprocessing']}; maps must be compared on the same input grid"
            )
        if role == "replica" and other_meta["architecture"] != arch:
            raise ValueError(
                f"{path}: a replicate must have the architecture {arch!r}, not {other_meta['architecture']!r}"
            )
        models.append(
            AuditModel(role, net.eval(), other_meta["architecture"], _layer(net, other_meta["architecture"]), str(path))
        )
    for label, path in (variants or {}).items():
        net, variant_meta = load_checkpoint(path, pipeline=pipeline.name)
        if variant_meta["preprocessing"] != meta["preprocessing"]:
            raise ValueError(f"{path}: its preprocessing differs from {weights}'s; maps must share the input grid")
        models.append(
            AuditModel(f"variant:{label}", net.eval(), variant_meta["architecture"], _layer(net, arch), str(path))
        )
    if localizers or train_localizer:
        data.localizer, data.localizer_replica, located = localizer_baseline(
            pipeline,
            data,
            meta["preprocessing"],
            out,
            localizers=localizers,
            train_data=source if train_localizer else None,
            epochs=localizer_epochs,
            seed=seed,
            progress=progress,
        )
        data.description += f"; supervised localiser: {located}"
    config = AuditConfig(
        methods=tuple(methods),
        criteria=tuple(criteria) or CRITERIA,
        preset=preset,
        data_range=data_range,
        seed=seed,
        batch_size=batch_size,
    )
    return run_audit(
        data,
        models,
        config,
        out,
        title=f"Saliency trust audit: {pipeline.name} ({arch})",
        progress=progress,
        extra_settings={"pipeline": pipeline.name, "data_dir": str(data_dir), "weights": str(weights)},
    )
