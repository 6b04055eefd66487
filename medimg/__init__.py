"""medimg: a medical-imaging toolkit built on MONAI.

The core's entry points are importable from here (``from medimg import scan_folder,
build_network, train_classifier``). Each is imported on first use, from the module named in
:data:`_EXPORTS`, so ``import medimg`` (and the ``medimg --help`` that reads ``__version__``)
stays fast: no torch, MONAI or pydicom until a name that needs them is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medimg.lazy import lazy_exports

__version__ = "0.1.0"

#: Public name -> the module it comes from (a package path, e.g. ``medimg.training``, not the file
#: inside it), imported when the name is first used.
_EXPORTS: dict[str, str] = {
    # DICOM: scan, load, convert (selection rules: medimg.dicom); DICOM SEG
    "ScanResult": "medimg.dicom",
    "scan_folder": "medimg.dicom",
    "load_series": "medimg.dicom",
    "load_instance": "medimg.dicom",
    "convert_folder": "medimg.dicom",
    "read_seg": "medimg.dicom.seg",
    "write_seg": "medimg.dicom.seg",
    # networks and checkpoints
    "ARCHITECTURES": "medimg.models",
    "CheckpointError": "medimg.models",
    "build_network": "medimg.models",
    "load_checkpoint": "medimg.models",
    "save_checkpoint": "medimg.models",
    # training and evaluation
    "TrainConfig": "medimg.training",
    "TrainResult": "medimg.training",
    "train_classifier": "medimg.training",
    "train_segmenter": "medimg.training",
    "evaluate_binary": "medimg.evaluation",
    "evaluate_multiclass": "medimg.evaluation",
    # synthetic data
    "generate_sample_data": "medimg.synth",
    "generate_cxr": "medimg.synth",
    "generate_mammo": "medimg.synth",
    "generate_brain": "medimg.synth",
    # outputs
    "Report": "medimg.report",
    "write_csv": "medimg.writers",
    "write_json": "medimg.writers",
    "write_nifti": "medimg.writers",
}

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "Report",
    "ScanResult",
    "TrainConfig",
    "TrainResult",
    "build_network",
    "convert_folder",
    "evaluate_binary",
    "evaluate_multiclass",
    "generate_brain",
    "generate_cxr",
    "generate_mammo",
    "generate_sample_data",
    "load_checkpoint",
    "load_instance",
    "load_series",
    "read_seg",
    "save_checkpoint",
    "scan_folder",
    "train_classifier",
    "train_segmenter",
    "write_csv",
    "write_json",
    "write_nifti",
    "write_seg",
]

if TYPE_CHECKING:
    from medimg.dicom import (
        ScanResult,
        convert_folder,
        load_instance,
        load_series,
        scan_folder,
    )
    from medimg.dicom.seg import read_seg, write_seg
    from medimg.evaluation import evaluate_binary, evaluate_multiclass
    from medimg.models import ARCHITECTURES, CheckpointError, build_network, load_checkpoint, save_checkpoint
    from medimg.report import Report
    from medimg.synth import generate_brain, generate_cxr, generate_mammo, generate_sample_data
    from medimg.training import TrainConfig, TrainResult, train_classifier, train_segmenter
    from medimg.writers import write_csv, write_json, write_nifti


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
