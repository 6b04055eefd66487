"""DICOM ingestion: scan folders, select series by rules, decode to MONAI MetaTensors.

- :func:`scan_folder`: headers only, in parallel -> :class:`ScanResult` (studies, series,
  quarantine with reasons).
- :func:`load_rules` / :func:`select`: declarative series (or image) selection with reasons.
- :func:`load_series` / :func:`load_instance`: pixels -> ``MetaTensor`` with a RAS affine.
- :func:`convert_folder`: selected series -> NIfTI.
- :mod:`medimg.dicom.seg` (imported on its own, it loads code tables): label volumes <-> DICOM SEG.
"""

from medimg.dicom.convert import ConversionResult, convert_folder
from medimg.dicom.decode import DecodeError, decode_pixels
from medimg.dicom.geometry import GeometryError, orientation_label, sort_slices
from medimg.dicom.index import InstanceHeader, QuarantineEntry, ScanResult, Series, Study
from medimg.dicom.scan import list_files, scan_folder
from medimg.dicom.selection import RuleError, SelectionRules, StudySelection, load_rules, select
from medimg.dicom.volume import SeriesError, load_instance, load_series

__all__ = [
    "ConversionResult",
    "DecodeError",
    "GeometryError",
    "InstanceHeader",
    "QuarantineEntry",
    "RuleError",
    "ScanResult",
    "SelectionRules",
    "Series",
    "SeriesError",
    "Study",
    "StudySelection",
    "convert_folder",
    "decode_pixels",
    "list_files",
    "load_instance",
    "load_rules",
    "load_series",
    "orientation_label",
    "scan_folder",
    "select",
    "sort_slices",
]
