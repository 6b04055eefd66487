"""Brain-tumour segmentation (BraTS): inputs, label conventions, preprocessing and inference.

Work in progress toward the full pipeline (issue: pipelines/brats + uncertainty estimation);
what is here is complete and tested: finding cases in BraTS NIfTI folders, loading the four
sequences (NIfTI or DICOM series) onto one reference grid, the label conventions and their
TC/WT/ET channels, and sliding-window inference mapped back to the source grid.

Configuration, never guessed:

- ``naming``: ``brats2021`` (``{ID}_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``; also BraTS 2020)
  or ``brats2023`` (``{ID}-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``).
- ``labels``: ``brats2020`` (1 NCR, 2 ED, 4 ET; BraTS 2018-2022) or ``brats2023`` (1 NETC,
  2 SNFH, 3 ET). Regions: TC = NCR + ET, WT = TC + ED, ET.
- ``channels``: the network's input order, default ``t1ce, t1, t2, flair`` (MONAI's BraTS bundle).

Reference grid: the T1ce (post-contrast) sequence's grid; the other sequences are resampled onto
it (trilinear, MONAI ``ResampleToMatch``) when their shape or affine differ. T1ce is the sequence
tumour extent is read on and is usually acquired at the finest resolution.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHANNEL_ORDER",
    "LABEL_CONVENTIONS",
    "NAMING",
    "REGION_CHANNELS",
    "CaseInputError",
    "channels_to_labels",
    "find_nifti_cases",
    "labels_to_channels",
    "load_case",
    "region_volumes_ml",
    "segment",
]

SEQUENCES = ("t1", "t1ce", "t2", "flair")
NAMING: Mapping[str, Mapping[str, str]] = {
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
LABEL_CONVENTIONS: Mapping[str, Mapping[str, int]] = {
    "brats2020": {"NCR": 1, "ED": 2, "ET": 4},
    "brats2023": {"NCR": 1, "ED": 2, "ET": 3},
}
#: Output channels of the network (sigmoid each), as in MONAI's BraTS bundle.
REGION_CHANNELS: tuple[str, ...] = ("TC", "WT", "ET")
CHANNEL_ORDER: tuple[str, ...] = ("t1ce", "t1", "t2", "flair")
REFERENCE_SEQUENCE = "t1ce"
_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$")


class CaseInputError(ValueError):
    """One case cannot be processed; ``case_id`` and ``path`` say which and where."""

    def __init__(self, case_id: str, path: str | os.PathLike[str] | None, message: str):
        self.case_id = case_id
        self.path = str(path) if path is not None else ""
        super().__init__(f"{case_id}: {message}" + (f" ({self.path})" if self.path else ""))

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (CaseInputError, (self.case_id, self.path, str(self).split(": ", 1)[-1]))


def find_nifti_cases(
    folder: str | os.PathLike[str], *, naming: str = "brats2021"
) -> tuple[dict[str, dict[str, Path]], list[CaseInputError]]:
    """Cases of a BraTS NIfTI folder (flat, or one sub-folder per case).

    Returns:
        ``(cases, errors)``: per case ID the paths by role (``t1``, ``t1ce``, ``t2``, ``flair``
        and ``seg`` when present); errors for cases missing a sequence or with a role twice.

    Raises:
        ValueError: unknown naming. NotADirectoryError: ``folder`` is not a folder.
    """
    if naming not in NAMING:
        raise ValueError(f"unknown naming {naming!r}; choose from {sorted(NAMING)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    files = [p for p in folder.iterdir() if p.is_file()]
    files += [p for d in folder.iterdir() if d.is_dir() for p in d.iterdir() if p.is_file()]
    suffixes = NAMING[naming]
    cases: dict[str, dict[str, Path]] = {}
    errors: list[CaseInputError] = []
    # Longest suffix first, so that "_t1ce" is not read as "_t1" of a case "X_t1ce"-less ID.
    ordered = sorted(suffixes.items(), key=lambda kv: -len(kv[1]))
    for path in sorted(files):
        match = _NIFTI.match(path.name)
        if not match:
            continue
        stem = match.group("stem")
        for role, suffix in ordered:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                case_id = stem[: -len(suffix)]
                roles = cases.setdefault(case_id, {})
                if role in roles:
                    errors.append(CaseInputError(case_id, path, f"{role} given twice ({roles[role]} and {path})"))
                else:
                    roles[role] = path
                break
    complete = {}
    for case_id, roles in sorted(cases.items()):
        missing = [s for s in SEQUENCES if s not in roles]
        if missing:
            where = next(iter(roles.values())).parent
            names = ", ".join(f"{case_id}{suffixes[s]}.nii.gz" for s in missing)
            errors.append(CaseInputError(case_id, where, f"missing sequence(s): {names}"))
        else:
            complete[case_id] = roles
    return complete, errors


def _load_sequence(case_id: str, source: Path | Sequence[str]) -> Any:
    """A MetaTensor (1, X, Y, Z) with its RAS affine from a NIfTI file or a DICOM series."""
    if isinstance(source, (str, os.PathLike)):
        from monai.transforms import LoadImage

        try:
            return LoadImage(image_only=True, ensure_channel_first=True, reader="NibabelReader")(str(source))
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken headers
            raise CaseInputError(case_id, source, f"cannot read NIfTI: {type(exc).__name__}: {exc}") from exc
    from medimg.dicom import DecodeError, SeriesError, load_series

    try:
        return load_series(list(source))
    except (SeriesError, DecodeError) as exc:
        raise CaseInputError(case_id, os.path.dirname(source[0]), str(exc)) from exc


def load_case(
    case_id: str,
    sources: Mapping[str, Path | Sequence[str]],
    *,
    channels: Sequence[str] = CHANNEL_ORDER,
    reference: str = REFERENCE_SEQUENCE,
) -> Any:
    """The four sequences as one float32 MetaTensor (4, X, Y, Z) on the reference grid.

    Args:
        case_id: for error messages.
        sources: per sequence a NIfTI path or the files of a DICOM series.
        channels: channel order of the result.
        reference: the sequence whose grid the others are resampled onto.

    Raises:
        CaseInputError: a sequence is missing or unreadable, a DICOM series is inconsistent, or
            the sequences do not overlap in space (fields of view that cannot be aligned).
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    missing = [s for s in channels if s not in sources]
    if missing:
        raise CaseInputError(case_id, None, f"missing sequence(s): {', '.join(missing)}")
    volumes = {s: _load_sequence(case_id, sources[s]) for s in channels}
    ref = volumes[reference]
    resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")
    stacked = []
    for sequence in channels:
        volume = volumes[sequence]
        same_grid = volume.shape[1:] == ref.shape[1:] and torch.allclose(
            volume.affine.double(), ref.affine.double(), atol=1e-3
        )
        if not same_grid:
            volume = resample(volume, img_dst=ref)
            if float(volume.abs().sum()) == 0.0:
                raise CaseInputError(
                    case_id,
                    _source_name(sources[sequence]),
                    f"{sequence} does not overlap the {reference} field of view",
                )
        stacked.append(torch.as_tensor(volume, dtype=torch.float32)[0])
    return MetaTensor(torch.stack(stacked), affine=ref.affine.clone(), meta=dict(ref.meta))


def _source_name(source: Path | Sequence[str]) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else os.path.dirname(source[0])


def labels_to_channels(labels: np.ndarray, convention: str = "brats2020") -> np.ndarray:
    """Label volume -> (3, *spatial) bool channels in :data:`REGION_CHANNELS` order (TC, WT, ET).

    Raises:
        ValueError: labels outside the convention.
    """
    codes = LABEL_CONVENTIONS[convention]
    valid = {0, *codes.values()}
    present = set(np.unique(labels).tolist())
    if not present <= valid:
        raise ValueError(f"labels {sorted(present - valid)} are not in the {convention} convention {sorted(valid)}")
    et = labels == codes["ET"]
    tc = et | (labels == codes["NCR"])
    wt = tc | (labels == codes["ED"])
    return np.stack([tc, wt, et])


def channels_to_labels(channels: np.ndarray, convention: str = "brats2020") -> np.ndarray:
    """(3, *spatial) TC/WT/ET binary channels -> labels, nesting enforced (ET within TC within WT).

    ET -> the convention's ET label; TC without ET -> NCR; WT without TC -> ED (the BraTS
    bundle's rule). Returns uint8.
    """
    codes = LABEL_CONVENTIONS[convention]
    tc, wt, et = (np.asarray(c, dtype=bool) for c in channels)
    labels = np.zeros(tc.shape, dtype=np.uint8)
    labels[wt] = codes["ED"]
    labels[tc] = codes["NCR"]
    labels[et] = codes["ET"]
    return labels


def region_volumes_ml(labels: np.ndarray, affine: np.ndarray, convention: str = "brats2020") -> dict[str, float]:
    """WT, TC, ET volumes in millilitres from a label volume and its voxel-to-world affine (mm)."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0
    tc, wt, et = labels_to_channels(labels, convention)
    return {
        "WT_ml": float(wt.sum()) * voxel_ml,
        "TC_ml": float(tc.sum()) * voxel_ml,
        "ET_ml": float(et.sum()) * voxel_ml,
    }


def preprocessing_transforms(spacing: Sequence[float] | None) -> Any:
    """MONAI transforms for a (4, X, Y, Z) case: RAS orientation, optional resampling to
    ``spacing`` (mm), per-channel z-score over non-zero voxels (skull-stripped background stays 0)."""
    from monai.transforms import Compose, NormalizeIntensity, Orientation, Spacing

    steps: list[Any] = [Orientation(axcodes="RAS")]
    if spacing:
        steps.append(Spacing(pixdim=tuple(spacing), mode="bilinear"))
    steps.append(NormalizeIntensity(nonzero=True, channel_wise=True))
    return Compose(steps)


def segment(
    model: Any,
    case: Any,
    *,
    roi_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    device: str = "cpu",
) -> np.ndarray:
    """Region probabilities (3, X, Y, Z) on the case's own (reference) grid.

    Preprocess (orientation, spacing, normalisation), ``sliding_window_inference`` with gaussian
    blending, sigmoid, then resample the probabilities back onto the case's grid (trilinear,
    through the affines), so that thresholding at 0.5 gives masks on the source grid.
    """
    import torch
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import ResampleToMatch

    prepared = preprocessing_transforms(spacing)(case)
    with torch.no_grad():
        logits = sliding_window_inference(
            prepared.unsqueeze(0).to(device),
            roi_size=tuple(roi_size),
            sw_batch_size=sw_batch_size,
            predictor=model,
            overlap=overlap,
            mode="gaussian",
        )
    prob = MetaTensor(torch.sigmoid(logits[0]).cpu(), affine=prepared.affine, meta=dict(prepared.meta))
    back = ResampleToMatch(mode="bilinear")(prob, img_dst=case)
    return np.asarray(back, dtype=np.float32)
