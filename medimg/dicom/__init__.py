"""DICOM ingestion: scan folders, select series by rules, decode to MONAI MetaTensors."""

from medimg.dicom.index import InstanceHeader, QuarantineEntry, ScanResult, Series, Study
from medimg.dicom.scan import list_files, scan_folder

__all__ = [
    "InstanceHeader",
    "QuarantineEntry",
    "ScanResult",
    "Series",
    "Study",
    "list_files",
    "scan_folder",
]
