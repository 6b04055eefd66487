"""Deterministic synthetic sample data that mimics three public datasets.

No public dataset can be downloaded in CI, so :func:`generate_sample_data`
writes small stand-ins that reproduce their on-disk layout, sidecar CSVs and
key DICOM / NIfTI header fields, with image content that carries a learnable,
known ground truth:

* ``OUT/cxr/``: RSNA Pneumonia Detection Challenge (Secondary Capture chest
  radiographs, half JPEG Baseline; opacity boxes in ``stage_2_train_labels.csv``);
  see :mod:`medimg.synth.cxr`.
* ``OUT/mammo/<site>/``: VinDr-Mammo-style screening exams from three
  institutions with different vendor profiles (MONOCHROME1/2, bit depth,
  response, noise, pixel pitch, RLE / JPEG 2000 / uncompressed); density
  A-D in ``breast-level_annotations.csv``; see :mod:`medimg.synth.mammo`.
* ``OUT/brain/nifti/`` and ``OUT/brain/dicom/``: BraTS 2021 cases as NIfTI and
  as an equivalent MR DICOM study; see :mod:`medimg.synth.brain`.
* ``OUT/cxr-png/`` (only when named in ``only``): NIH ChestX-ray14-style PNG/JPEG
  radiographs with ``Data_Entry_2017.csv`` and ``BBox_List_2017.csv``; see
  :mod:`medimg.synth.cxr_png`.

The same seed always gives byte-identical files; every item is seeded from
``(seed, dataset, item key)``, so ``count`` never changes earlier items. Files
are written atomically. Existing files in ``OUT`` are overwritten when they
have the same name and otherwise left alone.

Examples:
    >>> from medimg.synth import generate_sample_data
    >>> summary = generate_sample_data("sample_data", seed=0)  # doctest: +SKIP
    >>> summary.to_dict()["datasets"]["cxr"]["n_items"]  # doctest: +SKIP
    24
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from medimg.synth import brain as _brain
from medimg.synth import cxr as _cxr
from medimg.synth import cxr_png as _cxr_png
from medimg.synth import mammo as _mammo
from medimg.synth.brain import generate_brain
from medimg.synth.common import DatasetSummary
from medimg.synth.cxr import generate_cxr
from medimg.synth.cxr_png import generate_cxr_png
from medimg.synth.mammo import SITE_NAMES, SITES, SiteProfile, generate_mammo

__all__ = [
    "DATASETS",
    "DEFAULT_COUNTS",
    "DEFAULT_SELECTION",
    "DEMO_COUNTS",
    "SITES",
    "SITE_NAMES",
    "DatasetSummary",
    "SampleDataSummary",
    "SiteProfile",
    "generate_brain",
    "generate_cxr",
    "generate_cxr_png",
    "generate_mammo",
    "generate_sample_data",
]

#: Dataset keys, which are also the sub-folder names of ``OUT``.
DATASETS: tuple[str, ...] = ("cxr", "mammo", "brain", "cxr-png")
#: The datasets generated when ``only`` is not given (``cxr-png`` is generated on request).
DEFAULT_SELECTION: tuple[str, ...] = ("cxr", "mammo", "brain")

#: Counts of the set committed under ``sample_data/`` and used by ``medimg demo``.
DEMO_COUNTS: Mapping[str, int] = MappingProxyType({"cxr": 8, "mammo": 2, "brain": 1})

#: Default ``count`` per dataset: CXR images, mammography exams per site, brain cases.
DEFAULT_COUNTS: Mapping[str, int] = MappingProxyType(
    {"cxr": _cxr.DEFAULT_COUNT, "mammo": _mammo.DEFAULT_COUNT, "brain": _brain.DEFAULT_COUNT}
)

_GENERATORS: Mapping[str, Callable[..., DatasetSummary]] = MappingProxyType(
    {"cxr": generate_cxr, "mammo": generate_mammo, "brain": generate_brain, "cxr-png": generate_cxr_png}
)


@dataclass(frozen=True)
class SampleDataSummary:
    """Result of :func:`generate_sample_data`.

    Attributes:
        out: Output root folder.
        seed: Seed used.
        full_size: Whether full-size images were generated.
        datasets: Per-dataset summaries keyed by dataset name, in generation order.
    """

    out: Path
    seed: int
    full_size: bool
    datasets: Mapping[str, DatasetSummary] = field(default_factory=dict)

    @property
    def n_files(self) -> int:
        """Total number of files written."""
        return sum(d.n_files for d in self.datasets.values())

    @property
    def n_bytes(self) -> int:
        """Total size of the files written, in bytes."""
        return sum(d.n_bytes for d in self.datasets.values())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dictionary (paths as strings)."""
        return {
            "out": str(self.out),
            "seed": self.seed,
            "full_size": self.full_size,
            "n_files": self.n_files,
            "n_bytes": self.n_bytes,
            "datasets": {name: d.to_dict() for name, d in self.datasets.items()},
        }


def generate_sample_data(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    full_size: bool = False,
    only: Sequence[str] | None = None,
    count: int | Mapping[str, int] | None = None,
) -> SampleDataSummary:
    """Generate the synthetic CXR, mammography and brain-MRI sample sets.

    Args:
        out: Output root; ``cxr/``, ``mammo/`` and ``brain/`` are created inside.
        seed: Global seed; the same seed gives byte-identical files.
        full_size: Realistic sizes (1024² CXR, full-field mammograms, 240×240×155
            brain volumes at 1 mm) instead of small, fast defaults.
        only: Subset of :data:`DATASETS` to generate (in that order); ``None``
            means :data:`DEFAULT_SELECTION` (all but ``cxr-png``).
        count: Number of CXR images, of exams per mammography site and of brain
            cases; or a mapping with a count per dataset (missing keys take the
            default); ``None`` uses :data:`DEFAULT_COUNTS`.

    Returns:
        The summary of what was written.

    Raises:
        ValueError: If ``only`` names an unknown dataset or ``count`` is negative.
    """
    counts = {**DEFAULT_COUNTS, "cxr-png": _cxr_png.DEFAULT_COUNT}
    if isinstance(count, Mapping):
        unknown_counts = sorted(set(count) - set(DATASETS))
        if unknown_counts:
            raise ValueError(f"count names unknown dataset(s) {unknown_counts}; choose from {list(DATASETS)}")
        counts.update(count)
    elif count is not None:
        counts = dict.fromkeys(DATASETS, count)
    negative = {k: v for k, v in counts.items() if v < 0}
    if negative:
        raise ValueError(f"counts must be >= 0, got {negative}")
    if isinstance(only, str):
        only = [only]
    selected = DEFAULT_SELECTION if only is None else tuple(only)
    unknown = sorted(set(selected) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, DatasetSummary] = {}
    for name in DATASETS:
        if name not in selected:
            continue
        summaries[name] = _GENERATORS[name](root / name, seed=seed, count=counts[name], full_size=full_size)
    return SampleDataSummary(out=root, seed=seed, full_size=full_size, datasets=MappingProxyType(summaries))
