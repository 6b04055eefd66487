"""BraTS inputs: finding cases in NIfTI folders, loading the four sequences onto one grid, and
checking whether a case looks like the data a BraTS-trained model expects.

Namings (``--naming``), never guessed:

- ``brats2021``: ``{ID}_t1``, ``_t1ce``, ``_t2``, ``_flair`` (``_seg``); also BraTS 2018-2020.
- ``brats2023``: ``{ID}-t1n``, ``-t1c``, ``-t2w``, ``-t2f`` (``-seg``).
- ``plain``: one folder per case named by the case ID, holding ``t1``, ``t1ce``, ``t2``, ``flair``
  (``seg``) ``.nii.gz`` -- sequences as exported from a scanner or a PACS, not prepared for BraTS.

Reference grid: the T1ce (post-contrast) sequence's source grid. The other sequences are
resampled onto it (trilinear, MONAI ``ResampleToMatch``, through the affines) when their shape or
affine differ. T1ce is the sequence tumour extent is read on and usually the finest one.

Input checks (:func:`input_checks`): BraTS data are skull-stripped, co-registered on one grid and
resampled to 1 mm isotropic voxels; a case that is not gets one warning per difference, so that
results on clinical-grade input are never taken for results on BraTS-like input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from medimg.limits import InputLimitError, NonFiniteError, check_finite, check_size

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = [
    "CHANNEL_ORDER",
    "NAMING",
    "REFERENCE_SEQUENCE",
    "SEQUENCES",
    "CaseInputError",
    "border_nonzero_fraction",
    "find_nifti_cases",
    "input_checks",
    "load_case",
    "quiet_monai",
]

SEQUENCES = ("t1", "t1ce", "t2", "flair")
NAMING: Mapping[str, Mapping[str, str]] = {
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
    # the whole file name (before .nii/.nii.gz); the case ID is the folder's name
    "plain": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
}
#: Namings whose files carry no case ID: the folder holding them is the case.
FOLDER_NAMINGS = frozenset({"plain"})
CHANNEL_ORDER: tuple[str, ...] = ("t1ce", "t1", "t2", "flair")
REFERENCE_SEQUENCE = "t1ce"
#: Above this fraction of non-zero voxels on the faces of a volume, it is not skull-stripped
#: (BraTS volumes: 0; a head scan with its background noise: 0.8-0.9).
BORDER_NONZERO_LIMIT = 0.05
#: Voxel sizes (mm) farther than this from 1 mm are "not 1 mm isotropic".
SPACING_TOLERANCE_MM = 0.05
_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$")
# MONAI 1.6 logs at every LoadImage that its GPU DICOM decoder is absent: expected on a CPU.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_monai() -> Iterator[None]:
    """Silence the MONAI/highdicom warnings that say nothing about the data (listed here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*NvImgCodecPydicomReader.*")
        warnings.filterwarnings("ignore", message="Setting affine, but the applied meta contains an affine")
        warnings.filterwarnings("ignore", message=".*Orientation.__init__:labels.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


class CaseInputError(ValueError):
    """One case cannot be processed; ``case_id`` and ``path`` say which and where."""

    def __init__(self, case_id: str, path: str | os.PathLike[str] | None, message: str):
        self.case_id = case_id
        self.path = str(path) if path is not None else ""
        super().__init__(f"{case_id}: {message}" + (f" ({self.path})" if self.path else ""))

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (CaseInputError, (self.case_id, self.path, str(self).split(": ", 1)[-1]))


def _case_of(stem: str, parent: Path, naming: str, ordered: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """``(case ID, role)`` of a file stem under ``naming``, or None when the stem is not one of its files."""
    for role, suffix in ordered:
        if naming in FOLDER_NAMINGS:
            if stem.lower() == suffix:
                return parent.name, role
        elif stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], role
    return None


def _file_name(naming: str, case_id: str, role: str) -> str:
    suffix = NAMING[naming][role]
    return f"{suffix}.nii.gz" if naming in FOLDER_NAMINGS else f"{case_id}{suffix}.nii.gz"


def find_nifti_cases(
    folder: str | os.PathLike[str], *, naming: str = "brats2021"
) -> tuple[dict[str, dict[str, Path]], list[CaseInputError]]:
    """Cases of a BraTS NIfTI folder (flat, or one sub-folder per case; ``plain``: the folder itself
    or one sub-folder per case).

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
    cases: dict[str, dict[str, Path]] = {}
    errors: list[CaseInputError] = []
    # Longest suffix first, so that "_t1ce" is not read as "_t1" of a case "X_t1ce"-less ID.
    ordered = sorted(NAMING[naming].items(), key=lambda kv: -len(kv[1]))
    for path in sorted(files):
        match = _NIFTI.match(path.name)
        found = _case_of(match.group("stem"), path.parent, naming, ordered) if match else None
        if found is None:
            continue
        case_id, role = found
        roles = cases.setdefault(case_id, {})
        if role in roles:
            errors.append(CaseInputError(case_id, path, f"{role} given twice ({roles[role]} and {path})"))
        else:
            roles[role] = path
    complete = {}
    for case_id, roles in sorted(cases.items()):
        missing = [s for s in SEQUENCES if s not in roles]
        if missing:
            where = next(iter(roles.values())).parent
            names = ", ".join(_file_name(naming, case_id, s) for s in missing)
            errors.append(CaseInputError(case_id, where, f"missing sequence(s): {names}"))
        else:
            complete[case_id] = roles
    return complete, errors


def _load_sequence(case_id: str, source: Path | Sequence[str]) -> Any:
    """A MetaTensor (1, X, Y, Z) with its RAS affine from a NIfTI file or a DICOM series."""
    if isinstance(source, (str, os.PathLike)):
        import nibabel as nib
        import torch
        from monai.data import MetaTensor
        from nibabel.spatialimages import SpatialImage

        name = Path(source).name
        try:
            image = cast(SpatialImage, nib.load(str(source)))
            check_size(image.shape, name)  # from the header, before any data is read
            data = np.asarray(image.get_fdata(dtype=np.float32))
            check_finite(data, name, what="voxel")
        except (InputLimitError, NonFiniteError) as exc:
            raise CaseInputError(case_id, source, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types for broken files
            raise CaseInputError(case_id, source, f"cannot read NIfTI: {type(exc).__name__}: {exc}") from exc
        if data.ndim != 3:
            raise CaseInputError(case_id, source, f"expected a 3-D volume, got shape {data.shape}")
        meta = {"filename_or_obj": str(source), "space": "RAS", "original_affine": image.affine}
        return MetaTensor(torch.from_numpy(data[None]), affine=torch.as_tensor(image.affine), meta=meta)
    from medimg.dicom import DecodeError, SeriesError, load_series

    try:
        return load_series(list(source))
    except (SeriesError, DecodeError, InputLimitError, NonFiniteError) as exc:
        raise CaseInputError(case_id, os.path.dirname(source[0]), str(exc)) from exc


def load_case(
    case_id: str,
    sources: Mapping[str, Path | Sequence[str]],
    *,
    channels: Sequence[str] = CHANNEL_ORDER,
    reference: str = REFERENCE_SEQUENCE,
) -> MetaTensor:
    """The four sequences as one float32 MetaTensor (4, X, Y, Z) on the reference grid.

    ``meta["input_checks"]`` lists what :func:`input_checks` found on the sequences as read.

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
    checks = input_checks(volumes, reference)
    resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")
    stacked = []
    for sequence in channels:
        volume = volumes[sequence]
        if not _same_grid(volume, ref):
            volume = resample(volume, img_dst=ref)
            if float(volume.abs().sum()) == 0.0:
                raise CaseInputError(
                    case_id,
                    _source_name(sources[sequence]),
                    f"{sequence} does not overlap the {reference} field of view",
                )
        stacked.append(torch.as_tensor(volume, dtype=torch.float32)[0])
    meta = {**ref.meta, "input_checks": checks, "reference_sequence": reference}
    return MetaTensor(torch.stack(stacked), affine=ref.affine.clone(), meta=meta)


def _same_grid(volume: Any, ref: Any) -> bool:
    import torch

    return bool(
        volume.shape[1:] == ref.shape[1:] and torch.allclose(volume.affine.double(), ref.affine.double(), atol=1e-3)
    )


def _source_name(source: Path | Sequence[str]) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else os.path.dirname(source[0])


# --- does the case look like BraTS data? ------------------------------------------------------


def border_nonzero_fraction(volume: np.ndarray) -> float:
    """Fraction of non-zero voxels on the six faces of a 3-D volume (0 for a skull-stripped
    volume, whose background is exactly 0; most of the faces for a head with its background noise)."""
    v = np.asarray(volume)
    faces = (v[0], v[-1], v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1])
    return float(sum(int(np.count_nonzero(f)) for f in faces) / sum(f.size for f in faces))


def _spacing(affine: Any) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def _shape(volume: Any) -> str:
    return "x".join(str(int(n)) for n in volume.shape[1:])


def input_checks(volumes: Mapping[str, Any], reference: str = REFERENCE_SEQUENCE) -> list[str]:
    """Warnings where a case differs from BraTS data (empty for a BraTS case); none holds a ``;``,
    which joins them in ``results.csv``.

    Args:
        volumes: per sequence a MetaTensor (1, X, Y, Z) as read, before any resampling.
        reference: the sequence the others are resampled onto.

    Checks: skull-stripping (:func:`border_nonzero_fraction` above ``BORDER_NONZERO_LIMIT`` in any
    sequence), 1 mm isotropic voxels (each sequence within ``SPACING_TOLERANCE_MM``), and one grid
    for all sequences (same shape and affine, i.e. co-registered).
    """
    found = []
    border = {s: border_nonzero_fraction(np.asarray(v[0])) for s, v in volumes.items()}
    stripped_not = {s: f for s, f in border.items() if f > BORDER_NONZERO_LIMIT}
    if stripped_not:
        fractions = ", ".join(f"{s} {f:.0%}" for s, f in stripped_not.items())
        found.append(
            f"not skull-stripped: non-zero voxels on the volume border ({fractions}), "
            "where skull-stripped BraTS volumes have a zero background"
        )
    spacings = {s: _spacing(v.affine) for s, v in volumes.items()}
    off = {s: sp for s, sp in spacings.items() if np.abs(sp - 1.0).max() > SPACING_TOLERANCE_MM}
    if off:
        shown = {s: "x".join(f"{x:.2f}" for x in sp) + " mm" for s, sp in off.items()}
        if len(set(shown.values())) == 1 and len(off) == len(volumes):
            sizes = f"{next(iter(shown.values()))} in every sequence"
        else:
            sizes = ", ".join(f"{s} {size}" for s, size in shown.items())
        found.append(f"not 1 mm isotropic: voxels {sizes}, where BraTS volumes are resampled to 1 mm")
    ref = volumes[reference]
    if not all(_same_grid(v, ref) for v in volumes.values()):
        grids = ", ".join(f"{s} {_shape(v)}" for s, v in volumes.items())
        found.append(
            f"sequences on different grids, not co-registered ({grids}): resampled onto the {reference} "
            "grid, where BraTS sequences share one grid"
        )
    return found
