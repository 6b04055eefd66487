"""Chest X-ray pneumonia: probability, Grad-CAM heat map and boxes per frontal radiograph.

- Input: the frontal (PA/AP) CR/DX image of each study (``chest_xray`` selection rules).
- Training data: the RSNA Pneumonia Detection layout, ``stage_2_train_images/<patientId>.dcm``
  and ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``; one row per box); or
  PNG/JPEG images with an NIH ChestX-ray14 or CheXpert-style table (:mod:`medimg.image_datasets`,
  label policy :attr:`PneumoniaPipeline.label_policy`).
- Run input: a DICOM folder, or a folder of PNG/JPEG images (no DICOM in it); an image's
  ``StudyInstanceUID``, ``SeriesInstanceUID`` and ``SOPInstanceUID`` columns then hold its path
  relative to the folder, and ``PatientID`` what the folder's NIH/CheXpert table says (else empty).
- Outputs: ``results.csv`` (probability per image), one overlay PNG per image (heat map and
  boxes), and ``submission.csv`` in the RSNA format: ``patientId,PredictionString`` with
  ``confidence x y width height`` groups in source pixels (top-left corner), for images whose
  probability reaches the operating threshold (stored in the checkpoint, else 0.5); an image
  file's ``patientId`` is its relative path.
- Boxes: connected regions of the heat map above half its maximum, on the source pixel grid;
  a box's confidence is the image probability times the region's peak heat.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medimg.image_datasets import ImageDatasetError, LabelPolicy, describe_problems, load_image_dataset
from medimg.limits import constant_image_warning
from medimg.safepath import safe_name
from medimg.writers import write_csv
from pipelines.base import DatasetError, ImageResult, Pipeline

__all__ = ["PneumoniaPipeline", "boxes_from_heatmap", "gradcam_plan"]


def gradcam_plan(model: Any, meta: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(layer, None)`` when Grad-CAM can run on ``model``, else ``(None, why not)``.

    The layer is the one the model's meta names (a bundle's known network, a model card's
    ``gradcam_layer``), else its architecture's. TorchScript modules refuse forward hooks
    (``register_forward_hook is not supported on ScriptModules``, also under captum's
    ``LayerGradCam``) and a ``torch.export`` program keeps no layer modules (its ReLUs and linear
    head are graph operations), so neither gets heat maps.
    """
    import torch

    from medimg.models import model_gradcam_layer

    kind = meta.get("architecture")
    if kind in ("torchscript", "torch.export"):
        hooks = "refuses forward hooks" if kind == "torchscript" else "has no layer modules to hook"
        return None, (
            f"No Grad-CAM heat maps or boxes: a {kind} model {hooks}; the probabilities are unaffected. "
            "Export the model as a MONAI bundle (model.pt + network_def) for heat maps."
        )
    layer = model_gradcam_layer(meta)
    if layer is None:
        return None, (
            "No Grad-CAM heat maps or boxes: the model does not say which layer to hook; write gradcam_layer "
            "(the last feature map before pooling) in its model card."
        )
    if layer not in dict(model.named_modules()):
        return None, f"No Grad-CAM heat maps or boxes: the model has no layer {layer!r} (gradcam_layer)."
    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        return None, "No Grad-CAM heat maps or boxes: the model has no linear head after its feature map."
    return layer, None


def boxes_from_heatmap(
    heatmap: np.ndarray, *, level: float = 0.5, min_area_fraction: float = 0.002
) -> list[tuple[int, int, int, int, float]]:
    """Boxes around the connected regions of ``heatmap >= level * max``.

    Args:
        heatmap: (rows, columns) map in [0, 1].
        level: fraction of the maximum that delimits a region.
        min_area_fraction: regions smaller than this fraction of the image are dropped.

    Returns:
        ``(x, y, width, height, peak)`` per region, x = column and y = row of the top-left
        corner (RSNA convention), sorted by peak, highest first.
    """
    from skimage.measure import label, regionprops

    if heatmap.size == 0 or float(heatmap.max()) <= 0:
        return []
    mask = heatmap >= level * float(heatmap.max())
    out = []
    for region in regionprops(label(mask), intensity_image=heatmap):
        if region.area < min_area_fraction * heatmap.size:
            continue
        r0, c0, r1, c1 = region.bbox
        out.append((int(c0), int(r0), int(c1 - c0), int(r1 - r0), float(region.intensity_max)))
    return sorted(out, key=lambda b: -b[4])


class PneumoniaPipeline(Pipeline):
    name = "pneumonia"
    description = "Chest X-ray pneumonia: probability, Grad-CAM heat map and boxes (RSNA format)"
    labels = ("no_pneumonia", "pneumonia")
    rules = "chest_xray"
    monitor = "roc_auc"
    result_columns = ("probability", "predicted", "n_boxes", "ViewPosition", "heatmap", "overlay", "warning")
    #: PNG/JPEG datasets: the finding that is the label, and what CheXpert's uncertain (-1) and
    #: blank labels become (default: uncertain images left out, blank negative).
    label_policy: LabelPolicy = LabelPolicy()

    def __init__(self) -> None:
        #: Images left out of the last :meth:`load_dataset` for a problem (listed, not raised).
        self.dataset_problems: list[str] = []

    def transforms(self, preprocessing: Mapping[str, Any], *, train: bool, box_masks: bool = False) -> Any:
        """The base transforms, whose loader also reads PNG/JPEG paths (:mod:`medimg.pictures`)."""
        from monai.transforms import Compose

        from medimg.picture_transforms import LoadPictureOrDicomd

        first, *rest = super().transforms(preprocessing, train=train, box_masks=box_masks).transforms
        return Compose([LoadPictureOrDicomd(first), *rest])

    def load_dataset(self, data_dir: str | Path) -> list[dict[str, Any]]:
        data_dir = Path(data_dir)
        table = data_dir / "stage_2_train_labels.csv"
        images = data_dir / "stage_2_train_images"
        self.dataset_problems = []
        if not table.is_file():
            return self._load_image_dataset(data_dir)
        if not images.is_dir():
            images = data_dir
        patients: dict[str, dict[str, Any]] = {}
        with open(table, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"patientId", "x", "y", "width", "height", "Target"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetError(f"{table}: missing column(s) {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                pid = row["patientId"].strip()
                try:
                    target = int(float(row["Target"]))
                    box = [float(row[k]) for k in ("x", "y", "width", "height")] if target else None
                except ValueError as exc:
                    raise DatasetError(f"{table}, line {line}: {exc}") from exc
                item = patients.setdefault(pid, {"patient_id": pid, "label": 0, "boxes": []})
                item["label"] = max(item["label"], target)
                if box is not None:
                    item["boxes"].append(box)
        if not patients:
            raise DatasetError(f"{table}: no rows")
        items, absent = [], []
        for pid, item in sorted(patients.items()):
            path = images / f"{pid}.dcm"
            if path.is_file():
                items.append({"image": str(path), **item})
            else:
                absent.append(pid)
        if absent:
            raise DatasetError(f"{images}: {len(absent)} labelled patient(s) have no DICOM file, e.g. {absent[0]}.dcm")
        return items

    def _load_image_dataset(self, data_dir: Path) -> list[dict[str, Any]]:
        """Items of an NIH ChestX-ray14 or CheXpert-style PNG/JPEG folder; images with a problem are
        left out, listed in :attr:`dataset_problems` and in one warning."""
        try:
            found = load_image_dataset(data_dir, self.label_policy)
        except ImageDatasetError as exc:
            raise DatasetError(str(exc)) from exc
        if found is None:
            raise DatasetError(
                f"{data_dir}: no stage_2_train_labels.csv (RSNA Pneumonia layout), no Data_Entry_2017.csv "
                "(NIH ChestX-ray14) and no CSV with a Path column (CheXpert)"
            )
        self.dataset_problems = found.problems
        if found.problems:
            warnings.warn(
                f"{data_dir}: {len(found.problems)} image(s) left out:\n{describe_problems(found.problems)}",
                stacklevel=2,
            )
        if not found.items:
            raise DatasetError(f"{data_dir}: no usable labelled image ({found.layout} layout)")
        return found.items

    def plan_files(self, source: Path, out: Path, overwrite: bool, summary: Any) -> list[tuple] | None:
        """One job per PNG/JPEG image of a folder without DICOM files (None: a DICOM folder)."""
        from medimg.pictures import find_pictures, has_dicom_files
        from pipelines.picture_runs import plan_pictures

        pictures = find_pictures(source)
        if not pictures or has_dicom_files(source):
            return None
        return plan_pictures(self, source, pictures, out, overwrite, summary)

    def metrics(self, y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
        from medimg.evaluation import binary_metrics

        m = binary_metrics(np.asarray(y_true), np.asarray(prob)[:, 1])
        return {k: float(m[k]) for k in ("roc_auc", "pr_auc", "sensitivity", "specificity")}

    def evaluate(
        self, y_true: np.ndarray, prob: np.ndarray, *, seed: int = 0, threshold: float | None = None, n_boot: int = 1000
    ) -> dict:
        from medimg.evaluation import evaluate_binary

        return evaluate_binary(
            np.asarray(y_true), np.asarray(prob)[:, 1], threshold=threshold, seed=seed, n_boot=n_boot
        )

    def add_evaluation_report(self, report: Any, y_true: np.ndarray, prob: np.ndarray, metrics: Mapping) -> None:
        from medimg.evaluation import add_binary_section

        add_binary_section(report, np.asarray(y_true), np.asarray(prob)[:, 1], metrics)

    def forward(self, model: Any, images: Any, meta: Mapping) -> tuple[Any, Any]:
        """Logits and, from the same forward pass, the model's attention maps when it has the
        trainable gate, else the pneumonia-class Grad-CAM maps; no maps (None) when the model has
        no layer Grad-CAM can hook (:func:`gradcam_plan`)."""
        from saliency.cam import find_linear_head, gradcam_forward

        attended = self.attention_forward(model, images)
        if attended is not None:
            return attended
        layer, _ = gradcam_plan(model, meta)
        if layer is None:
            return model(images), None
        single_logit = find_linear_head(model)[1].out_features == 1  # a sigmoid logit: the pneumonia one
        return gradcam_forward(model, images, layer, class_index=0 if single_logit else 1)

    def run_notes(self, model: Any, meta: Mapping[str, Any]) -> list[str]:
        _, why_not = gradcam_plan(model, meta)
        return [why_not] if why_not else []

    def postprocess(self, images: Any, prob: np.ndarray, extras: Any, items: Sequence[Mapping], meta: Mapping) -> list:
        threshold = float(meta.get("training", {}).get("operating_threshold", 0.5))
        maps = extras.cpu() if extras is not None else None  # None: no layer to hook (see run_notes)
        source = "attention" if "wrapper" in meta.get("network", {}) else "grad-cam" if maps is not None else "none"
        results = []
        for i, item in enumerate(items):
            # network grid (X, Y) -> source grid (columns, rows) -> image orientation (rows, columns)
            grid = maps if maps is not None else images.cpu()[:, :1]
            image, grid_heat = self.source_grid(images.cpu(), grid, i, int(item["Rows"]), int(item["Columns"]))
            heat = grid_heat if maps is not None else None
            p = float(prob[i, 1])
            boxes = boxes_from_heatmap(heat) if p >= threshold and heat is not None else []
            row = {
                "probability": p,
                "predicted": self.labels[int(p >= threshold)],
                "n_boxes": len(boxes),
                "boxes": [[round(p * peak, 4), x, y, w, h] for x, y, w, h, peak in boxes],
                "ViewPosition": item.get("ViewPosition", ""),
                **({"image_file": item["image_file"]} if item.get("image_file") else {}),
                "heatmap": source,
                "warning": constant_image_warning(images[i]),
            }
            results.append(ImageResult(row=row, heatmap=heat, image=image))
        return results

    def write_image_outputs(self, study_dir: Path, result: ImageResult) -> list[str]:
        if result.image is None:  # every result of infer() carries its display image
            return []
        from pipelines.overlay import write_overlay

        name = f"{safe_name(result.row['SOPInstanceUID'])}_overlay.png"
        boxes = [(x, y, w, h) for _, x, y, w, h in result.row["boxes"]]
        label = f"p(pneumonia) = {result.row['probability']:.3f} ({result.row.get('heatmap', 'grad-cam')})"
        write_overlay(study_dir / name, result.image, result.heatmap, boxes, label)
        result.row["overlay"] = name
        return [name]

    def finalize(self, out: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping) -> list[Path]:
        submission = []
        for row in rows:
            groups = " ".join(f"{conf:.4f} {x} {y} {w} {h}" for conf, x, y, w, h in row.get("boxes") or [])
            patient = row.get("image_file") or row["PatientID"]  # an image file: its relative path
            submission.append({"patientId": patient, "PredictionString": groups})
        path = out / "submission.csv"
        write_csv(path, submission, ("patientId", "PredictionString"))
        return [path]
