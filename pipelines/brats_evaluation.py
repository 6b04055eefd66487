"""``medimg evaluate brats --predictions DIR --truth DIR``: score segmentation files without a model.

Predictions are paired with truths by BraTS case ID (``00132-000`` in ``BraTS-MET-00132-000-seg``,
``SEG-00217-000``, ``BraTS-MET_01325-000``...). Each pair gives one row of ``cases.csv``: the
official lesion-wise columns (:mod:`medimg.evaluation.brats_lesionwise`) and, with ``legacy``,
whole-region Dice and HD95. A file that cannot be scored (no case ID, no truth, two candidates,
another grid, non-integral labels, unreadable) is one row of ``errors.csv`` naming the file and
the problem; the other cases go on. ``metrics.json`` holds the settings, the ``mean`` and ``std``
summary rows and the failures.

Spacing: the official evaluation applies the header's voxel spacing to the array axes in reverse
order (checked on its sample outputs: with the spacing in header order its HD95 and NSD of the
anisotropic cases are not reproduced). ``official_spacing=True`` (the default) does the same, so
that the numbers equal the leaderboard's; ``False`` uses the physically correct order. On
isotropic grids (the usual BraTS 1 mm) both are the same.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medimg.evaluation.brats_lesionwise import (
    CHALLENGE_REGIONS,
    HD95_INFINITY,
    case_columns,
    foreground_box,
    lesionwise_case,
    summary_rows,
)
from medimg.limits import check_size
from medimg.writers import write_csv, write_json

__all__ = [
    "METRIC_SETS",
    "LabelFileError",
    "case_id_from_name",
    "evaluate_brats_files",
    "legacy_scores",
    "lesionwise_of_labels",
    "load_label_map",
    "pair_files",
]

#: What ``--metrics`` accepts.
METRIC_SETS = ("legacy", "lesionwise")
_ID_STRICT = re.compile(r"(?<!\d)(\d{5}-\d{3})(?!\d)")
_ID_OFFICIAL = re.compile(r"(?<!\d)(\d{5}(?:-\d{3})?|\d{4}-\d{1,3})(?!\d)")  # the official evaluation's forms
_NIFTI = (".nii", ".nii.gz")
ERROR_COLUMNS = ("file", "case_id", "problem")


class LabelFileError(ValueError):
    """A label file that cannot be scored; the message names the file and the problem."""


@dataclass(frozen=True)
class LabelMap:
    """An integer label map with its grid."""

    array: np.ndarray
    zooms: tuple[float, ...]
    affine: np.ndarray


def case_id_from_name(name: str) -> str | None:
    """The BraTS case ID in a file name: ``NNNNN-NNN`` first, else the official looser forms."""
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]
    match = _ID_STRICT.search(stem) or _ID_OFFICIAL.search(stem)
    return match.group(1) if match else None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_NIFTI))


def pair_files(
    predictions: Path, truth: Path
) -> tuple[list[tuple[str, Path, Path]], list[dict[str, str]], list[tuple[str, Path]]]:
    """Pair prediction and truth files by case ID.

    Returns:
        ``(pairs, errors, unpredicted)``: ``(case_id, prediction, truth)`` triples sorted by case ID;
        error rows (``file``, ``case_id``, ``problem``); truths that no prediction names.
    """
    errors: list[dict[str, str]] = []

    def by_id(files: list[Path], kind: str) -> dict[str, Path]:
        found: dict[str, list[Path]] = {}
        for path in files:
            case_id = case_id_from_name(path.name)
            if case_id is None:
                errors.append({"file": str(path), "case_id": "", "problem": f"no BraTS case ID in this {kind} name"})
            else:
                found.setdefault(case_id, []).append(path)
        unique = {}
        for case_id, paths in found.items():
            if len(paths) > 1:
                names = ", ".join(p.name for p in paths)
                for path in paths:
                    errors.append(
                        {
                            "file": str(path),
                            "case_id": case_id,
                            "problem": f"{len(paths)} {kind} files for case {case_id}: {names}",
                        }
                    )
            else:
                unique[case_id] = paths[0]
        return unique

    preds = by_id(_nifti_files(predictions), "prediction")
    truths = by_id(_nifti_files(truth), "truth")
    pairs = []
    for case_id, pred in sorted(preds.items()):
        if case_id in truths:
            pairs.append((case_id, pred, truths[case_id]))
        else:
            errors.append(
                {"file": str(pred), "case_id": case_id, "problem": f"no truth file for case {case_id} in {truth}"}
            )
    unpredicted = [(case_id, path) for case_id, path in sorted(truths.items()) if case_id not in preds]
    return pairs, errors, unpredicted


def load_label_map(path: Path) -> LabelMap:
    """Read a 3-D NIfTI label map (integer, or float with integral values).

    Raises:
        LabelFileError: unreadable, not 3-D, too large, non-finite or non-integral labels.
    """
    import nibabel as nib

    try:
        image = nib.load(str(path))
        if not isinstance(image, nib.Nifti1Image):  # NIfTI-2 images are NIfTI-1 subclasses
            raise LabelFileError(f"{path}: not a NIfTI image ({type(image).__name__})")
        shape = tuple(int(s) for s in image.shape)
        check_size(shape, path.name)
        if len(shape) > 3 and all(s == 1 for s in shape[3:]):
            shape = shape[:3]
        if len(shape) != 3:
            raise LabelFileError(f"{path}: a label map must be 3-D, this image is {'x'.join(map(str, image.shape))}")
        array = np.asanyarray(image.dataobj).reshape(shape)
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
        affine = np.asarray(image.affine, dtype=np.float64)
    except LabelFileError:
        raise
    except Exception as exc:  # nibabel raises many types on a damaged file
        raise LabelFileError(f"{path}: cannot read the NIfTI file ({type(exc).__name__}: {exc})") from exc
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise LabelFileError(f"{path}: label values must be finite, found NaN or infinity")
        rounded = np.rint(array)
        bad = array != rounded
        if bad.any():
            raise LabelFileError(
                f"{path}: label values must be whole numbers, found {float(array[bad].flat[0])!r} "
                f"({int(bad.sum())} voxels)"
            )
        array = rounded.astype(np.int64)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    elif array.dtype.kind not in "iu":
        raise LabelFileError(f"{path}: label maps must hold integers, this one holds {array.dtype}")
    return LabelMap(array, zooms, affine)


def _check_same_grid(pred: LabelMap, pred_path: Path, truth: LabelMap, truth_path: Path) -> None:
    if pred.array.shape != truth.array.shape:
        raise LabelFileError(
            f"{pred_path}: prediction grid {pred.array.shape} differs from the truth grid {truth.array.shape} "
            f"of {truth_path.name}; resample the prediction onto the truth's grid"
        )
    if not np.allclose(pred.affine, truth.affine, atol=1e-3):
        raise LabelFileError(
            f"{pred_path}: prediction affine differs from that of {truth_path.name} (same shape "
            f"{truth.array.shape}, other position or voxel size); resample the prediction onto the truth's grid"
        )


def legacy_scores(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float], challenge: str) -> dict[str, float]:
    """Whole-region Dice and HD95 (mm) per region: ``legacy_dice_<region>``, ``legacy_hd95_<region>``.

    Both masks empty: Dice 1, HD95 0; one empty: Dice 0, HD95 373 (the BraTS 2021 conventions).
    HD95 is MONAI's (95th percentile of each directed distance set, the larger of the two).
    """
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance

    box = foreground_box(truth, pred)  # distances are the same inside the labelled voxels' box
    truth, pred = np.pad(truth[box], 1), np.pad(pred[box], 1)
    row: dict[str, float] = {}
    for region, labels in CHALLENGE_REGIONS[challenge].items():
        t, p = np.isin(truth, labels), np.isin(pred, labels)
        t_sum, p_sum = int(t.sum()), int(p.sum())
        if t_sum == 0 and p_sum == 0:
            dice, hd = 1.0, 0.0
        elif t_sum == 0 or p_sum == 0:
            dice, hd = 0.0, HD95_INFINITY
        else:
            dice = 2.0 * int((t & p).sum()) / (t_sum + p_sum)
            with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument it passes itself
                warnings.simplefilter("ignore", FutureWarning)
                distances = compute_hausdorff_distance(
                    torch.as_tensor(p[None, None]),
                    torch.as_tensor(t[None, None]),
                    percentile=95,
                    spacing=[float(s) for s in spacing],
                )
            hd = float(distances[0, 0])
        row[f"legacy_dice_{region}"] = dice
        row[f"legacy_hd95_{region}"] = hd
    return row


def _score_pair(pred_path: Path, truth_path: Path, settings: dict[str, Any]) -> dict[str, float]:
    truth = load_label_map(truth_path)
    pred = load_label_map(pred_path)
    _check_same_grid(pred, pred_path, truth, truth_path)
    row: dict[str, float] = {}
    if "lesionwise" in settings["metrics"]:
        spacing = truth.zooms[::-1] if settings["official_spacing"] else truth.zooms
        values, _ = lesionwise_case(
            truth.array,
            pred.array,
            spacing,
            challenge=settings["challenge"],
            vol_threshold=settings["vol_threshold"],
            overlap_threshold=settings["overlap_threshold"],
            penalise_unmatched=settings["penalise_unmatched"],
        )
        row.update(values)
    if "legacy" in settings["metrics"]:
        row.update(legacy_scores(truth.array, pred.array, truth.zooms, settings["challenge"]))
    return row


def lesionwise_of_labels(
    truth: np.ndarray, labels: np.ndarray, affine: np.ndarray, convention: str, challenge: str = "mets"
) -> dict[str, float]:
    """The lesion-wise columns of a model's label map against the truth (the ``evaluate`` route).

    ``convention`` ``brats2020`` (ET = 4) is mapped to the 2023 labels (ET = 3) of the lesion-wise
    regions first; the spacing is applied in the official evaluation's order.
    """
    if convention == "brats2020":
        truth, labels = (np.where(np.asarray(a) == 4, 3, np.asarray(a)) for a in (truth, labels))
    zooms = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))  # per array axis, as nibabel
    values, _ = lesionwise_case(np.asarray(truth), np.asarray(labels), tuple(zooms[::-1]), challenge=challenge)
    return values


def _columns(metrics: Sequence[str], challenge: str) -> list[str]:
    columns = ["case_id", "status"]
    if "lesionwise" in metrics:
        columns += case_columns(challenge)[1:]
    if "legacy" in metrics:
        for region in CHALLENGE_REGIONS[challenge]:
            columns += [f"legacy_dice_{region}", f"legacy_hd95_{region}"]
    return columns


def _missing_row(case_id: str, columns: Sequence[str]) -> dict[str, Any]:
    """The official row of a case without prediction: every HD95 column 373, everything else 0."""
    row: dict[str, Any] = {"case_id": case_id, "status": "missing prediction"}
    row.update({c: HD95_INFINITY if "hd95" in c else 0.0 for c in columns[2:]})
    return row


def _csv_value(value: Any) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


def evaluate_brats_files(
    predictions: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    metrics: Sequence[str] = ("lesionwise",),
    challenge: str = "mets",
    official_spacing: bool = True,
    penalise_unmatched: bool = False,
    vol_threshold: float = 20.0,
    overlap_threshold: float = 0.1,
    on_case: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score every prediction of ``predictions`` against its truth in ``truth``.

    Writes ``metrics.json``, ``cases.csv`` (one row per case, then ``mean`` and ``std``) and
    ``errors.csv`` in ``out``, each atomically. Returns the ``metrics.json`` content; its
    ``errors`` list is empty when every file was scored.

    Raises:
        ValueError: unknown metric set or challenge, or a folder that does not exist.
    """
    unknown = sorted(set(metrics) - set(METRIC_SETS))
    if unknown or not metrics:
        raise ValueError(f"unknown --metrics {','.join(unknown) or '(none)'}; choose from {','.join(METRIC_SETS)}")
    if challenge not in CHALLENGE_REGIONS:
        raise ValueError(f"unknown --challenge {challenge!r}; choose from {', '.join(CHALLENGE_REGIONS)}")
    predictions, truth, out = Path(predictions), Path(truth), Path(out)
    for folder, what in ((predictions, "predictions"), (truth, "truth")):
        if not folder.is_dir():
            raise ValueError(f"{what} folder {folder} does not exist or is not a folder")
    settings = {
        "metrics": list(metrics),
        "challenge": challenge,
        "official_spacing": official_spacing,
        "penalise_unmatched": penalise_unmatched,
        "vol_threshold": vol_threshold,
        "overlap_threshold": overlap_threshold,
    }
    pairs, errors, unpredicted = pair_files(predictions, truth)
    columns = _columns(metrics, challenge)
    rows: list[dict[str, Any]] = []
    for done, (case_id, pred_path, truth_path) in enumerate(pairs, start=1):
        try:
            rows.append({"case_id": case_id, "status": "ok", **_score_pair(pred_path, truth_path, settings)})
        except (LabelFileError, ValueError) as exc:
            errors.append({"file": str(pred_path), "case_id": case_id, "problem": str(exc)})
        if on_case is not None:
            on_case(done, len(pairs))
    for case_id, truth_path in unpredicted:
        errors.append(
            {
                "file": str(truth_path),
                "case_id": case_id,
                "problem": "no prediction for this truth (scored as missing: 0, HD95 373)",
            }
        )
        rows.append(_missing_row(case_id, columns))
    rows.sort(key=lambda r: r["case_id"])
    summary = summary_rows(rows, [c for c in columns if c != "status"]) if rows else []
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "cases.csv", [{k: _csv_value(v) for k, v in r.items()} for r in rows + summary], columns)
    write_csv(out / "errors.csv", errors, ERROR_COLUMNS)
    result = {
        "predictions": str(predictions),
        "truth": str(truth),
        **settings,
        "n_cases": sum(r["status"] == "ok" for r in rows),
        "n_missing_predictions": len(unpredicted),
        "summary": {row["case_id"]: {k: v for k, v in row.items() if k != "case_id"} for row in summary},
        "cases": rows,
        "errors": errors,
    }
    write_json(out / "metrics.json", _json_safe(result))
    return result


def _json_safe(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
