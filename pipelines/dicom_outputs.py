"""A run's results as DICOM objects beside its other outputs, listed in ``run.json`` ``dicom_results``.

For a DICOM input, each study's results become (``medimg run ... --dicom-results``, the default):

- pneumonia: per radiograph a Comprehensive 3D SR (probability, decision at the operating
  threshold, one region per box) and an RGB Secondary Capture of the overlay picture;
- density: per exam one SR (category per breast and exam, probabilities per image);
- brats: per case one SR of the WT/TC/ET volumes that references the DICOM SEG (the SEG stays
  where the pipeline writes it, in the case's folder, and is listed too).

They are written to ``OUT/dicom/<StudyInstanceUID>/<kind>-<SOPInstanceUID>.dcm`` (atomically;
the UIDs derive from the source's UIDs and the weights' SHA-256, so a rerun rewrites the same
files rather than adding copies) and each is listed in ``run.json`` as ``{"path" (relative to
OUT), "kind" (sr, sc, seg), "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
"SOPClassUID"}``. A resumed study keeps its list in its ``study.json``. Inputs that are not
DICOM (PNG/JPEG radiographs, BraTS NIfTI cases) get none.

:func:`dicom_results` reads that list back (for ``--push``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medimg import __version__
from medimg.dicom.results.common import Algorithm, describe, read_source, read_sources, save_dataset
from medimg.safepath import inside, safe_name

__all__ = ["DICOM_FOLDER", "DicomResultWriter", "dicom_results", "is_demo_weights"]

#: The folder of the objects in OUT.
DICOM_FOLDER = "dicom"
_KEYS = ("path", "kind", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def is_demo_weights(weights: str | os.PathLike[str], meta: Mapping[str, Any], demo: Path | None) -> bool:
    """True for the demo weights: ``weights`` is ``demo`` (the pipeline's ``sample_data/weights``
    file), or the checkpoint's training note says it was trained on synthetic phantoms."""
    if demo is not None and Path(weights).resolve() == Path(demo).resolve():
        return True
    note = str((meta.get("training") or {}).get("note") or "").lower()
    return "synthetic" in note or "demo weights" in note


class DicomResultWriter:
    """Writes the DICOM objects of each finished study of a run (see the module docstring).

    Args:
        pipeline: the run's pipeline (its ``name`` picks the objects; others get none).
        out: the run's output folder.
        meta: the model's meta (operating threshold, source kind).
        weights_sha256: the weights' SHA-256 (in the UIDs and the algorithm identification).
        demo: whether the weights are the demo weights (the objects say not for clinical use).
        enabled: write objects (``--dicom-results``); when False, only the objects of resumed
            studies are listed (they exist).
    """

    def __init__(
        self,
        pipeline: Any,
        out: Path,
        *,
        meta: Mapping[str, Any],
        weights_sha256: str,
        demo: bool,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.pipeline = pipeline
        self.out = Path(out)
        self.meta = meta
        self.algorithm = Algorithm(
            name=f"medimg {pipeline.name}",
            version=__version__,
            weights_sha256=weights_sha256,
            source_kind=str((meta.get("source") or {}).get("kind") or ""),
            demo=demo,
        )
        #: Every object listed so far (resumed studies' included), for ``run.json``.
        self.listed: list[dict[str, Any]] = []

    def record(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """List the objects of a study: written by this run (:meth:`write_study` may run in another
        process) or by an earlier run (its ``study.json``)."""
        self.listed.extend(dict(e) for e in entries)

    def write_study(self, folder: Path, done: Sequence[tuple[Mapping[str, Any], Any]]) -> list[dict[str, Any]]:
        """Write the objects of one study from its ``(item, result)`` pairs (a failed image's result
        is None) and return their entries (for :meth:`record`).

        Raises:
            ValueError: a source cannot be read or an object cannot be made (the message says which).
        """
        ok = [(item, result) for item, result in done if result is not None and _is_dicom(item)]
        if not ok or not self.enabled:
            return []
        writer = {"pneumonia": self._pneumonia, "density": self._density, "brats": self._brats}.get(self.pipeline.name)
        try:
            entries = writer(folder, ok) if writer else []
        except Exception as exc:  # noqa: BLE001 - any failure becomes one error naming the study's files
            files = sorted({str(item.get("source_file", "")) for item, _ in ok})
            where = files[0] + (f" (and {len(files) - 1} more)" if len(files) > 1 else "")
            raise ValueError(f"{where}: {type(exc).__name__}: {exc}") from exc
        return entries

    # --- per pipeline ------------------------------------------------------------------------

    def _pneumonia(self, folder: Path, done: Sequence[tuple[Mapping[str, Any], Any]]) -> list[dict[str, Any]]:
        from medimg.dicom.results.overlay_sc import build_overlay_sc
        from medimg.dicom.results.pneumonia_sr import build_pneumonia_sr

        threshold = float((self.meta.get("training") or {}).get("operating_threshold", 0.5))
        entries = []
        for item, result in done:
            source = read_source(item["source_file"])
            row = result.row
            sr = build_pneumonia_sr(
                source,
                probability=float(row["probability"]),
                threshold=threshold,
                boxes=row.get("boxes") or [],
                algorithm=self.algorithm,
            )
            entries.append(self._save(sr, "sr"))
            overlay = folder / str(row.get("overlay") or "")
            if row.get("overlay") and overlay.is_file():
                sc = build_overlay_sc(
                    source, _read_rgb(overlay), algorithm=self.algorithm, what="medimg pneumonia overlay"
                )
                entries.append(self._save(sc, "sc"))
        return entries

    def _density(self, folder: Path, done: Sequence[tuple[Mapping[str, Any], Any]]) -> list[dict[str, Any]]:
        from medimg.dicom.results.density_sr import DensityImage, build_density_sr
        from pipelines.density import LABELS, aggregate_exam

        rows = [result.row for _, result in done]
        images = [
            DensityImage(
                read_source(item["source_file"]),
                str(result.row.get("ImageLaterality") or ""),
                {c: float(result.row[f"prob_{c}"]) for c in LABELS},
            )
            for item, result in done
        ]
        return [self._save(build_density_sr(images, aggregate_exam(rows), algorithm=self.algorithm), "sr")]

    def _brats(self, folder: Path, done: Sequence[tuple[Mapping[str, Any], Any]]) -> list[dict[str, Any]]:
        from medimg.dicom.results.tumour_sr import build_tumour_sr

        entries = []
        for _, result in done:
            sources, name = result.extras.get("seg_sources"), result.row.get("seg_file")
            if not sources or not name:
                continue
            seg_path = inside(self.out, folder / str(name))
            seg = read_source(seg_path)
            entries.append(self._entry(seg_path, "seg", seg))
            volumes = {r: float(result.row[f"{r}_ml"]) for r in ("WT", "TC", "ET")}
            sr = build_tumour_sr(seg, read_sources(sources), volumes, algorithm=self.algorithm)
            entries.append(self._save(sr, "sr"))
        return entries

    # --- files -------------------------------------------------------------------------------

    def _save(self, dataset: Any, kind: str) -> dict[str, Any]:
        """Write ``dataset`` to ``OUT/dicom/<study>/<kind>-<SOPInstanceUID>.dcm``; its entry."""
        study = safe_name(dataset.StudyInstanceUID)
        path = inside(self.out, self.out / DICOM_FOLDER / study / f"{kind}-{safe_name(dataset.SOPInstanceUID)}.dcm")
        save_dataset(dataset, path)
        return self._entry(path, kind, dataset)

    def _entry(self, path: Path, kind: str, dataset: Any) -> dict[str, Any]:
        return {"path": Path(os.path.relpath(path, self.out)).as_posix(), "kind": kind, **describe(dataset)}


def _is_dicom(item: Mapping[str, Any]) -> bool:
    """Whether a work item comes from DICOM (not a PNG/JPEG picture nor a NIfTI case)."""
    return not item.get("image_file") and item.get("source") != "nifti"


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.uint8)


def dicom_results(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The DICOM objects a run wrote, from ``OUT/run.json`` ``dicom_results`` (an empty list for a
    run that wrote none): each entry as listed (``path`` relative to OUT) plus ``file``, its
    absolute path (checked to lie inside OUT).

    Raises:
        ValueError: ``run.json`` is missing or unreadable, or an entry is malformed or points
            outside OUT (the message names the file and the entry).
    """
    out = Path(out_dir)
    path = out / "run.json"
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the run's record: {exc}") from exc
    entries = run.get("dicom_results", []) if isinstance(run, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: dicom_results is not a list")
    listed = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or any(not isinstance(entry.get(k), str) for k in _KEYS):
            raise ValueError(f"{path}: dicom_results[{n}] lacks one of {list(_KEYS)}")
        try:
            target = inside(out, out / entry["path"])
        except ValueError as exc:
            raise ValueError(f"{path}: dicom_results[{n}]: {exc}") from exc
        listed.append({**entry, "file": str(target.resolve())})
    return listed
