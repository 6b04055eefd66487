"""DICOM folder -> NIfTI files, one per selected series (or image), with the same geometry.

Series with plane geometry are written as dcm2niix writes them (:mod:`medimg.dicom.stack`):
its voxel order (rows bottom-up; mosaics cut into slices; 3-D acquisitions turned to RAS), one
4-D NIfTI for a series with several volumes (time series, diffusion, echoes), a BIDS sidecar
``.json`` beside each, and FSL ``.bval``/``.bvec`` for diffusion. In the closest canonical
orientation the voxels and affine equal those of :func:`medimg.dicom.load_series`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medimg.dicom.decode import VOI, DecodeError
from medimg.dicom.index import InstanceHeader, ScanResult, Series, Study
from medimg.dicom.scan import scan_folder
from medimg.dicom.selection import SelectionRules, select
from medimg.dicom.stack import load_stack
from medimg.dicom.stack_output import write_stack
from medimg.dicom.volume import SeriesError, load_instance, load_series
from medimg.safepath import UnsafePathError, inside, safe_name
from medimg.writers import write_json, write_nifti

__all__ = ["ConversionResult", "convert_folder", "read_conversion"]


@dataclass
class ConversionResult:
    """What :func:`convert_folder` did.

    Attributes:
        written: one record per NIfTI file (output path, source UIDs, shape, spacing).
        skipped: outputs that already existed (resume), same records.
        failures: ``{"source": ..., "error": ...}`` per series or image that failed.
        selections: per study, what the rules picked and why (when rules were given).
    """

    written: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    selections: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "skipped": self.skipped,
            "failures": self.failures,
            "selections": self.selections,
        }


def _targets(
    study: Study, rules: SelectionRules | None, result: ConversionResult
) -> list[tuple[str, Series, InstanceHeader | None]]:
    """(output stem, series, image or None) for every output of one study."""
    if rules is not None:
        chosen = select(study, rules)
        result.selections.append(chosen.to_dict())
        out = []
        for name, items in chosen.picked.items():
            for k, (series, inst) in enumerate(items):
                out.append((safe_name(f"{name}_{k + 1}" if len(items) > 1 else name), series, inst))
        for reason in chosen.failure_reasons():
            result.failures.append({"source": f"study {study.StudyInstanceUID}", "error": reason})
        return out
    out = []
    for series in study.series:
        stem = f"{series.get('SeriesNumber', 'x')}_{series.SeriesDescription or series.Modality}"
        no_geometry = any(inst.frame_positions is None for inst in series.instances)
        if len(series.instances) > 1 and no_geometry:
            for inst in series.instances:
                out.append((safe_name(f"{stem}_{inst.get('InstanceNumber', inst.sop_instance_uid)}"), series, inst))
        else:
            out.append((safe_name(stem), series, None))
    return out


def _stackable(series: Series) -> bool:
    """Grey images with plane geometry: written through :mod:`medimg.dicom.stack` (3-D or 4-D)."""
    return all(
        inst.frame_positions is not None and int(inst.get("SamplesPerPixel") or 1) == 1 for inst in series.instances
    )


def convert_folder(
    source: str | os.PathLike[str] | ScanResult,
    out: str | os.PathLike[str],
    *,
    rules: SelectionRules | None = None,
    voi: VOI = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ConversionResult:
    """Convert the series of a DICOM folder (all, or those the rules pick) to NIfTI.

    Outputs go to ``out/<PatientID>/<StudyInstanceUID>/<name>.nii.gz`` (with ``<name>.json``, and
    ``<name>.bval``/``<name>.bvec`` for diffusion, for series with plane geometry), where ``name`` is the
    selection name with rules, else ``<SeriesNumber>_<SeriesDescription>``; projection images of
    a multi-image series get one file each. Every part is made safe by
    :func:`medimg.safepath.safe_name` (a value that had to change gets a hash of the original, so
    distinct studies never share a folder); a value that cannot be made safe fails its study.
    ``out/conversion.json`` lists what was written, the selection decisions and every failure.
    Existing outputs are kept unless ``overwrite``.

    Args:
        source: a folder, or a :class:`ScanResult` of one.
        out: output folder (created).
        rules: selection rules; None converts every series.
        voi: VOI to apply (None keeps modality values, e.g. HU).
        overwrite: rewrite outputs that exist.
        progress: called as ``progress(done, total)``.

    Returns:
        The :class:`ConversionResult`. Failing series are recorded, never raised.
    """
    scan = source if isinstance(source, ScanResult) else scan_folder(source)
    out = Path(out)
    result = ConversionResult()
    jobs = []
    for study in scan.studies:
        try:
            folder = inside(out, out / safe_name(study.PatientID or "unknown") / safe_name(study.StudyInstanceUID))
            targets = _targets(study, rules, result)
        except UnsafePathError as exc:
            result.failures.append({"source": f"study {study.StudyInstanceUID!r}", "error": str(exc)})
            continue
        for stem, series, inst in targets:
            jobs.append((folder / f"{stem}.nii.gz", study, series, inst))
    for done, (path, study, series, inst) in enumerate(jobs, start=1):
        source_label = inst.path if inst is not None else f"series {series.SeriesInstanceUID}"
        record: dict[str, Any] = {
            "output": str(path),
            "PatientID": study.PatientID,
            "StudyInstanceUID": study.StudyInstanceUID,
            "SeriesInstanceUID": series.SeriesInstanceUID,
            "SOPInstanceUID": inst.sop_instance_uid if inst is not None else None,
        }
        if path.exists() and not overwrite:
            result.skipped.append(record)
        else:
            try:
                if series.problems and inst is None:
                    raise SeriesError(f"series {series.SeriesInstanceUID}: {'; '.join(series.problems)}")
                if inst is None and _stackable(series):
                    record.update(write_stack(load_stack(series.files, voi=voi), path))
                else:
                    tensor = load_instance(inst.path, voi=voi) if inst is not None else load_series(series, voi=voi)
                    write_nifti(tensor, path)
                    record["shape"] = list(tensor.shape[1:])
                    record["pixel_spacing"] = tensor.meta["pixel_spacing"]
                    record["slice_spacing"] = tensor.meta["slice_spacing"]
                result.written.append(record)
            except (SeriesError, DecodeError, OSError, ValueError) as exc:
                result.failures.append({"source": source_label, "error": str(exc)})
        if progress:
            progress(done, len(jobs))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "conversion.json", {"source": scan.root, **result.to_dict()})
    return result


def read_conversion(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``out/conversion.json`` back."""
    return json.loads((Path(out) / "conversion.json").read_text())
