"""Task pipelines (breast density, chest X-ray pneumonia, brain-tumour segmentation).

Each pipeline (:class:`pipelines.base.Pipeline`) declares its series-selection rules, MONAI
transforms, network, metrics, post-processing and outputs; :func:`pipelines.runner.run_pipeline`
drives any of them over a DICOM folder, and :mod:`pipelines.training` trains and evaluates them.
"""

from __future__ import annotations

from pipelines.base import DatasetError, Pipeline

__all__ = ["PIPELINES", "DatasetError", "Pipeline", "get_pipeline"]

#: Pipeline name -> "module:class" (imported on demand, so listing them stays cheap).
PIPELINES = {
    "pneumonia": "pipelines.pneumonia:PneumoniaPipeline",
    "density": "pipelines.density:DensityPipeline",
    "brats": "pipelines.brats:BratsPipeline",
}


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    import importlib

    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; choose from {sorted(PIPELINES)}")
    # Registers the "attention" network wrapper, so checkpoints of gated models load anywhere.
    importlib.import_module("saliency.attention")
    module, cls = PIPELINES[name].split(":")
    return getattr(importlib.import_module(module), cls)()
