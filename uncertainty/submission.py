"""Find and load QU-BraTS submissions and reference cases, validating every input.

Submission naming (BraTS 2020 uncertainty task): for case ``{ID}``, ``{ID}.nii.gz`` (labels),
``{ID}_unc_whole.nii.gz``, ``{ID}_unc_core.nii.gz``, ``{ID}_unc_enhance.nii.gz``, in the folder or
in one sub-folder per case. Truth: ``{ID}_seg.nii.gz`` flat or in ``{ID}/``; brain mask
``{ID}_brainmask.nii.gz``, else ``{ID}_t1.nii.gz`` > 0. ``.nii`` works wherever ``.nii.gz`` does.

Where the official script accepts odd input silently, we refuse the case with a
reason instead: shape or affine mismatch, NaN or values outside [0, 100] in an uncertainty map,
labels other than 0/1/2/4.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from medimg.limits import InputLimitError, check_size
from uncertainty.qubrats import REGIONS, UNCERTAINTY_SUFFIX

__all__ = [
    "CaseError",
    "CaseFiles",
    "CaseInputs",
    "DiscoveryResult",
    "find_submission",
    "find_truth",
    "load_case",
    "BRAIN_MASK_POLICIES",
]

_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$")
#: Suffixes of files that belong to the reference or the input images, never predictions.
_NOT_PREDICTION = ("_seg", "_brainmask", "_t1", "_t1ce", "_t2", "_flair", "_t1n", "_t1c", "_t2w", "_t2f", "_mask")
#: How the brain mask is found: "auto" (brainmask file, else T1 > 0, else error) or "none".
BRAIN_MASK_POLICIES = ("auto", "none")
#: Label values of the BraTS 2020 convention.
VALID_LABELS = (0, 1, 2, 4)
#: Largest tolerated difference between affines (mm) before a case is refused.
AFFINE_TOLERANCE_MM = 1e-3


class CaseError(ValueError):
    """One case cannot be scored; ``case_id`` and ``path`` say which and where."""

    def __init__(self, case_id: str, path: str | os.PathLike[str] | None, message: str):
        self.case_id = case_id
        self.path = str(path) if path is not None else ""
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # picklable across processes
        return (CaseError, (self.case_id, self.path, str(self)))

    def to_row(self) -> dict[str, str]:
        return {"case_id": self.case_id, "file": self.path, "error": str(self)}


@dataclass
class CaseFiles:
    """The files of one case: prediction and uncertainty maps, or truth and brain mask."""

    case_id: str
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class DiscoveryResult:
    """Cases found in a folder, and the problems met while looking."""

    cases: dict[str, CaseFiles] = field(default_factory=dict)
    errors: list[CaseError] = field(default_factory=list)


def _is_nifti(name: str) -> bool:
    """A NIfTI name that is not a temporary file of :func:`medimg.writers.atomic_path`
    (``.NAME.XXXXXXXX.tmp.nii.gz``, left behind when a writer is killed)."""
    if name.startswith(".") and ".tmp" in name:
        return False
    return _NIFTI.match(name) is not None


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder`` and in its immediate sub-folders, sorted; leftover
    temporary files of interrupted writes are ignored."""
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            out.extend(sorted(p for p in entry.iterdir() if p.is_file() and _is_nifti(p.name)))
        elif entry.is_file() and _is_nifti(entry.name):
            out.append(entry)
    return out


def _stem(path: Path) -> str:
    match = _NIFTI.match(path.name)
    assert match is not None
    return match.group("stem")


def _add(result: DiscoveryResult, case_id: str, role: str, path: Path) -> None:
    case = result.cases.setdefault(case_id, CaseFiles(case_id))
    if role in case.files:
        result.errors.append(
            CaseError(
                case_id, path, f"duplicate case ID {case_id!r}: {role} given twice ({case.files[role]} and {path})"
            )
        )
        return
    case.files[role] = path


def find_submission(folder: str | os.PathLike[str]) -> DiscoveryResult:
    """Find the cases of a submission folder.

    Returns:
        Cases keyed by ID with roles ``prediction``, ``WT``, ``TC``, ``ET`` (those present);
        duplicate files for one role are errors. Missing roles are reported by :func:`load_case`.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    result = DiscoveryResult()
    suffix_to_region = {f"_unc_{s}": r for r, s in UNCERTAINTY_SUFFIX.items()}
    for path in _nifti_files(folder):
        stem = _stem(path)
        for suffix, region in suffix_to_region.items():
            if stem.endswith(suffix) and len(stem) > len(suffix):
                _add(result, stem[: -len(suffix)], region, path)
                break
        else:
            if not stem.endswith(_NOT_PREDICTION):
                _add(result, stem, "prediction", path)
    return result


def find_truth(folder: str | os.PathLike[str]) -> DiscoveryResult:
    """Find reference cases (``{ID}_seg``) with their brain mask and T1, flat or per-case folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    result = DiscoveryResult()
    roles = {"_seg": "truth", "_brainmask": "brainmask", "_t1": "t1"}
    for path in _nifti_files(folder):
        stem = _stem(path)
        for suffix, role in roles.items():
            if stem.endswith(suffix) and len(stem) > len(suffix):
                _add(result, stem[: -len(suffix)], role, path)
                break
    # Keep only IDs that have a truth segmentation; lone masks or T1s belong to nothing.
    result.cases = {cid: case for cid, case in result.cases.items() if "truth" in case.files}
    return result


@dataclass
class CaseInputs:
    """Validated arrays of one case, ready for :func:`uncertainty.qubrats.score_case`."""

    case_id: str
    prediction: np.ndarray
    uncertainty: dict[str, np.ndarray]
    truth: np.ndarray
    brain_mask: np.ndarray | None
    brain_mask_source: str


def _load(case_id: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a NIfTI file, scaled like nibabel's ``get_fdata``, as the official scorer reads them.

    Unscaled files keep their stored dtype (uint8 maps stay uint8, which is faster to score);
    files with scl_slope/scl_inter come back as float64, exactly as ``get_fdata`` gives them.
    The header's shape is checked against :func:`medimg.limits.max_pixels` before any data is read.
    """
    import nibabel as nib
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.spatialimages import SpatialImage

    try:
        image = cast(SpatialImage, nib.load(str(path)))  # NIfTI-1 or NIfTI-2: spatial images
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise CaseError(case_id, path, f"cannot read NIfTI: {type(exc).__name__}: {exc}") from exc
    try:
        check_size(image.shape, path.name)
    except InputLimitError as exc:
        raise CaseError(case_id, path, str(exc)) from exc
    try:
        proxy = cast(ArrayProxy, image.dataobj)  # loaded images hold a proxy: the scaling, no data yet
        slope, inter = proxy.slope, proxy.inter
        if (slope is None or slope == 1.0) and (inter is None or inter == 0.0):
            data = np.asarray(image.dataobj)
        else:
            data = image.get_fdata(dtype=np.float64)
        return data, image.affine
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise CaseError(case_id, path, f"cannot read NIfTI: {type(exc).__name__}: {exc}") from exc


def _check_geometry(case_id: str, path: Path, data: np.ndarray, affine: np.ndarray, ref: tuple) -> None:
    ref_shape, ref_affine, ref_path = ref
    if data.shape != ref_shape:
        raise CaseError(case_id, path, f"shape {data.shape} differs from the truth's {ref_shape} ({ref_path.name})")
    if not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE_MM, rtol=0):
        diff = float(np.abs(affine - ref_affine).max())
        raise CaseError(case_id, path, f"affine differs from the truth's ({ref_path.name}) by up to {diff:.4g} mm")


def _check_labels(case_id: str, path: Path, labels: np.ndarray) -> None:
    if labels.dtype == np.uint8:  # the usual case: a value histogram, no sort of the volume
        present = np.flatnonzero(np.bincount(labels.ravel(order="K"), minlength=256))
    else:
        invalid = ~np.isin(labels, VALID_LABELS)
        present = np.unique(labels[invalid]) if invalid.any() else np.array([], dtype=float)
    bad = [v for v in present.tolist() if v not in VALID_LABELS]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:6])
        raise CaseError(case_id, path, f"labels other than 0/1/2/4: {shown} (BraTS 2020 convention expected)")


def _check_uncertainty(case_id: str, path: Path, values: np.ndarray) -> None:
    if values.dtype.kind == "f":
        nan = int(np.isnan(values).sum())
        if nan:
            raise CaseError(case_id, path, f"{nan} NaN value(s) in the uncertainty map")
    lo = values.min() if values.dtype.kind != "u" else 0
    hi = values.max()
    if lo < 0 or hi > 100:
        raise CaseError(case_id, path, f"uncertainty values outside [0, 100]: min {lo:g}, max {hi:g}")


def load_case(submission: CaseFiles, truth: CaseFiles, *, brain_mask: str = "auto") -> CaseInputs:
    """Load and validate one case.

    Args:
        submission: the case's submission files (prediction and three uncertainty maps).
        truth: the case's reference files (truth, and brain mask or T1).
        brain_mask: ``"auto"``: ``{ID}_brainmask`` if present, else ``{ID}_t1`` > 0, else an
            error; ``"none"``: the whole volume counts as brain.

    Returns:
        The validated :class:`CaseInputs`.

    Raises:
        CaseError: a missing file, unreadable file, shape or affine mismatch, invalid labels,
            NaN or out-of-range uncertainty, or no brain mask.
    """
    case_id = submission.case_id
    if brain_mask not in BRAIN_MASK_POLICIES:
        raise ValueError(f"brain_mask must be one of {BRAIN_MASK_POLICIES}")
    missing = [role for role in ("prediction", *REGIONS) if role not in submission.files]
    if missing:
        names = [
            f"{case_id}.nii.gz" if role == "prediction" else f"{case_id}_unc_{UNCERTAINTY_SUFFIX[role]}.nii.gz"
            for role in missing
        ]
        folder = next(iter(submission.files.values())).parent if submission.files else Path()
        raise CaseError(case_id, folder / names[0], f"missing file(s): {', '.join(names)}")
    truth_path = truth.files["truth"]
    truth_data, truth_affine = _load(case_id, truth_path)
    ref = (truth_data.shape, truth_affine, truth_path)
    _check_labels(case_id, truth_path, truth_data)

    pred_path = submission.files["prediction"]
    prediction, affine = _load(case_id, pred_path)
    _check_geometry(case_id, pred_path, prediction, affine, ref)
    _check_labels(case_id, pred_path, prediction)

    maps = {}
    for region in REGIONS:
        path = submission.files[region]
        data, affine = _load(case_id, path)
        _check_geometry(case_id, path, data, affine, ref)
        _check_uncertainty(case_id, path, data)
        maps[region] = data

    mask: np.ndarray | None = None
    source = "whole volume (--no-brain-mask)"
    if brain_mask == "auto":
        for role in ("brainmask", "t1"):
            if role in truth.files:
                path = truth.files[role]
                data, affine = _load(case_id, path)
                _check_geometry(case_id, path, data, affine, ref)
                mask = data > 0
                source = f"{path.name} > 0"
                break
        else:
            raise CaseError(
                case_id,
                truth_path.parent,
                f"no brain mask: neither {case_id}_brainmask.nii.gz nor {case_id}_t1.nii.gz beside the truth "
                "(use --no-brain-mask to count the whole volume)",
            )
    return CaseInputs(case_id, prediction, maps, truth_data, mask, source)
