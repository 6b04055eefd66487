"""Mammography breast density: BI-RADS A-D per image, per breast and per exam.

- Input: the four screening views of each study (``mammography`` selection rules: ImageLaterality
  x ViewPosition CC/MLO; "for processing" images skipped), and every mammogram the tags cannot
  place (selection ``unplaced``: no laterality or no ViewPosition, e.g. CBIS-DDSM's Secondary
  Capture files). MONOCHROME1 images are inverted by the loader, so every vendor's image reaches
  the network with dense tissue bright.
- Placement (``ImageLaterality``, ``ViewPosition`` columns and how each was decided,
  ``laterality_source`` / ``view_source``): a views table (``--views``) > the tags > naming rules
  (``--view-rule``) > the pixels (laterality only); see :mod:`medimg.mammo_views`.
- Training data: a VinDr-Mammo-like layout, one folder per site or a folder of sites, each with
  ``breast-level_annotations.csv`` (``study_id,series_id,image_id,laterality,view_position,...,
  breast_density``) and ``images/<study_id>/<image_id>.dicom``.
- Exam rule (``exams.csv``): per breast (laterality), the class probabilities of its views are
  averaged and the breast's density is their argmax; the exam's density is the denser breast's
  (BI-RADS assigns an exam the category of the denser breast), with that breast's probabilities.
  Images whose laterality is unknown join no breast: they are counted (``n_unplaced``) and count
  towards the exam only when no image of it has a laterality.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medimg.limits import constant_image_warning
from medimg.mammo_laterality import laterality_from_pixels
from medimg.mammo_views import (
    Placement,
    ViewRule,
    ViewTable,
    laterality_from_tags,
    place_image,
    read_view_header,
    read_view_table,
    view_from_tags,
)
from medimg.safepath import safe_name
from medimg.writers import write_csv
from pipelines.base import DatasetError, ImageResult, Pipeline

__all__ = ["DensityPipeline", "aggregate_exam"]

LABELS = ("A", "B", "C", "D")
_REQUIRED = {"study_id", "image_id", "laterality", "view_position", "breast_density"}


def aggregate_exam(views: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Exam-level density from per-view rows with ``ImageLaterality`` and ``prob_A``..``prob_D``.

    Returns:
        ``{"L_density", "R_density", "exam_density", "prob_A".."prob_D", "n_images", "n_unplaced"}``
        (see the module docstring for the rule; ``n_unplaced``: images of unknown laterality).
    """
    by_side: dict[str, list[np.ndarray]] = defaultdict(list)
    for view in views:
        probs = np.array([float(view[f"prob_{c}"]) for c in LABELS])
        side = str(view.get("ImageLaterality") or "")
        by_side[side if side in ("L", "R") else ""].append(probs)
    out: dict[str, Any] = {"n_images": len(views), "n_unplaced": len(by_side.get("", []))}
    side_probs = {}
    for side in ("L", "R"):
        if by_side.get(side):
            mean = np.mean(by_side[side], axis=0)
            side_probs[side] = mean
            out[f"{side}_density"] = LABELS[int(mean.argmax())]
        else:
            out[f"{side}_density"] = ""
    if side_probs:
        densest = max(side_probs, key=lambda s: (int(side_probs[s].argmax()), float(side_probs[s].max())))
        probs = side_probs[densest]
    else:
        probs = np.mean([p for v in by_side.values() for p in v], axis=0)
    out["exam_density"] = LABELS[int(probs.argmax())]
    out.update({f"prob_{c}": float(p) for c, p in zip(LABELS, probs, strict=True)})
    return out


class DensityPipeline(Pipeline):
    name = "density"
    description = "Mammography breast density (BI-RADS A-D) per image, breast and exam"
    labels = LABELS
    rules = "mammography"
    monitor = "kappa_linear"
    default_image_size = {"densenet121": (224, 288), "compact": (128, 160)}
    result_columns = (
        "predicted",
        "ImageLaterality",
        "ViewPosition",
        "laterality_source",
        "view_source",
        "prob_A",
        "prob_B",
        "prob_C",
        "prob_D",
        "overlay",
        "warning",
    )

    #: ``--views`` table and ``--view-rule`` rules (see :meth:`configure_views`).
    view_table: ViewTable | None = None
    view_rules: tuple[ViewRule, ...] = ()

    def configure_views(
        self,
        *,
        views: str | Path | None = None,
        view_rules: Sequence[str] = (),
        base: str | Path | None = None,
    ) -> None:
        """Use a views table (paths in it relative to ``base``, the DICOM folder) and naming rules
        (``Keyword:regex``) to place images the tags do not (see :mod:`medimg.mammo_views`).

        Raises:
            ValueError: an unreadable or malformed table, or a malformed rule (the message says which).
        """
        self.view_table = read_view_table(views, base=base) if views is not None else None
        self.view_rules = tuple(ViewRule.parse(rule) for rule in view_rules)

    def view_settings(self) -> dict[str, Any]:
        """What of ``--views`` / ``--view-rule`` decides the results (a rerun with others is refused):
        the SHA-256 of the table's entries and the rules as written; empty when neither is given."""
        import hashlib
        import json

        table = None
        if self.view_table is not None:
            entries = {"uid": sorted(self.view_table.by_uid.items()), "path": sorted(self.view_table.by_path.items())}
            table = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
        rules = [f"{rule.attribute}:{rule.pattern.pattern}" for rule in self.view_rules]
        return {
            **({"views_table_sha256": table} if table is not None else {}),
            **({"view_rules": rules} if rules else {}),
        }

    def place(self, item: Mapping[str, Any], image: Any = None) -> Placement:
        """Laterality and view of one work item; ``image`` ((rows, columns), display polarity) for
        the pixel evidence. The file's header is read only when the scan's tags do not place it or
        a rule is given."""
        header: dict[str, Any] = {k: v for k, v in item.items() if v not in (None, "")}
        # The rules read the image's own header: an item's PatientID is its study's.
        wanted = {rule.attribute for rule in self.view_rules}
        if wanted or not (laterality_from_tags(header) and view_from_tags(header)):
            header.update(read_view_header(item["source_file"], wanted))
        entry = (
            self.view_table.lookup(str(item.get("SOPInstanceUID", "")), item.get("source_file"))
            if self.view_table
            else None
        )
        pixels = (lambda: laterality_from_pixels(image).laterality) if image is not None else None
        return place_image(header, table_entry=entry, rules=self.view_rules, pixel_laterality=pixels)

    def augmentations(self, spatial_keys: Sequence[str] = ("image",)) -> list[Any]:
        from monai.transforms import RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised

        # Density does not depend on the side: flipping left-right is a safe augmentation.
        keys = list(spatial_keys)
        return [
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandAffined(keys, prob=0.5, rotate_range=0.08, scale_range=0.1, padding_mode="zeros"),
            RandAdjustContrastd("image", prob=0.5, gamma=(0.7, 1.4)),
            RandGaussianNoised("image", prob=0.3, std=0.03),
        ]

    def load_dataset(self, data_dir: str | Path) -> list[dict[str, Any]]:
        data_dir = Path(data_dir)
        tables = [data_dir / "breast-level_annotations.csv"]
        if not tables[0].is_file():
            tables = sorted(data_dir.glob("*/breast-level_annotations.csv"))
        if not tables:
            raise DatasetError(f"{data_dir}: no breast-level_annotations.csv (VinDr-Mammo-like layout expected)")
        items, absent = [], []
        for table in tables:
            site = table.parent.name
            with open(table, newline="") as fh:
                reader = csv.DictReader(fh)
                missing = _REQUIRED - set(reader.fieldnames or [])
                if missing:
                    raise DatasetError(f"{table}: missing column(s) {sorted(missing)}")
                for line, row in enumerate(reader, start=2):
                    density = row["breast_density"].strip().upper().replace("DENSITY", "").strip()
                    if density not in LABELS:
                        raise DatasetError(f"{table}, line {line}: breast_density {row['breast_density']!r} is not A-D")
                    path = table.parent / "images" / row["study_id"] / f"{row['image_id']}.dicom"
                    if not path.is_file():
                        absent.append(str(path))
                        continue
                    items.append(
                        {
                            "image": str(path),
                            "label": LABELS.index(density),
                            "patient_id": f"{site}/{row['study_id']}",
                            "site": site,
                            "laterality": row["laterality"],
                            "view": row["view_position"],
                            "split": row.get("split", ""),
                        }
                    )
        if absent:
            raise DatasetError(f"{len(absent)} annotated image(s) have no DICOM file, e.g. {absent[0]}")
        if not items:
            raise DatasetError(f"{data_dir}: the annotation tables list no images")
        return items

    def metrics(self, y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
        from medimg.evaluation import multiclass_metrics

        m = multiclass_metrics(np.asarray(y_true), np.asarray(prob), labels=self.labels)
        return {"kappa_linear": float(m["kappa_linear"]), "accuracy": float(m["accuracy"])}

    def evaluate(
        self, y_true: np.ndarray, prob: np.ndarray, *, seed: int = 0, threshold: float | None = None, n_boot: int = 1000
    ) -> dict:
        from medimg.evaluation import evaluate_multiclass

        return evaluate_multiclass(np.asarray(y_true), np.asarray(prob), labels=self.labels, seed=seed, n_boot=n_boot)

    def add_evaluation_report(self, report: Any, y_true: np.ndarray, prob: np.ndarray, metrics: Mapping) -> None:
        from medimg.evaluation import add_multiclass_section

        add_multiclass_section(report, np.asarray(y_true), np.asarray(prob), metrics, self.labels)

    def forward(self, model: Any, images: Any, meta: Mapping) -> tuple[Any, Any]:
        """Logits, plus the attention maps when the model has the trainable gate."""
        attended = self.attention_forward(model, images)
        return attended if attended is not None else (model(images), None)

    def postprocess(self, images: Any, prob: np.ndarray, extras: Any, items: Sequence[Mapping], meta: Mapping) -> list:
        results = []
        for i, item in enumerate(items):
            placed = self.place(item, images[i, 0].T.numpy())  # (X, Y) network grid -> (rows, columns)
            row = {
                "predicted": self.labels[int(prob[i].argmax())],
                "ImageLaterality": placed.laterality,
                "ViewPosition": placed.view,
                "laterality_source": placed.laterality_source,
                "view_source": placed.view_source,
                **{f"prob_{c}": float(p) for c, p in zip(self.labels, prob[i], strict=True)},
                "warning": constant_image_warning(images[i]),
            }
            if extras is None:
                results.append(ImageResult(row=row))
                continue
            image, heat = self.source_grid(images.cpu(), extras.cpu(), i, int(item["Rows"]), int(item["Columns"]))
            results.append(ImageResult(row=row, heatmap=heat, image=image))
        return results

    def write_image_outputs(self, study_dir: Path, result: ImageResult) -> list[str]:
        """The attention overlay PNG, for a model with the trainable gate (nothing otherwise)."""
        if result.heatmap is None or result.image is None:
            return []
        from pipelines.overlay import write_overlay

        name = f"{safe_name(result.row['SOPInstanceUID'])}_attention.png"
        write_overlay(study_dir / name, result.image, result.heatmap, (), f"density {result.row['predicted']}")
        result.row["overlay"] = name
        return [name]

    def finalize(self, out: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping) -> list[Path]:
        by_study: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for row in rows:
            by_study[row["StudyInstanceUID"]].append(row)
        exams = []
        for study_uid, views in sorted(by_study.items()):
            exams.append({"PatientID": views[0]["PatientID"], "StudyInstanceUID": study_uid, **aggregate_exam(views)})
        columns = (
            ("PatientID", "StudyInstanceUID", "n_images", "L_density", "R_density", "exam_density")
            + tuple(f"prob_{c}" for c in LABELS)
            + ("n_unplaced",)
        )
        path = out / "exams.csv"
        write_csv(path, exams, columns)
        return [path]
