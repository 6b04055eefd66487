"""BraTS lesion-wise scores of a case: regions per challenge, the official summaries, CSV columns.

:func:`lesionwise_case` evaluates every region of a challenge (:data:`CHALLENGE_REGIONS`) with
:func:`medimg.evaluation.lesionwise.evaluate_region` and turns each region into the columns of
the official per-case CSV:

* ``mets`` (metastases) follows the official METS parser: reference lesions of at least
  ``vol_threshold`` mm^3 (default 20) are *large* and give the lesion-wise Dice / HD95 / NSD mean
  and population std; *small* ones are only detected (a matched small lesion with Dice >=
  ``overlap_threshold``, default 0.1, is a TP) and give ``small_instance_tp/fn/fp/f1``, FP being
  every unmatched predicted lesion. By default unmatched lesions do not enter the lesion-wise
  means (the rule that produced the official sample outputs); ``penalise_unmatched=True`` adds
  each unmatched large reference lesion and each false-positive lesion as Dice 0, NSD 0,
  HD95 373 (the rule of the current official parser).
* the other challenges follow the official ``seg`` parser: the lesion-wise values are the mean and
  population std over matched lesions; with no match but lesions on a side, Dice 0, NSD 0,
  HD95 373 and std NaN; with no lesion on either side, NaN.

An infinite HD95 is written as :data:`HD95_INFINITY` (373 mm, the diagonal of the SRI-24 atlas
box). :func:`summary_rows` adds the ``mean`` and (sample) ``std`` rows of the official summary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medimg.evaluation.lesionwise import RegionResult, evaluate_region

__all__ = [
    "CHALLENGE_REGIONS",
    "HD95_INFINITY",
    "case_columns",
    "foreground_box",
    "lesionwise_case",
    "region_columns",
    "summarise_mets",
    "summarise_seg",
    "summary_rows",
]

#: The HD95 written for an infinite distance (no lesion to compare with), in mm.
HD95_INFINITY = 373.0

#: Label groups of each challenge's regions (keys in the official column order).
CHALLENGE_REGIONS: dict[str, dict[str, tuple[int, ...]]] = {
    # BraTS-METS 2025: 1 NETC, 2 SNFH, 3 ET, 4 resection cavity.
    "mets": {"et": (3,), "rc": (4,), "tc": (1, 3), "wt": (1, 2, 3)},
    # BraTS-GLI 2024/2025 post-treatment: 1 NETC, 2 SNFH, 3 ET, 4 resection cavity.
    "gli": {"et": (3,), "netc": (1,), "rc": (4,), "snfh": (2,), "tc": (1, 3), "wt": (1, 2, 3)},
    # BraTS 2023 pre-treatment convention (GLI 2023, MET 2023, MEN 2023, GoAT): 1 NCR, 2 ED, 3 ET.
    "gli2023": {"et": (3,), "tc": (1, 3), "wt": (1, 2, 3)},
    "goat": {"et": (3,), "tc": (1, 3), "wt": (1, 2, 3)},
    "men": {"et": (3,), "tc": (1, 3), "wt": (1, 2, 3)},
    # BraTS-PED 2024: 1 ET, 2 NET, 3 cystic component, 4 edema.
    "ped": {"cc": (3,), "ed": (4,), "et": (1,), "net": (2,), "tc": (1, 2, 3), "wt": (1, 2, 3, 4)},
    # BraTS-MEN-RT: one gross tumour volume label.
    "menrt": {"gtv": (1,)},
}

_METS_FIELDS = (
    "all_instance_tp",
    "all_instance_fp",
    "all_instance_fn",
    "all_instance_f1",
    "lesionwise_dsc_mean",
    "lesionwise_dsc_std",
    "lesionwise_hd95_mean",
    "lesionwise_hd95_std",
    "lesionwise_nsd_mean",
    "lesionwise_nsd_std",
    "small_instance_tp",
    "small_instance_fn",
    "small_instance_fp",
    "small_instance_f1",
)
_SEG_FIELDS = (
    "lesionwise_dsc_mean",
    "lesionwise_dsc_std",
    "lesionwise_hd95_mean",
    "lesionwise_hd95_std",
    "lesionwise_nsd_mean",
    "lesionwise_nsd_std",
    "all_instance_tp",
    "all_instance_fp",
    "all_instance_fn",
    "all_instance_f1",
)


def region_columns(challenge: str) -> list[str]:
    """The lesion-wise CSV columns of a challenge, e.g. ``lesionwise_dsc_mean_et``."""
    fields = _METS_FIELDS if challenge == "mets" else _SEG_FIELDS
    return [f"{name}_{region}" for region in _regions(challenge) for name in fields]


def case_columns(challenge: str) -> list[str]:
    """``case_id`` followed by :func:`region_columns`."""
    return ["case_id", *region_columns(challenge)]


def _regions(challenge: str) -> dict[str, tuple[int, ...]]:
    try:
        return CHALLENGE_REGIONS[challenge]
    except KeyError:
        raise ValueError(f"unknown challenge {challenge!r}; known: {', '.join(CHALLENGE_REGIONS)}") from None


def _finite_hd95(value: float) -> float:
    return HD95_INFINITY if math.isinf(value) else value


def _detection(result: RegionResult) -> dict[str, float]:
    return {
        "all_instance_tp": result.tp,
        "all_instance_fp": result.fp,
        "all_instance_fn": result.fn,
        "all_instance_f1": result.f1,
    }


def _mean_std(values: Sequence[float], empty_mean: float) -> tuple[float, float]:
    if not values:
        return empty_mean, 0.0
    return float(np.mean(values)), float(np.std(values))


def summarise_mets(
    result: RegionResult,
    *,
    vol_threshold: float = 20.0,
    overlap_threshold: float = 0.1,
    penalise_unmatched: bool = False,
) -> dict[str, float]:
    """The METS columns of one region (without the region suffix); see the module docstring."""
    dsc: list[float] = []
    hd: list[float] = []
    nsd: list[float] = []
    small_tp = small_fn = 0
    large_present = small_present = False
    for lesion in result.lesions:
        large = lesion.volume_mm3 >= vol_threshold
        large_present |= large
        small_present |= not large
        if large and lesion.matched:
            dsc.append(lesion.dice)
            hd.append(lesion.hd95)
            nsd.append(lesion.nsd)
        elif large and penalise_unmatched:
            dsc.append(0.0)
            hd.append(HD95_INFINITY)
            nsd.append(0.0)
        elif not large and lesion.matched and lesion.dice >= overlap_threshold:
            small_tp += 1
        elif not large:
            small_fn += 1
    if penalise_unmatched:
        dsc += [0.0] * result.fp
        nsd += [0.0] * result.fp
        hd += [HD95_INFINITY] * result.fp
    row: dict[str, float] = _detection(result)
    if result.n_ref and large_present:
        finite_hd = [value for value in hd if math.isfinite(value)]
        row["lesionwise_dsc_mean"], row["lesionwise_dsc_std"] = _mean_std(dsc, 0.0)
        row["lesionwise_hd95_mean"], row["lesionwise_hd95_std"] = _mean_std(finite_hd, HD95_INFINITY)
        row["lesionwise_nsd_mean"], row["lesionwise_nsd_std"] = _mean_std(nsd, 0.0)
    else:
        row.update({f"lesionwise_{m}_{s}": math.nan for m in ("dsc", "hd95", "nsd") for s in ("mean", "std")})
    if small_present:
        denominator = 2 * small_tp + result.fp + small_fn
        row.update(
            small_instance_tp=small_tp,
            small_instance_fn=small_fn,
            small_instance_fp=result.fp,
            small_instance_f1=2 * small_tp / denominator if denominator else 0.0,
        )
    else:
        row.update({f"small_instance_{k}": math.nan for k in ("tp", "fn", "fp", "f1")})
    return row


def summarise_seg(result: RegionResult) -> dict[str, float]:
    """The columns of the non-METS challenges for one region (without the region suffix)."""
    row: dict[str, float] = _detection(result)
    if result.tp:
        for metric in ("dsc", "hd95", "nsd"):
            values = result.matched("dice" if metric == "dsc" else metric)
            row[f"lesionwise_{metric}_mean"] = float(np.mean(values))
            row[f"lesionwise_{metric}_std"] = float(np.std(values))
    elif result.n_ref or result.n_pred:  # lesions but no match: the zero-TP penalty
        row.update(lesionwise_dsc_mean=0.0, lesionwise_hd95_mean=HD95_INFINITY, lesionwise_nsd_mean=0.0)
        row.update({f"lesionwise_{m}_std": math.nan for m in ("dsc", "hd95", "nsd")})
    else:
        row.update({f"lesionwise_{m}_{s}": math.nan for m in ("dsc", "hd95", "nsd") for s in ("mean", "std")})
    row["lesionwise_hd95_mean"] = _finite_hd95(row["lesionwise_hd95_mean"])
    return row


def foreground_box(reference: np.ndarray, prediction: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of every labelled voxel of either map (lesions, their distances and
    volumes are the same inside it as in the whole volume); the first voxel when there is none."""
    foreground = (reference != 0) | (prediction != 0)
    box = ndimage.find_objects(foreground.astype(np.uint8))
    return box[0] if box and box[0] is not None else tuple(slice(0, 1) for _ in reference.shape)


def lesionwise_case(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    *,
    challenge: str = "mets",
    vol_threshold: float = 20.0,
    overlap_threshold: float = 0.1,
    penalise_unmatched: bool = False,
) -> tuple[dict[str, float], dict[str, RegionResult]]:
    """Lesion-wise columns of one case, and the per-region results they came from.

    Args:
        reference, prediction: integer label maps of the same shape.
        spacing: voxel size per array axis, in mm.
        challenge: a key of :data:`CHALLENGE_REGIONS`.
        vol_threshold, overlap_threshold, penalise_unmatched: the METS rules (ignored otherwise).
    """
    regions = _regions(challenge)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    box = foreground_box(reference, prediction)
    reference, prediction = reference[box], prediction[box]
    row: dict[str, float] = {}
    results: dict[str, RegionResult] = {}
    for region, labels in regions.items():
        result = evaluate_region(np.isin(reference, labels), np.isin(prediction, labels), spacing)
        results[region] = result
        if challenge == "mets":
            values = summarise_mets(
                result,
                vol_threshold=vol_threshold,
                overlap_threshold=overlap_threshold,
                penalise_unmatched=penalise_unmatched,
            )
        else:
            values = summarise_seg(result)
        row.update({f"{name}_{region}": float(value) for name, value in values.items()})
    return row, results


def summary_rows(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """The official summary rows: ``mean`` and sample ``std`` (ddof 1) of each column, NaN skipped.

    A column with no value gives NaN; the std of a single value is NaN (as pandas gives).
    """
    rows = list(rows)
    mean_row: dict[str, Any] = {"case_id": "mean"}
    std_row: dict[str, Any] = {"case_id": "std"}
    for column in columns:
        if column == "case_id":
            continue
        values = np.asarray([row[column] for row in rows if column in row], dtype=float)
        values = values[~np.isnan(values)]
        mean_row[column] = float(values.mean()) if values.size else math.nan
        std_row[column] = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return [mean_row, std_row]
