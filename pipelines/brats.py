"""Brain-tumour segmentation (BraTS): inputs, label conventions, preprocessing and inference.

Work in progress toward the full pipeline (issue: pipelines/brats + uncertainty estimation);
what is here is complete and tested: finding cases in BraTS NIfTI folders, loading the four
sequences (NIfTI or DICOM series) onto one reference grid, the label conventions and their
TC/WT/ET channels, and sliding-window inference mapped back to the source grid.

Configuration, never guessed:

- ``naming``: ``brats2021`` (``{ID}_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``; also BraTS 2020),
  ``brats2023`` (``{ID}-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``) or ``plain`` (a folder per
  case with ``t1``, ``t1ce``, ``t2``, ``flair``); see :mod:`pipelines.brats_inputs`.
- ``labels``: ``brats2020`` (1 NCR, 2 ED, 4 ET; BraTS 2018-2022) or ``brats2023`` (1 NETC,
  2 SNFH, 3 ET). Regions: TC = NCR + ET, WT = TC + ED, ET. The network predicts the regions, so
  the output's convention is a choice per run (``label_convention``): ``auto`` writes the
  convention of the input's naming (:func:`choose_label_convention`).
- ``channels``: the network's input order, default ``t1ce, t1, t2, flair`` (MONAI's BraTS bundle).

Reference grid: the T1ce (post-contrast) sequence's source grid; the other sequences are
resampled onto it, and the labels are written on it with its affine. A case that does not look
like BraTS data (not skull-stripped, not 1 mm isotropic, sequences on different grids) is run
with warnings in ``results.csv`` (``input_check``) and the report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from medimg.safepath import inside, safe_name, short_hash
from pipelines.base import ImageResult, Pipeline
from pipelines.brats_inputs import (
    CHANNEL_ORDER,
    NAMING,
    REFERENCE_SEQUENCE,
    SEQUENCES,
    CaseInputError,
    find_nifti_cases,
    load_case,
    quiet_monai,
)

if TYPE_CHECKING:
    from monai.transforms import Compose

__all__ = [
    "BratsPipeline",
    "CHANNEL_ORDER",
    "LABEL_CONVENTIONS",
    "LABEL_CONVENTION_CHOICES",
    "NAMING",
    "REGION_CHANNELS",
    "CaseInputError",
    "CaseLoader",
    "PreparedCase",
    "channels_to_labels",
    "choose_label_convention",
    "convert_labels",
    "find_nifti_cases",
    "labels_to_channels",
    "load_case",
    "quiet_monai",
    "region_volumes_ml",
    "segment",
]

LABEL_CONVENTIONS: Mapping[str, Mapping[str, int]] = {
    "brats2020": {"NCR": 1, "ED": 2, "ET": 4},
    "brats2023": {"NCR": 1, "ED": 2, "ET": 3},
}
#: ``--label-convention``: ``auto`` follows the input's naming (see :func:`choose_label_convention`).
LABEL_CONVENTION_CHOICES = ("auto", *LABEL_CONVENTIONS)
#: The convention of each naming under ``auto``; a DICOM study or plain names carry none: BraTS 2021.
_NAMING_CONVENTION = {"brats2021": "brats2020", "brats2023": "brats2023", "plain": "brats2020", "dicom": "brats2020"}
_NAMING_WHY = {
    "brats2021": "BraTS 2021 file naming (_t1/_t1ce/_t2/_flair)",
    "brats2023": "BraTS 2023 file naming (-t1n/-t1c/-t2w/-t2f)",
    "plain": "plain sequence names say no BraTS edition: the BraTS 2021 labels",
    "dicom": "a DICOM study says no BraTS edition: the BraTS 2021 labels",
}
#: Output channels of the network (sigmoid each), as in MONAI's BraTS bundle.
REGION_CHANNELS: tuple[str, ...] = ("TC", "WT", "ET")


def choose_label_convention(setting: str, naming: str) -> tuple[str, str]:
    """``(convention, why)`` of the output labels of a case.

    Args:
        setting: ``auto``, ``brats2020`` or ``brats2023`` (``--label-convention``).
        naming: the input's naming (``brats2021``, ``brats2023``, ``plain``) or ``dicom``.

    ``auto``: BraTS 2023 naming -> ``brats2023`` (1 NETC, 2 SNFH, 3 ET); any other input ->
    ``brats2020`` (1 NCR, 2 ED, 4 ET; the BraTS 2018-2022 and 2021 convention).
    """
    if setting not in LABEL_CONVENTION_CHOICES:
        raise ValueError(f"unknown label convention {setting!r}; choose from {list(LABEL_CONVENTION_CHOICES)}")
    if setting != "auto":
        chosen, why = setting, "set by --label-convention"
    else:
        chosen, why = _NAMING_CONVENTION[naming], f"auto: {_NAMING_WHY[naming]}"
    codes = LABEL_CONVENTIONS[chosen]
    return chosen, f"{why}; ET = {codes['ET']}"


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


def convert_labels(labels: np.ndarray, source: str, target: str) -> np.ndarray:
    """A label volume from one convention to another (``brats2023`` ET 3 <-> ``brats2020`` ET 4).

    Raises:
        ValueError: labels outside the ``source`` convention.
    """
    return channels_to_labels(labels_to_channels(labels, source), target)


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


class PreparedCase(NamedTuple):
    """A loaded case (on its source grid) and its tensor preprocessed for the network
    (:func:`preprocessing_transforms`), made together in the load stage of a run."""

    case: Any
    prepared: Any


class CaseLoader:
    """The load stage of a case (picklable, for the loading processes): read the four sequences in
    ``channels`` order onto one grid, then preprocess with ``spacing``."""

    def __init__(self, channels: Sequence[str], spacing: Sequence[float] | None) -> None:
        self.channels = tuple(channels)
        self.spacing = spacing

    def __call__(self, item: Mapping[str, Any]) -> PreparedCase:
        case = load_case(item["case_id"], item["sources"], channels=self.channels)
        return PreparedCase(case, preprocessing_transforms(self.spacing)(case))


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
    result_columns = (
        "WT_ml",
        "TC_ml",
        "ET_ml",
        "labels_file",
        "seg_file",
        "uncertainty",
        "uncertainty_files",
        "label_convention",
        "label_convention_why",
        "input_check",
    )

    def __init__(self) -> None:
        self.naming = "brats2021"
        self.label_convention = "auto"
        self.uncertainty: str | None = None
        self.samples = 8
        self.ensemble_weights: list[str] = []
        #: The loaded ensemble members (:meth:`load_extra_models`), None until loaded.
        self._members: list[Any] | None = None

    def configure(
        self,
        *,
        naming: str = "brats2021",
        uncertainty: str | None = None,
        samples: int = 8,
        ensemble_weights: Sequence[str] = (),
        label_convention: str = "auto",
    ) -> BratsPipeline:
        """Input naming (NIfTI), uncertainty method (``tta``, ``mc-dropout``, ``ensemble``) and its
        samples; for ``ensemble``, the further checkpoints averaged with the main one; the output
        labels' convention (``auto``, ``brats2020``, ``brats2023``; :func:`choose_label_convention`)."""
        from uncertainty.estimation import SUPPORTED_METHODS

        if naming not in NAMING:
            raise ValueError(f"unknown naming {naming!r}; choose from {sorted(NAMING)}")
        if label_convention not in LABEL_CONVENTION_CHOICES:
            raise ValueError(
                f"unknown label convention {label_convention!r}; choose from {list(LABEL_CONVENTION_CHOICES)}"
            )
        self.label_convention = label_convention
        if uncertainty is not None and uncertainty not in SUPPORTED_METHODS:
            raise ValueError(f"unknown uncertainty method {uncertainty!r}; choose from {SUPPORTED_METHODS}")
        if uncertainty == "ensemble" and not ensemble_weights:
            raise ValueError("uncertainty 'ensemble' needs further checkpoints (--ensemble-weights)")
        self.naming, self.uncertainty, self.samples = naming, uncertainty, samples
        self.ensemble_weights = [str(w) for w in ensemble_weights]
        self._members = None
        return self

    def load_extra_models(self, meta: Mapping[str, Any], *, device: str, trust_code: bool = False) -> None:
        """Load the ``ensemble`` members (any model kind, :func:`medimg.model_sources.load_model`;
        each beside its own card, if any) once; they must read the channels in the main model's order.

        Raises:
            medimg.model_sources.ModelSourceError: a member cannot be loaded, or reads its input
                channels in another order than the main model (the message names the file).
        """
        from medimg.model_sources import ModelSourceError, load_model

        if self.uncertainty != "ensemble":
            self._members = []
            return
        channels = list(meta["preprocessing"].get("channels", CHANNEL_ORDER))
        members = []
        for path in self.ensemble_weights:
            member, member_meta = load_model(path, pipeline=self.name, map_location=device, trust_code=trust_code)
            theirs = list(member_meta["preprocessing"].get("channels", CHANNEL_ORDER))
            if theirs != channels:
                raise ModelSourceError(
                    f"ensemble member {path} reads the channels as {theirs}, the main model as {channels}: "
                    "an ensemble's models must read them in one order"
                )
            members.append(member)
        self._members = members

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
        """:class:`CaseLoader`: a case in the checkpoint's channel order, with its preprocessed tensor.

        ``train`` and ``box_masks`` (box supervision of the 2-D attention gate) change nothing here.
        """
        return CaseLoader(tuple(preprocessing.get("channels", CHANNEL_ORDER)), preprocessing.get("spacing"))

    def run_notes(self, model: Any, meta: Mapping[str, Any]) -> list[str]:
        """A bundle or card threshold other than 0.5: the labels are still cut at 0.5."""
        stated = ((meta.get("source") or {}).get("values") or {}).get("threshold") or {}
        value = stated.get("value")
        if isinstance(value, (int, float)) and float(value) != 0.5:
            return [
                f"The model states a threshold of {value} ({stated.get('from', '')}); medimg cuts the region "
                "probabilities at 0.5."
            ]
        return []

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
            return self._other_naming_hint(source, summary)
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
                **self._convention_of(self.naming),
            }
            folder = inside(out, out / self.output_folder(case_id, item))
            summary.folders[case_id] = folder.name
            if not resume_study(folder, overwrite, summary):
                jobs.append((case_id, folder, [item]))
        return jobs

    def _other_naming_hint(self, source: Path, summary: Any) -> list[tuple] | None:
        """None (a DICOM folder) unless another naming finds NIfTI cases in ``source``: then an error
        line that names it, and no jobs (the naming is never guessed)."""
        for naming in NAMING:
            found, _ = find_nifti_cases(source, naming=naming) if naming != self.naming else ({}, [])
            if found:
                summary.errors.append(
                    {
                        "kind": "error",
                        "path": str(source),
                        "reason": f"no case with the {self.naming} naming: --naming {naming} finds "
                        f"{len(found)} case(s) ({', '.join(list(found)[:3])})",
                    }
                )
                return []
        return None

    def _convention_of(self, naming: str) -> dict[str, str]:
        convention, why = choose_label_convention(self.label_convention, naming)
        return {"label_convention": convention, "label_convention_why": why}

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
                **self._convention_of("dicom"),
            }
        ]

    def load(self, item: Mapping[str, Any], transform: Any) -> Any:
        with quiet_monai():
            return transform(item)

    def _predictor(self, meta: Mapping[str, Any], device: str) -> Any:
        """``predict(model, x)``: sigmoid region probabilities (float32) by sliding windows, in mixed
        precision on a CUDA device (:mod:`medimg.devices`)."""
        import torch
        from monai.inferers import sliding_window_inference

        from medimg.devices import inference_precision, to_device

        pre = meta["preprocessing"]

        def predict(model: Any, x: Any) -> Any:
            with inference_precision(device):
                logits = sliding_window_inference(
                    to_device(x, device),
                    roi_size=tuple(pre["roi_size"]),
                    sw_batch_size=1,
                    predictor=model,
                    overlap=float(pre.get("overlap", 0.5)),
                    mode="gaussian",
                )
            return torch.sigmoid(cast(torch.Tensor, logits).float())

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

        with quiet_monai():
            predict = self._predictor(meta, device)
            models = [model]
            if self.uncertainty == "ensemble":
                if self._members is None:
                    self.load_extra_models(meta, device=device)
                models += list(self._members or [])
            results = []
            for loaded, item in zip(inputs, items, strict=True):
                start = time.perf_counter()
                case, prepared = (
                    loaded
                    if isinstance(loaded, PreparedCase)
                    else (loaded, preprocessing_transforms(meta["preprocessing"].get("spacing"))(loaded))
                )
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
                results.append(self._result(prob, maps, prepared, case, item, meta))
                timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - start
            return results

    def _result(
        self, prob: Any, maps: Any, prepared: Any, case: Any, item: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> ImageResult:
        """Labels (in the case's label convention), volumes and uncertainty maps on the case's source
        (reference) grid, with the convention chosen and the input checks in the row.

        The convention: the item's (set by the run's planning), else the configured one, else (an
        item made elsewhere, e.g. by ``evaluate``, under ``auto``) the checkpoint's."""
        if "label_convention" in item:
            convention, why = item["label_convention"], item.get("label_convention_why", "")
        elif self.label_convention != "auto":
            naming = "dicom" if item.get("source") == "dicom" else self.naming
            convention, why = choose_label_convention(self.label_convention, naming)
        else:
            convention = meta["preprocessing"].get("labels", "brats2020")
            why = f"the checkpoint's label convention; ET = {LABEL_CONVENTIONS[convention]['ET']}"
        labels = channels_to_labels(_to_source_grid(prob, prepared, case) > 0.5, convention)
        row: dict[str, Any] = {
            **region_volumes_ml(labels, np.asarray(case.affine), convention),
            "label_convention": convention,
            "label_convention_why": why,
            "input_check": "; ".join(case.meta.get("input_checks", [])),
        }
        extras = {"labels": labels, "affine": np.asarray(case.affine, dtype=np.float64), "item": dict(item)}
        extras["label_convention"] = convention
        if maps is not None:
            unc = np.clip(np.round(_to_source_grid(maps, prepared, case)), 0, 100).astype(np.uint8)
            extras["uncertainty"] = dict(zip(("whole", "core", "enhance"), unc, strict=True))
            row["uncertainty"] = self.uncertainty
        if item.get("source") == "dicom":
            extras["seg_sources"] = list(case.meta.get("source_files", []))
        return ImageResult(row=row, heatmap=None, image=None, extras=extras)

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

            # the SEG names each region by its code, not by a label value: it holds the 2020 values
            seg_labels = convert_labels(extras["labels"], extras.get("label_convention", "brats2020"), "brats2020")
            present = [v for v in (1, 2, 4) if (seg_labels == v).any()] or [1]
            name = f"{case_id}_SEG.dcm"
            with quiet_monai():
                write_seg(seg_labels, extras["seg_sources"], study_dir / name, label_values=present)
            result.row["seg_file"] = name
            names.append(name)
        return names
