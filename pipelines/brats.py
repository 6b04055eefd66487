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
from medimg.safepath import inside, safe_name, short_hash
from pipelines.base import ImageResult, Pipeline

if TYPE_CHECKING:
    from monai.data import MetaTensor
    from monai.transforms import Compose

__all__ = [
    "BratsPipeline",
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


def preprocessing_transforms(spacing: Sequence[float] | None) -> Compose:
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

    Preprocess (orientation, spacing, normalization), ``sliding_window_inference`` with gaussian
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


# --- the pipeline ----------------------------------------------------------------------------


def _to_source_grid(array: Any, prepared: Any, case: Any) -> np.ndarray:
    """(R, *spatial) values on the preprocessed grid -> the case's grid (trilinear, by affines)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    moved = MetaTensor(torch.as_tensor(array, dtype=torch.float32), affine=prepared.affine, meta=dict(prepared.meta))
    return np.asarray(ResampleToMatch(mode="bilinear")(moved, img_dst=case), dtype=np.float32)


class BratsPipeline(Pipeline):
    """Brain-tumour segmentation; configure with :meth:`configure` before running."""

    name = "brats"
    description = "Brain-tumour segmentation (BraTS): labels, volumes, DICOM SEG, QU-BraTS uncertainty maps"
    labels = REGION_CHANNELS
    rules = "brain_mr"
    monitor = "dice_mean"
    unit = "study"
    default_architecture = "segresnet"
    id_columns = ("case_id", "PatientID", "StudyInstanceUID", "source", "source_file")
    result_columns = ("WT_ml", "TC_ml", "ET_ml", "labels_file", "seg_file", "uncertainty", "uncertainty_files")

    def __init__(self) -> None:
        self.naming = "brats2021"
        self.uncertainty: str | None = None
        self.samples = 8
        self.ensemble_weights: list[str] = []

    def configure(
        self,
        *,
        naming: str = "brats2021",
        uncertainty: str | None = None,
        samples: int = 8,
        ensemble_weights: Sequence[str] = (),
    ) -> BratsPipeline:
        """Input naming (NIfTI), uncertainty method (``tta``, ``mc-dropout``, ``ensemble``) and its
        samples; for ``ensemble``, the further checkpoints averaged with the main one."""
        from uncertainty.estimation import SUPPORTED_METHODS

        if naming not in NAMING:
            raise ValueError(f"unknown naming {naming!r}; choose from {sorted(NAMING)}")
        if uncertainty is not None and uncertainty not in SUPPORTED_METHODS:
            raise ValueError(f"unknown uncertainty method {uncertainty!r}; choose from {SUPPORTED_METHODS}")
        if uncertainty == "ensemble" and not ensemble_weights:
            raise ValueError("uncertainty 'ensemble' needs further checkpoints (--ensemble-weights)")
        self.naming, self.uncertainty, self.samples = naming, uncertainty, samples
        self.ensemble_weights = [str(w) for w in ensemble_weights]
        return self

    def preprocessing(self, architecture: str, image_size: Sequence[int] | None = None) -> dict[str, Any]:
        return {
            "channels": list(CHANNEL_ORDER),
            "labels": "brats2020",
            "spacing": None,
            "roi_size": list(image_size or (96, 96, 64)),
            "overlap": 0.5,
            "intensity": "per-channel z-score over non-zero voxels",
        }

    def transforms(self, preprocessing: Mapping[str, Any], *, train: bool, box_masks: bool = False) -> Any:
        """Loader of a case in the checkpoint's channel order (intensity preprocessing is in infer()).

        ``train`` and ``box_masks`` (box supervision of the 2-D attention gate) change nothing here.
        """
        channels = tuple(preprocessing.get("channels", CHANNEL_ORDER))

        def load(item: Mapping[str, Any]) -> Any:
            return load_case(item["case_id"], item["sources"], channels=channels)

        return load

    def output_folder(self, study_uid: str, item: Mapping[str, Any]) -> str:
        """``{case ID}`` for a NIfTI case; ``{case ID}_{hash of StudyInstanceUID}`` for a DICOM study
        (the case ID is its PatientID, shared by all the patient's studies), each made safe."""
        case = safe_name(item["case_id"])
        if item.get("source") == "dicom" and str(study_uid) != str(item["case_id"]):
            return f"{case}_{short_hash(study_uid)}"
        return case

    def plan_files(self, source: Path, out: Path, overwrite: bool, summary: Any) -> list[tuple] | None:
        from pipelines.runner import resume_study

        cases, errors = find_nifti_cases(source, naming=self.naming)
        if not cases and not errors:
            return None  # no NIfTI cases: a DICOM folder
        for error in errors:
            summary.errors.append(
                {"kind": "error", "PatientID": error.case_id, "path": error.path, "reason": str(error)}
            )
        jobs = []
        for case_id, roles in cases.items():
            item = {
                "case_id": case_id,
                "PatientID": case_id,
                "StudyInstanceUID": case_id,
                "source": "nifti",
                "source_file": str(roles["t1ce"].parent),
                "sources": {s: str(roles[s]) for s in SEQUENCES},
            }
            folder = inside(out, out / self.output_folder(case_id, item))
            summary.folders[case_id] = folder.name
            if not resume_study(folder, overwrite, summary):
                jobs.append((case_id, folder, [item]))
        return jobs

    def study_items(self, study: Any, chosen: Any) -> list[dict[str, Any]]:
        sources = {name: items[0][0].files for name, items in chosen.picked.items() if items}
        return [
            {
                "case_id": study.PatientID or study.StudyInstanceUID,
                "PatientID": study.PatientID,
                "StudyInstanceUID": study.StudyInstanceUID,
                "source": "dicom",
                "source_file": os.path.dirname(sources[REFERENCE_SEQUENCE][0]),
                "sources": sources,
            }
        ]

    def load(self, item: Mapping[str, Any], transform: Any) -> Any:
        with quiet_monai():
            return transform(item)

    def _predictor(self, meta: Mapping[str, Any], device: str) -> Any:
        import torch
        from monai.inferers import sliding_window_inference

        pre = meta["preprocessing"]

        def predict(model: Any, x: Any) -> Any:
            logits = sliding_window_inference(
                x.to(device),
                roi_size=tuple(pre["roi_size"]),
                sw_batch_size=1,
                predictor=model,
                overlap=float(pre.get("overlap", 0.5)),
                mode="gaussian",
            )
            return torch.sigmoid(cast(torch.Tensor, logits))

        return predict

    def infer(
        self,
        model: Any,
        inputs: Sequence[Any],
        items: Sequence[Mapping],
        meta: Mapping,
        *,
        device: str,
        timings: dict[str, float],
    ) -> list[ImageResult]:
        import time

        import torch

        from medimg.models import load_checkpoint

        with quiet_monai():
            predict = self._predictor(meta, device)
            models = [model]
            if self.uncertainty == "ensemble":
                models += [
                    load_checkpoint(w, pipeline=self.name, map_location=device)[0] for w in self.ensemble_weights
                ]
            results = []
            for case, item in zip(inputs, items, strict=True):
                start = time.perf_counter()
                prepared = preprocessing_transforms(meta["preprocessing"].get("spacing"))(case)
                batch = prepared.unsqueeze(0)
                maps = None
                with torch.no_grad():
                    if self.uncertainty is None:
                        prob = predict(model, batch)[0].cpu()
                    else:
                        from uncertainty.estimation import estimate_uncertainty

                        estimate = estimate_uncertainty(
                            predict,
                            batch,
                            models,
                            method=self.uncertainty,
                            samples=self.samples,
                            regions={r: i for i, r in enumerate(REGION_CHANNELS)},
                        )
                        prob = estimate.mean_probability.cpu()
                        maps = torch.stack([estimate.maps[r].cpu() for r in ("WT", "TC", "ET")])
                timings["inference"] = timings.get("inference", 0.0) + time.perf_counter() - start
                start = time.perf_counter()
                prob_src = _to_source_grid(prob, prepared, case)
                labels = channels_to_labels(prob_src > 0.5, meta["preprocessing"].get("labels", "brats2020"))
                row: dict[str, Any] = {
                    **region_volumes_ml(
                        labels, np.asarray(case.affine), meta["preprocessing"].get("labels", "brats2020")
                    )
                }
                extras = {"labels": labels, "affine": np.asarray(case.affine, dtype=np.float64), "item": dict(item)}
                if maps is not None:
                    unc = np.clip(np.round(_to_source_grid(maps, prepared, case)), 0, 100).astype(np.uint8)
                    extras["uncertainty"] = dict(zip(("whole", "core", "enhance"), unc, strict=True))
                    row["uncertainty"] = self.uncertainty
                if item.get("source") == "dicom":
                    extras["seg_sources"] = list(case.meta.get("source_files", []))
                timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - start
                results.append(ImageResult(row=row, heatmap=None, image=None, extras=extras))
            return results

    def write_image_outputs(self, study_dir: Path, result: ImageResult) -> list[str]:
        from medimg.writers import write_nifti_array

        extras = result.extras
        case_id = safe_name(extras["item"]["case_id"])
        names = [f"{case_id}.nii.gz"]
        write_nifti_array(study_dir / names[0], extras["labels"], extras["affine"])
        for suffix, values in extras.get("uncertainty", {}).items():
            names.append(f"{case_id}_unc_{suffix}.nii.gz")
            write_nifti_array(study_dir / names[-1], values, extras["affine"])
        result.row["labels_file"] = names[0]
        result.row["uncertainty_files"] = " ".join(names[1:])
        if extras.get("seg_sources"):
            from medimg.dicom.seg import write_seg

            present = [v for v in (1, 2, 4) if (extras["labels"] == v).any()] or [1]
            name = f"{case_id}_SEG.dcm"
            with quiet_monai():
                write_seg(extras["labels"], extras["seg_sources"], study_dir / name, label_values=present)
            result.row["seg_file"] = name
            names.append(name)
        return names
