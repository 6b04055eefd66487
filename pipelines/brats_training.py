"""Train and evaluate the BraTS segmentation pipeline on the BraTS NIfTI layout.

Training: cases split by patient (seeded), the four sequences on the T1ce grid with their labels
as TC/WT/ET channels, per-channel non-zero z-scoring, decoded and normalized volumes cached with
MONAI ``PersistentDataset``, random patches (``RandCropByPosNegLabeld``: half centered on
tumour) with flips and intensity jitter, MONAI DiceLoss, validation on whole volumes with
gaussian-blended ``sliding_window_inference`` (:func:`medimg.training.train_segmenter`).

Evaluation: every case predicted on its source grid; Dice and 95th-percentile Hausdorff distance
(MONAI metrics, mm) per region; with an uncertainty method, the QU-BraTS score per region by
:mod:`uncertainty.qubrats`, the same scorer as ``medimg uncertainty score``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medimg.writers import write_csv, write_json
from pipelines.base import DatasetError, patient_split
from pipelines.brats import (
    REGION_CHANNELS,
    BratsPipeline,
    find_nifti_cases,
    labels_to_channels,
    load_case,
)

if TYPE_CHECKING:
    from medimg.training import TrainResult

__all__ = ["evaluate_brats", "train_brats"]


def _items(pipeline: BratsPipeline, data_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    cases, errors = find_nifti_cases(data_dir, naming=pipeline.naming)
    if errors:
        raise DatasetError("; ".join(str(e) for e in errors[:3]))
    items = []
    for case_id, roles in cases.items():
        if "seg" not in roles:
            raise DatasetError(f"{case_id}: no segmentation ({roles['t1ce'].parent}); training needs the _seg file")
        items.append(
            {
                "case_id": case_id,
                "patient_id": case_id,
                "seg": str(roles["seg"]),
                "sources": {s: str(roles[s]) for s in ("t1", "t1ce", "t2", "flair")},
            }
        )
    if not items:
        raise DatasetError(f"{data_dir}: no BraTS cases ({pipeline.naming} naming)")
    return items


def _load_transform(convention: str, channels: tuple[str, ...]) -> Any:
    """A MONAI map transform: case item -> {"image": (4, X, Y, Z), "label": (3, X, Y, Z)}."""
    from monai.data import MetaTensor
    from monai.transforms import MapTransform

    class LoadBratsCased(MapTransform):
        def __init__(self) -> None:
            super().__init__(keys=["image"])

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            import nibabel as nib

            image = load_case(data["case_id"], data["sources"], channels=channels)
            seg = np.asarray(nib.load(data["seg"]).dataobj)
            if tuple(seg.shape) != tuple(image.shape[1:]):
                raise DatasetError(
                    f"{data['case_id']}: segmentation shape {tuple(seg.shape)} != {tuple(image.shape[1:])}"
                )
            try:
                regions = labels_to_channels(np.asarray(seg), convention)
            except ValueError as exc:
                raise DatasetError(f"{data['case_id']}: {exc} ({data['seg']})") from exc
            label = MetaTensor(regions.astype(np.float32), affine=image.affine, meta=dict(image.meta))
            return {"image": image, "label": label, "case_id": data["case_id"]}

    return LoadBratsCased()


def _transforms(preprocessing: Mapping[str, Any], *, train: bool) -> Any:
    from monai.transforms import (
        Compose,
        EnsureTyped,
        NormalizeIntensityd,
        Orientationd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        Spacingd,
    )

    keys = ["image", "label"]
    load = _load_transform(preprocessing.get("labels", "brats2020"), tuple(preprocessing["channels"]))
    steps: list[Any] = [load, Orientationd(keys, axcodes="RAS")]
    if preprocessing.get("spacing"):
        steps.append(Spacingd(keys, pixdim=tuple(preprocessing["spacing"]), mode=("bilinear", "nearest")))
    steps.append(NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    if train:
        steps += [
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=tuple(preprocessing["roi_size"]),
                pos=1,
                neg=1,
                num_samples=2,
                allow_smaller=True,
            ),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
    steps.append(EnsureTyped(keys, track_meta=False))
    return Compose(steps)


def _dice_metrics(pred: Any, label: Any) -> dict[str, float]:
    from monai.metrics import compute_dice

    dice = compute_dice(pred, label, include_background=True, ignore_empty=False)[0]
    out = {f"dice_{r.lower()}": float(d) for r, d in zip(REGION_CHANNELS, dice, strict=True)}
    out["dice_mean"] = float(np.nanmean(list(out.values())))
    return out


def train_brats(
    pipeline: BratsPipeline,
    data_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    architecture: str = "segresnet",
    roi_size: tuple[int, ...] | None = None,
    spacing: tuple[float, ...] | None = None,
    epochs: int = 50,
    batch_size: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.2,
    cache: bool = True,
    resume: bool = True,
    note: str = "",
    loss: str = "dice",
    quiet: bool = False,
) -> TrainResult:
    """Train a BraTS segmenter; see the module docstring. ``loss``: ``dice`` (MONAI DiceLoss, as
    the BraTS bundle) or ``dicece`` (DiceLoss + per-channel BCE: learns thin regions such as the
    enhancing rim faster). Returns the ``TrainResult``."""
    from monai.data import Dataset, PersistentDataset

    from medimg.models import build_network
    from medimg.training import TrainConfig, train_segmenter

    run_dir = Path(run_dir)
    items = _items(pipeline, data_dir)
    is_val = patient_split([i["patient_id"] for i in items], seed=seed, val_fraction=val_fraction)
    train_items = [i for i, v in zip(items, is_val, strict=True) if not v]
    val_items = [i for i, v in zip(items, is_val, strict=True) if v] or train_items[-1:]
    if len(items) < 2:
        raise DatasetError(f"{data_dir}: {len(items)} case(s) are too few to train and validate")
    if val_items == train_items[-1:]:
        train_items = train_items[:-1]
    preprocessing = pipeline.preprocessing(architecture, roi_size)
    preprocessing["spacing"] = list(spacing) if spacing else None
    network = {"spatial_dims": 3, "in_channels": 4, "out_channels": len(REGION_CHANNELS)}
    meta = {
        "pipeline": pipeline.name,
        "architecture": architecture,
        "network": network,
        "labels": list(REGION_CHANNELS),
        "preprocessing": preprocessing,
        "training": {
            "data": str(data_dir),
            "n_train": len(train_items),
            "n_val": len(val_items),
            "split": {"seed": seed, "val_fraction": val_fraction, "unit": "patient"},
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "note": note,
            "loss": loss,
        },
    }

    def dataset(selected: list[dict], train: bool) -> Any:
        transform = _transforms(preprocessing, train=train)
        if cache:
            return PersistentDataset(selected, transform, cache_dir=run_dir / "cache")
        return Dataset(selected, transform)

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, monitor="dice_mean")
    model = build_network(architecture, **network)
    return train_segmenter(
        model,
        dataset(train_items, True),
        dataset(val_items, False),
        config=config,
        out_dir=run_dir,
        predict=pipeline._predictor(meta, "cpu"),
        metric_fn=_dice_metrics,
        checkpoint_meta=meta,
        loss=loss,
        resume=resume,
        quiet=quiet,
    )


def evaluate_brats(
    pipeline: BratsPipeline,
    data_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    metric_sets: tuple[str, ...] = ("legacy",),
    challenge: str = "mets",
    trust_code: bool = False,
    card: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Dice and HD95 per region over the cases of ``data_dir`` (+ QU-BraTS scores with uncertainty).

    ``metric_sets``: ``legacy`` (those Dice and HD95) and/or ``lesionwise`` (the BraTS lesion-wise
    columns of ``challenge``, :func:`pipelines.brats_evaluation.lesionwise_of_labels`).
    ``weights``: any model :func:`medimg.model_sources.load_model` reads (``trust_code`` and
    ``card`` are passed to it); the cases are read in its channel order and preprocessed as it says.
    Writes ``metrics.json`` (means, standard deviations and per-case values) and ``cases.csv``.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    from medimg.model_sources import load_model
    from pipelines.brats_evaluation import lesionwise_of_labels
    from pipelines.model_info import model_record
    from uncertainty.qubrats import score_case

    out = Path(out)
    model, meta = load_model(weights, pipeline=pipeline.name, trust_code=trust_code, card=card)
    convention = meta["preprocessing"].get("labels", "brats2020")
    rows = []
    for item in _items(pipeline, data_dir):
        import nibabel as nib

        case = load_case(item["case_id"], item["sources"], channels=tuple(meta["preprocessing"]["channels"]))
        truth = np.asarray(nib.load(item["seg"]).dataobj)
        (result,) = pipeline.infer(model, [case], [dict(item, source="nifti")], meta, device="cpu", timings={})
        labels = result.extras["labels"]
        row: dict[str, Any] = {"case_id": item["case_id"]}
        if "legacy" in metric_sets:
            pred_ch = torch.as_tensor(labels_to_channels(labels, convention)[None], dtype=torch.float32)
            true_ch = torch.as_tensor(labels_to_channels(truth, convention)[None], dtype=torch.float32)
            dice = _dice_metrics(pred_ch, true_ch)
            spacing = np.abs(np.linalg.svd(np.asarray(case.affine)[:3, :3], compute_uv=False))
            hd = compute_hausdorff_distance(
                pred_ch, true_ch, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
            )[0]
            for r, region in enumerate(REGION_CHANNELS):
                row[f"dice_{region.lower()}"] = dice[f"dice_{region.lower()}"]
                row[f"hd95_{region.lower()}"] = float(hd[r])
        if "lesionwise" in metric_sets:
            row.update(lesionwise_of_labels(truth, labels, np.asarray(case.affine), convention, challenge))
        if "uncertainty" in result.extras:
            maps = result.extras["uncertainty"]
            scored = score_case(
                labels,
                {"WT": maps["whole"], "TC": maps["core"], "ET": maps["enhance"]},
                truth,
                np.asarray(case[pipeline_reference_channel(meta)]) > 0,
                case_id=item["case_id"],
            )
            for region in scored.regions:
                row[f"qubrats_{region.region.lower()}"] = region.score
        rows.append(row)
    keys = [k for k in rows[0] if k != "case_id"]
    summary = {
        k: {"mean": float(np.nanmean([r[k] for r in rows])), "std": float(np.nanstd([r[k] for r in rows]))}
        for k in keys
    }
    metrics = {
        **{k: v["mean"] for k, v in summary.items()},
        "summary": summary,
        "cases": rows,
        "n_cases": len(rows),
        "uncertainty": pipeline.uncertainty,
        "weights": model_record(weights, meta, card),
        "data": str(data_dir),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    write_csv(out / "cases.csv", rows, ["case_id", *keys])
    return metrics


def pipeline_reference_channel(meta: Mapping[str, Any]) -> int:
    """Index of the T1 channel (brain mask = T1 > 0, as the QU-BraTS tooling does)."""
    channels = list(meta["preprocessing"].get("channels", ["t1ce", "t1", "t2", "flair"]))
    return channels.index("t1")
