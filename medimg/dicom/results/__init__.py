"""Results as DICOM objects (highdicom): SR measurement reports and Secondary Capture overlays.

- :mod:`.common`: the algorithm (name, version, weights, demo disclaimer), deterministic UIDs,
  source headers, atomic saving;
- :mod:`.measurement_report`: TID 1500 Comprehensive 3D SR building and reading back;
- :mod:`.pneumonia_sr`, :mod:`.density_sr`, :mod:`.tumour_sr`: one module per task;
- :mod:`.overlay_sc`: an RGB Secondary Capture of an overlay picture.

Every object joins the source study (same StudyInstanceUID, a new series), copies the patient
and study attributes of its source and references the source instances.
"""

from medimg.dicom.results.common import DISCLAIMER, Algorithm, describe, read_source, result_uid, save_dataset
from medimg.dicom.results.density_sr import DENSITY_CODES, DensityImage, build_density_sr
from medimg.dicom.results.measurement_report import ReadGroup, read_report
from medimg.dicom.results.overlay_sc import build_overlay_sc
from medimg.dicom.results.pneumonia_sr import PNEUMONIA, build_pneumonia_sr
from medimg.dicom.results.tumour_sr import build_tumour_sr

__all__ = [
    "DENSITY_CODES",
    "DISCLAIMER",
    "PNEUMONIA",
    "Algorithm",
    "DensityImage",
    "ReadGroup",
    "build_density_sr",
    "build_overlay_sc",
    "build_pneumonia_sr",
    "build_tumour_sr",
    "describe",
    "read_report",
    "read_source",
    "result_uid",
    "save_dataset",
]
