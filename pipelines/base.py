"""The declarative description of a task pipeline, shared by ``run``, ``train`` and ``evaluate``.

A pipeline says, for one task: which images it takes from a DICOM study (selection rules), how
they are preprocessed (MONAI transforms, recorded in every checkpoint), which network and loss
train it, which metrics judge it, how raw outputs become results, and which files it writes.
The runner (:mod:`pipelines.runner`) and the training and evaluation commands drive any
pipeline through this interface; the task modules only fill it in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medimg.safepath import safe_name

__all__ = ["DatasetError", "ImageResult", "Pipeline", "is_held_out_test", "patient_split"]


class DatasetError(ValueError):
    """A training/evaluation data folder that does not have the expected public layout."""


@dataclass
class ImageResult:
    """One processed image: identifiers, probabilities and pipeline-specific extras.

    Attributes:
        row: the ``results.csv`` row (identifiers, probabilities, prediction, extras).
        heatmap: optional (rows, columns) float32 map in [0, 1] on the source pixel grid.
        image: the preprocessed display image (rows, columns) in [0, 1], for overlays.
        extras: anything else the pipeline's writers need (e.g. a label volume and its affine).
    """

    row: dict[str, Any]
    heatmap: np.ndarray | None = None
    image: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def is_held_out_test(item: Mapping[str, Any]) -> bool:
    """Whether a dataset item belongs to the dataset's own test split (VinDr-Mammo's ``split``
    column reads ``training`` or ``test``): training never uses it, evaluation splits keep it as test."""
    return str(item.get("split") or "").strip().lower() == "test"


def patient_split(patient_ids: Sequence[str], *, seed: int, val_fraction: float = 0.2) -> np.ndarray:
    """Seeded patient-level split: True for validation items; all images of a patient together.

    A patient goes to validation when a hash of (seed, patient ID) falls below
    ``val_fraction``, so the split does not depend on item order or on other patients.

    Returns:
        bool array, one entry per item.
    """

    def u(pid: str) -> float:
        digest = hashlib.sha256(f"{seed}\x1f{pid}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([u(str(pid)) < val_fraction for pid in patient_ids], dtype=bool)


class Pipeline:
    """Base class: a task's declaration. Subclasses set the class variables and hooks.

    Class variables:
        name: CLI name (``pneumonia``, ``density``).
        description: one line for ``--help`` and reports.
        labels: class names, index = class id.
        rules: bundled selection rule set (see :mod:`medimg.dicom.selection`).
        monitor: validation metric that picks the best checkpoint (higher is better).
        default_image_size: network input (X = columns, Y = rows) per architecture.
        result_columns: pipeline-specific ``results.csv`` columns.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    labels: ClassVar[tuple[str, ...]]
    rules: ClassVar[str]
    monitor: ClassVar[str]
    default_image_size: ClassVar[Mapping[str, tuple[int, int]]] = {
        "densenet121": (224, 224),
        "compact": (128, 128),
        "resnet-compact": (128, 128),
        "inception_v3": (320, 320),  # the saliency trust paper's input
    }
    result_columns: ClassVar[tuple[str, ...]] = ()
    #: What one result is: ``"image"`` (2-D: one row per selected image, batched) or ``"study"``
    #: (3-D: the study's selected series together make one case).
    unit: ClassVar[str] = "image"
    #: Architecture ``medimg train`` uses when none is given.
    default_architecture: ClassVar[str] = "densenet121"
    #: Identifier columns that start every ``results.csv`` row.
    id_columns: ClassVar[tuple[str, ...]] = (
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "source_file",
        "selection",
    )

    # --- preprocessing -------------------------------------------------------------------

    def preprocessing(self, architecture: str, image_size: Sequence[int] | None = None) -> dict[str, Any]:
        """JSON-able preprocessing settings, stored in checkpoints and reused at inference."""
        size = list(image_size or self.default_image_size.get(architecture, (224, 224)))
        return {
            "image_size": size,
            "intensity": {"lower_percentile": 0.5, "upper_percentile": 99.5, "range": [0.0, 1.0]},
            "voi": None,
        }

    def transforms(self, preprocessing: Mapping[str, Any], *, train: bool, box_masks: bool = False) -> Any:
        """MONAI dictionary transforms on key ``image`` (a DICOM path) -> (1, X, Y) float32.

        With ``box_masks`` the items' ``boxes`` (``[x, y, w, h]`` in source pixels) also become
        ``box_mask`` (1, X, Y) on the network grid, following every spatial step (resize,
        augmentation) of the image, for box-supervised attention training.
        """
        from monai.transforms import (
            Compose,
            EnsureTyped,
            RandAdjustContrastd,
            RandAffined,
            RandGaussianNoised,
            Resized,
            ScaleIntensityRangePercentilesd,
        )

        from medimg.dicom.transforms import LoadDicomd

        intensity = preprocessing["intensity"]
        spatial = ("image", "box_mask") if box_masks else ("image",)
        steps: list[Any] = [LoadDicomd("image", voi=preprocessing.get("voi"), grey=True)]  # colour -> luminance
        if box_masks:
            steps.append(BoxMaskd())
        steps += [
            ScaleIntensityRangePercentilesd(
                "image",
                lower=intensity["lower_percentile"],
                upper=intensity["upper_percentile"],
                b_min=intensity["range"][0],
                b_max=intensity["range"][1],
                clip=True,
            ),
            Resized(spatial, spatial_size=tuple(preprocessing["image_size"]), mode="area"),
        ]
        if train:
            steps += self.augmentations(spatial) or [
                RandAffined(spatial, prob=0.5, rotate_range=0.1, scale_range=0.1, padding_mode="zeros"),
                RandAdjustContrastd("image", prob=0.3, gamma=(0.8, 1.25)),
                RandGaussianNoised("image", prob=0.3, std=0.02),
            ]
        steps.append(EnsureTyped(spatial, dtype=np.float32, track_meta=not train))
        return Compose(steps)

    def augmentations(self, spatial_keys: Sequence[str] = ("image",)) -> list[Any] | None:
        """Task-specific training augmentations (None: the default set); spatial steps apply to
        ``spatial_keys`` (the image and, for box supervision, its box mask), intensity steps to the image."""
        return None

    # --- data ----------------------------------------------------------------------------

    def load_dataset(self, data_dir: str | Path) -> list[dict[str, Any]]:
        """Items ``{"image": path, "label": int, "patient_id": str, ...}`` of a public layout.

        Raises:
            DatasetError: the folder does not have the layout or its label table is invalid.
        """
        raise NotImplementedError

    # --- metrics and results -------------------------------------------------------------

    def metrics(self, y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
        """Fast validation metrics (no intervals), used while training."""
        raise NotImplementedError

    def evaluate(
        self, y_true: np.ndarray, prob: np.ndarray, *, seed: int = 0, threshold: float | None = None, n_boot: int = 1000
    ) -> dict:
        """Full evaluation with 95% bootstrap intervals (``metrics.json``)."""
        raise NotImplementedError

    def add_evaluation_report(self, report: Any, y_true: np.ndarray, prob: np.ndarray, metrics: Mapping) -> None:
        """Add the evaluation tables and plots to a :class:`medimg.report.Report`."""
        raise NotImplementedError

    # --- running (see pipelines.runner) -------------------------------------------------

    def output_folder(self, study_uid: str, item: Mapping[str, Any]) -> str:
        """Folder (relative to OUT) of a study's outputs and ``study.json``: ``studies/{StudyInstanceUID}``,
        made safe (one component, distinct UIDs never share a folder)."""
        return "studies/" + safe_name(study_uid)

    def plan_files(self, source: Path, out: Path, overwrite: bool, summary: Any) -> list[tuple] | None:
        """Work for inputs that are not DICOM (e.g. a BraTS NIfTI folder), or None to scan DICOM.

        Returns jobs ``(case, folder, items)`` not yet done, recording resumed cases and input
        problems in ``summary`` (see :func:`pipelines.runner.run_pipeline`).
        """
        return None

    def load_extra_models(self, meta: Mapping[str, Any], *, device: str, trust_code: bool = False) -> None:
        """Load the further models a run needs besides ``--weights`` (brats: the ensemble members),
        before any output is written; raise :class:`medimg.models.CheckpointError` for a bad one."""
        return None

    def run_notes(self, model: Any, meta: Mapping[str, Any]) -> list[str]:
        """What a run with this model leaves out or does differently (e.g. no Grad-CAM heat maps for
        a TorchScript model), for ``run.json`` and the report."""
        return []

    def study_items(self, study: Any, chosen: Any) -> list[dict[str, Any]]:
        """For ``unit == "study"``: the work items of a study from what the rules picked."""
        raise NotImplementedError

    def load(self, item: Mapping[str, Any], transform: Any) -> Any:
        """Decode and preprocess one work item (raises on bad input; the runner records it)."""
        return transform(dict(item))["image"]

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
        """Results for a batch of loaded inputs: stack, :meth:`forward`, softmax, :meth:`postprocess`.

        On a CUDA device the pass runs in mixed precision and channels-last (:mod:`medimg.devices`);
        the probabilities and maps are float32 either way."""
        import time

        import torch

        from medimg.devices import inference_precision, to_device

        start = time.perf_counter()
        images = to_device(torch.stack([torch.as_tensor(x) for x in inputs]), device, channels_last=True)
        with torch.no_grad(), inference_precision(device):
            logits, extras = self.forward(model, images, meta)
        prob = torch.softmax(logits.float(), dim=1).cpu().numpy()
        extras = extras.float() if isinstance(extras, torch.Tensor) else extras
        timings["inference"] = timings.get("inference", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        results = self.postprocess(images.cpu(), prob, extras, items, meta)
        timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - start
        return results

    def forward(self, model: Any, images: Any, meta: Mapping) -> tuple[Any, Any]:
        """One forward pass: ``(logits (B, K), extras)``; extras go to :meth:`postprocess`.

        The default returns no extras; a pipeline that needs more from the same pass (e.g. a
        heat map from the last feature map) overrides this rather than running the model twice.
        """
        return model(images), None

    def postprocess(self, images: Any, prob: np.ndarray, extras: Any, items: Sequence[Mapping], meta: Mapping) -> list:
        """Per image: :class:`ImageResult` from the batch's probabilities and forward extras."""
        raise NotImplementedError

    @staticmethod
    def attention_forward(model: Any, images: Any) -> tuple[Any, Any] | None:
        """``(logits, maps (B, 1, X, Y) in [0, 1])`` from a model with the trainable attention gate
        (:mod:`saliency.attention`; each map min-max normalized, a constant map becomes 0), or None
        for a model without one."""
        if not callable(getattr(model, "attention", None)):
            return None
        logits, maps = model.attention(images)
        flat = maps.flatten(1)
        low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
        scaled = (flat - low) / (high - low).clamp_min(1e-12)
        return logits, scaled.reshape(maps.shape)

    @staticmethod
    def source_grid(images: Any, maps: Any, index: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` of the batch and its map resampled from the network grid (X, Y) to the
        source pixel grid in image orientation (rows, columns)."""
        import torch.nn.functional as F

        heat = F.interpolate(maps[index : index + 1], size=(cols, rows), mode="bilinear", align_corners=False)
        image = F.interpolate(images[index : index + 1], size=(cols, rows), mode="bilinear", align_corners=False)
        return image[0, 0].T.cpu().numpy(), heat[0, 0].T.cpu().numpy()

    def write_image_outputs(self, study_dir: Path, result: ImageResult) -> list[str]:
        """Per-image files (e.g. overlay PNGs) in the study's output folder; returns names."""
        return []

    def finalize(self, out: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping) -> list[Path]:
        """Run-level outputs from all result rows (e.g. ``submission.csv``, ``exams.csv``)."""
        return []


class BoxMaskd:
    """Dictionary transform: ``boxes`` (``[x, y, w, h]`` in source pixels) -> ``box_mask`` (1, X, Y) float32.

    Built on the loaded image's grid (MONAI's (X = columns, Y = rows) layout, so box x runs along
    X), 1 inside any box (inclusive of the last pixel), 0 elsewhere; the later spatial transforms
    (resize, augmentation) carry it with the image. Items without boxes get an all-zero mask. The
    ``boxes`` key is removed (variable-length lists cannot be batched).
    """

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        out = dict(data)
        image = out["image"]
        nx, ny = int(image.shape[-2]), int(image.shape[-1])
        mask = torch.zeros((1, nx, ny), dtype=torch.float32)
        for x, y, w, h in out.pop("boxes", None) or []:  # popped: lists of boxes do not collate
            x0, y0 = max(int(x), 0), max(int(y), 0)
            x1, y1 = min(int(x + w), nx - 1), min(int(y + h), ny - 1)
            mask[0, x0 : x1 + 1, y0 : y1 + 1] = 1.0
        from monai.data import MetaTensor

        out["box_mask"] = MetaTensor(mask, affine=getattr(image, "affine", None))
        return out
