"""Train and evaluate a pipeline's classifier on a public dataset layout.

``train_pipeline``: read the layout (RSNA / VinDr-like), split by patient (seeded), build the
MONAI transforms (decoded images cached on disk with ``PersistentDataset``, so later epochs do
not decode DICOM again), and run :func:`medimg.training.train_classifier` with class weights.
The best checkpoint carries the pipeline's metadata (architecture, preprocessing, labels, data
summary) and, for binary tasks, the operating threshold chosen on the validation split
(Youden's J).

``evaluate_pipeline``: predict every image of a dataset with a model (any kind
:func:`medimg.model_sources.load_model` reads) and write
``metrics.json`` (point estimates with bootstrap 95% intervals), ``predictions.csv`` and
``report.html`` (ROC/PR/calibration or confusion matrix).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.writers import write_csv, write_json
from pipelines.base import Pipeline, is_held_out_test, patient_split

if TYPE_CHECKING:
    from monai.data import Dataset

    from medimg.training import TrainResult

__all__ = ["TrainPipelineConfig", "evaluate_pipeline", "predict_items", "train_pipeline"]


def _dataset(items: list[dict], transform: Any, cache_dir: Path | None) -> Dataset:
    from monai.data import Dataset, PersistentDataset

    if cache_dir is None:
        return Dataset(items, transform)
    # Caches every deterministic transform before the first random one (load, scale, resize).
    return PersistentDataset(items, transform, cache_dir=cache_dir)


def _training_items(items: list[dict], supervised: set[str] | None = None) -> list[dict]:
    """Only what the transforms need: path and label (JSON-able, hashable for the cache); with
    ``supervised`` (box supervision) also the boxes and a 0/1 ``box_weight`` per image."""
    if supervised is None:
        return [{"image": item["image"], "label": int(item["label"])} for item in items]
    return [
        {
            "image": item["image"],
            "label": int(item["label"]),
            "boxes": [list(map(float, b)) for b in item.get("boxes") or []],
            "box_weight": float(item["patient_id"] in supervised),
        }
        for item in items
    ]


def site_dataset(
    pipeline: Pipeline,
    items: Sequence[Mapping[str, Any]],
    preprocessing: Mapping[str, Any],
    *,
    train: bool,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """A dataset of ``{"image", "label"}`` items through the pipeline's (training or inference)
    transforms; with ``cache_dir`` the deterministic transforms are cached on disk."""
    return _dataset(
        _training_items(list(items)),
        pipeline.transforms(dict(preprocessing), train=train),
        Path(cache_dir) if cache_dir is not None else None,
    )


#: Attention-gate training settings (``medimg train ... --attention``).
ATTENTION_DEFAULTS: dict[str, Any] = {
    "heads": 1,
    "activation": "softmax",  # measured: sigmoid maps localized worse (docs/results)
    "regularizer": "none",
    "regularizer_weight": 0.0,
    "box_fraction": 0.0,
    "box_weight": 1.0,
}


def box_supervised_patients(items: Sequence[Mapping[str, Any]], fraction: float, seed: int) -> set[str]:
    """The patients with boxes whose boxes supervise the attention map: a seeded ``fraction`` of them
    (rounded; at least one when ``fraction`` > 0), chosen by a hash of seed and patient ID."""
    with_boxes = sorted({str(item["patient_id"]) for item in items if item.get("boxes")})
    if fraction <= 0 or not with_boxes:
        return set()
    count = max(1, round(fraction * len(with_boxes)))
    key = lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()  # noqa: E731
    return set(sorted(with_boxes, key=key)[:count])


@dataclass(frozen=True)
class TrainPipelineConfig:
    """How :func:`train_pipeline` trains: one object that the CLI, the saliency audit and scripts
    fill in and pass on (``dataclasses.replace`` makes a variant).

    Attributes:
        architecture: network name of :func:`medimg.models.build_network` (``medimg train`` picks
            the pipeline's default when none is given).
        image_size: network input size, ``(W, H)`` for 2-D pipelines or the ROI ``(X, Y, Z)`` for
            brats; None: the architecture's default.
        epochs: training epochs (>= 1).
        batch_size: items per training batch (>= 1).
        lr: AdamW learning rate.
        seed: seed of the patient split, the initialization and the augmentation.
        val_fraction: fraction of patients in the validation split, in (0, 1).
        cache: cache the decoded images on disk (``run_dir/cache``) so later epochs skip decoding.
        resume: continue from ``run_dir/last.pt`` when it exists.
        num_workers: DataLoader worker processes (2-D pipelines).
        note: free text stored in the checkpoint (what the weights are valid for).
        loss: brats: ``dice`` (None means dice) or ``dicece``; 2-D pipelines ignore it.
        attention: wrap the classifier in the trainable attention gate of :mod:`saliency.attention`
            (keys of :data:`ATTENTION_DEFAULTS`: heads, activation, regularizer and its weight, the
            fraction of positive training images whose boxes supervise the map, and the box loss
            weight); None: no gate. The settings are recorded in the checkpoint.
        quiet: no progress bar.
    """

    architecture: str = "densenet121"
    image_size: tuple[int, ...] | None = None
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.2
    cache: bool = True
    resume: bool = True
    num_workers: int = 0
    note: str = ""
    loss: str | None = None
    attention: Mapping[str, Any] | None = None
    quiet: bool = False


def train_pipeline(
    pipeline: Pipeline,
    data_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    config: TrainPipelineConfig | None = None,
) -> TrainResult:
    """Train ``pipeline`` on ``data_dir``; checkpoints, metrics and plots go to ``run_dir``.

    Args:
        pipeline: the task; a ``study`` pipeline (brats) trains a segmenter, the others a classifier.
        data_dir: the dataset in the pipeline's public layout.
        run_dir: run folder (``best.pt``, ``last.pt``, ``metrics.csv``, ``learning_curve.png``).
        config: the training settings; None: the defaults of :class:`TrainPipelineConfig`.

    Returns:
        The :class:`medimg.training.TrainResult`.

    Raises:
        pipelines.base.DatasetError: the data folder does not have the pipeline's layout, or a
            split would be empty.
        ValueError: ``config.attention`` is set for a segmentation pipeline or has unknown keys.
    """
    config = config if config is not None else TrainPipelineConfig()
    if pipeline.unit == "study":  # 3-D segmentation (brats)
        return _train_segmentation(pipeline, data_dir, run_dir, config)
    from medimg.models import build_network
    from medimg.training import TrainConfig, train_classifier

    run_dir = Path(run_dir)
    train_items, val_items, held_out = _training_split(pipeline, data_dir, config.seed, config.val_fraction)
    class_counts, class_weights = _class_balance(pipeline.labels, train_items)
    preprocessing = pipeline.preprocessing(config.architecture, config.image_size)
    network: dict[str, Any] = {"spatial_dims": 2, "in_channels": 1, "out_channels": len(pipeline.labels)}
    gate, supervised = _attention_gate(config.attention, network, train_items, config.seed)
    meta = {
        "pipeline": pipeline.name,
        "architecture": config.architecture,
        "network": network,
        "labels": list(pipeline.labels),
        "preprocessing": preprocessing,
        "training": {
            "data": str(data_dir),
            "n_train": len(train_items),
            "n_val": len(val_items),
            "train_class_counts": class_counts,
            "class_weights": class_weights,
            "split": {
                "seed": config.seed,
                "val_fraction": config.val_fraction,
                "unit": "patient",
                "held_out_test": held_out,
            },
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "note": config.note,
            **({"attention": gate} if gate is not None else {}),
        },
    }
    cache_dir = run_dir / "cache" if config.cache else None
    train_ds, val_ds = _split_datasets(pipeline, preprocessing, train_items, val_items, supervised, cache_dir)
    model = build_network(config.architecture, **network)
    if gate is not None:
        model.configure_losses(
            regularizer=gate["regularizer"],
            regularizer_weight=float(gate["regularizer_weight"]),
            box_weight=float(gate["box_weight"]) if supervised else 0.0,
        )
    loop_config = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        num_workers=config.num_workers,
        class_weights=class_weights,
        monitor=pipeline.monitor,
    )
    result = train_classifier(
        model,
        train_ds,
        val_ds,
        config=loop_config,
        out_dir=run_dir,
        metric_fn=pipeline.metrics,
        checkpoint_meta=meta,
        resume=config.resume,
        quiet=config.quiet,
        extra_loss=model.auxiliary_loss if gate is not None else None,  # the gate's regularizer, box loss
    )
    from medimg.training import rank

    if rank() == 0:  # under torchrun only rank 0 writes
        _store_operating_threshold(pipeline, result, val_items, config.batch_size)
    return result


def _train_segmentation(
    pipeline: Pipeline, data_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str], config: TrainPipelineConfig
) -> Any:
    """3-D segmentation (brats): :func:`pipelines.brats_training.train_brats` with ``config``'s settings."""
    if config.attention is not None:
        raise ValueError(f"the attention gate wraps classifiers; {pipeline.name!r} is a segmentation pipeline")
    from pipelines.brats_training import train_brats

    return train_brats(
        pipeline,
        data_dir,
        run_dir,
        architecture=config.architecture,
        roi_size=config.image_size,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        val_fraction=config.val_fraction,
        cache=config.cache,
        resume=config.resume,
        note=config.note,
        loss=config.loss or "dice",
        quiet=config.quiet,
    )


def _split_datasets(
    pipeline: Pipeline,
    preprocessing: dict[str, Any],
    train_items: list[dict],
    val_items: list[dict],
    supervised: set[str] | None,
    cache_dir: Path | None,
) -> tuple[Any, Any]:
    """The training dataset (random transforms; box masks for the ``supervised`` patients) and the
    validation dataset (inference transforms), both cached in ``cache_dir`` when given."""
    train_ds = _dataset(
        _training_items(train_items, supervised),
        pipeline.transforms(preprocessing, train=True, box_masks=supervised is not None),
        cache_dir,
    )
    val_ds = _dataset(_training_items(val_items), pipeline.transforms(preprocessing, train=False), cache_dir)
    return train_ds, val_ds


def _class_balance(labels: Sequence[str], train_items: list[dict]) -> tuple[dict[str, int], list[float]]:
    """Training images per class name, and inverse-frequency class weights normalized to mean 1
    (absent classes get weight 0)."""
    counts = Counter(int(item["label"]) for item in train_items)
    n_classes = len(labels)
    raw = np.array([1.0 / counts[c] if counts[c] else 0.0 for c in range(n_classes)])
    return {labels[c]: counts[c] for c in range(n_classes)}, (raw * n_classes / raw.sum()).tolist()


def _training_split(
    pipeline: Pipeline, data_dir: str | os.PathLike[str], seed: int, val_fraction: float
) -> tuple[list[dict], list[dict], int]:
    """``(train_items, val_items, n_held_out)``: the dataset's own test split (e.g. VinDr-Mammo's)
    stays unseen (continual and federated evaluation measure on it); the rest is split by patient."""
    from pipelines.base import DatasetError

    items = pipeline.load_dataset(data_dir)
    held_out = sum(is_held_out_test(item) for item in items)
    items = [item for item in items if not is_held_out_test(item)]
    is_val = patient_split([item["patient_id"] for item in items], seed=seed, val_fraction=val_fraction)
    train_items = [item for item, v in zip(items, is_val, strict=True) if not v]
    val_items = [item for item, v in zip(items, is_val, strict=True) if v]
    if not train_items or not val_items:
        raise DatasetError(
            f"{data_dir}: {len(items)} image(s) outside the dataset's test split are too few for a training and a "
            "validation split"
        )
    return train_items, val_items, held_out


def _attention_gate(
    attention: Mapping[str, Any] | None, network: dict[str, Any], train_items: list[dict], seed: int
) -> tuple[dict[str, Any] | None, set[str] | None]:
    """The gate's settings (None without ``attention``) and the box-supervised patients (None when
    no box supervises the map); adds the attention wrapper to ``network``."""
    if attention is None:
        return None, None
    import saliency.attention  # noqa: F401  (registers the "attention" network wrapper)

    unknown = set(attention) - set(ATTENTION_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown attention setting(s) {sorted(unknown)}; known: {sorted(ATTENTION_DEFAULTS)}")
    gate = {**ATTENTION_DEFAULTS, **attention}
    network["wrapper"] = {"name": "attention", "heads": int(gate["heads"]), "activation": gate["activation"]}
    supervised = None
    if float(gate["box_fraction"]) > 0:
        supervised = box_supervised_patients(train_items, float(gate["box_fraction"]), seed)
        gate["box_supervised_images"] = len(supervised)
    return gate, supervised


def _store_operating_threshold(pipeline: Pipeline, result: Any, val_items: list[dict], batch_size: int) -> None:
    """Binary pipelines: the operating point for run/evaluate (Youden's J on the validation split),
    stored in the best checkpoint."""
    if len(pipeline.labels) != 2 or result.best_checkpoint is None or not Path(result.best_checkpoint).is_file():
        return
    from medimg.evaluation import youden_threshold
    from medimg.models import load_checkpoint, save_checkpoint

    best, best_meta = load_checkpoint(result.best_checkpoint, pipeline=pipeline.name)
    y, prob = predict_items(best, val_items, pipeline, best_meta["preprocessing"], batch_size=batch_size)
    best_meta["training"]["operating_threshold"] = float(youden_threshold(y, prob[:, 1]))
    save_checkpoint(result.best_checkpoint, best, best_meta)


def predict_items(
    model: Any, items: list[dict], pipeline: Pipeline, preprocessing: dict, *, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and softmax probabilities (N, K) of ``model`` on dataset items."""
    return predict_dataset(model, site_dataset(pipeline, items, preprocessing, train=False), batch_size=batch_size)


def predict_dataset(model: Any, dataset: Any, *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and softmax probabilities (N, K) of ``model`` on a dataset of ``{"image", "label"}`` items."""
    import torch
    from monai.data import DataLoader

    labels, probs = [], []
    with contextlib.suppress(NotImplementedError):  # a torch.export program refuses eval(); it is exported in eval
        model.eval()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size):
            image = batch["image"]
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
            probs.append(torch.softmax(model(image), dim=1).numpy())
            labels.append(np.asarray(batch["label"]))
    return np.concatenate(labels), np.concatenate(probs)


def evaluate_pipeline(
    pipeline: Pipeline,
    data_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 16,
    segmentation_metrics: tuple[str, ...] = ("legacy",),
    challenge: str = "mets",
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
    ray: str | None = None,
) -> dict[str, Any]:
    """Evaluate a model on every image of ``data_dir``; write metrics, predictions, report.

    ``weights`` is any model :func:`medimg.model_sources.load_model` reads (a medimg checkpoint,
    a MONAI bundle, a TorchScript or ``torch.export`` file with its card); ``trust_code`` and
    ``card`` are passed to it. ``segmentation_metrics`` (``legacy``, ``lesionwise``) and
    ``challenge`` (the lesion-wise regions) apply to the 3-D segmentation pipeline (brats) only.
    ``ray`` (``"auto"`` or a Ray cluster's ``HOST:PORT``; 2-D pipelines) computes the predictions on
    that cluster (:func:`pipelines.ray_runs.ray_predict`); the outputs are written here.

    Returns:
        The metrics dict written to ``metrics.json``.

    Raises:
        medimg.models.CheckpointError: the model cannot be loaded (the message names the file).
        ValueError: ``ray`` with a 3-D segmentation pipeline.
        pipelines.ray_runs.RayUnavailable: ``ray`` and Ray is not installed or the cluster cannot be reached.
    """
    from medimg.model_sources import load_model
    from medimg.report import Report
    from pipelines.model_info import add_model_source, model_record

    if pipeline.unit == "study":  # 3-D segmentation (brats)
        from pipelines.brats_training import evaluate_brats

        if ray is not None:
            raise ValueError(f"evaluate {pipeline.name} runs here only: a Ray cluster evaluates the 2-D pipelines")

        return evaluate_brats(
            pipeline,
            data_dir,
            weights,
            out,
            metric_sets=segmentation_metrics,
            challenge=challenge,
            trust_code=trust_code,
            card=card,
        )
    out = Path(out)
    model, meta = load_model(weights, pipeline=pipeline.name, trust_code=trust_code, card=card)
    items = pipeline.load_dataset(data_dir)
    if ray is None:
        y, prob = predict_items(model, items, pipeline, meta["preprocessing"], batch_size=batch_size)
    else:
        from pipelines.ray_runs import ray_predict

        y, prob = ray_predict(
            pipeline, items, meta["preprocessing"], weights=weights, card=card, trust_code=trust_code,
            batch_size=batch_size, address=ray,
        )  # fmt: skip
    threshold = meta.get("training", {}).get("operating_threshold")
    metrics = pipeline.evaluate(y, prob, seed=seed, threshold=threshold, n_boot=n_boot)
    metrics = {
        **metrics,
        "pipeline": pipeline.name,
        "data": str(data_dir),
        "n_images": len(items),
        "weights": model_record(weights, meta, card),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    rows = [
        {
            "image": item["image"],
            "patient_id": item["patient_id"],
            "label": pipeline.labels[int(label)],
            **{f"prob_{name}": float(p) for name, p in zip(pipeline.labels, probs, strict=True)},
        }
        for item, label, probs in zip(items, y, prob, strict=True)
    ]
    write_csv(out / "predictions.csv", rows, ["image", "patient_id", "label", *(f"prob_{n}" for n in pipeline.labels)])
    report = Report(f"medimg evaluate {pipeline.name}", subtitle=f"{len(items)} images from {data_dir}")
    report.text(f"Weights {weights} ({meta['architecture']}), sha256 {metrics['weights']['sha256'][:16]}...")
    add_model_source(report, meta)
    pipeline.add_evaluation_report(report, y, prob, metrics)
    report.write(out / "report.html")
    return metrics
