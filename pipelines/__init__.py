"""Task pipelines (breast density, chest X-ray pneumonia, brain-tumour segmentation).

Each pipeline (:class:`pipelines.base.Pipeline`) declares its series-selection rules, MONAI
transforms, network, metrics, post-processing and outputs; :func:`pipelines.runner.run_pipeline`
drives any of them over a DICOM folder, and :mod:`pipelines.training` trains and evaluates them.

The entry points are importable from here (``from pipelines import get_pipeline, run_pipeline,
train_pipeline``): the runner, training, the federated simulation, continual domain expansion and
the saliency audit, each imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from medimg.lazy import lazy_exports

__all__ = [
    "PIPELINES",
    "DatasetError",
    "Pipeline",
    "RunSummary",
    "TrainPipelineConfig",
    "audit_pipeline",
    "compare_arms",
    "estimate_site_fisher",
    "evaluate_pipeline",
    "expand_site",
    "get_pipeline",
    "run_pipeline",
    "simulate_federation",
    "train_pipeline",
]

#: Public name -> the module it comes from, imported when the name is first used (PEP 562), so
#: ``import pipelines`` (and so the ``medimg`` command's start-up) loads neither numpy nor torch.
_EXPORTS: dict[str, str] = {
    "DatasetError": "pipelines.base",
    "Pipeline": "pipelines.base",
    "RunSummary": "pipelines.runner",
    "run_pipeline": "pipelines.runner",
    "TrainPipelineConfig": "pipelines.training",
    "train_pipeline": "pipelines.training",
    "evaluate_pipeline": "pipelines.training",
    "simulate_federation": "pipelines.federated",
    "estimate_site_fisher": "pipelines.continual_expansion",
    "expand_site": "pipelines.continual_expansion",
    "compare_arms": "pipelines.continual_expansion",
    "audit_pipeline": "pipelines.saliency_audit",
}

if TYPE_CHECKING:
    from pipelines.base import DatasetError, Pipeline
    from pipelines.continual_expansion import compare_arms, estimate_site_fisher, expand_site
    from pipelines.federated import simulate_federation
    from pipelines.runner import RunSummary, run_pipeline
    from pipelines.saliency_audit import audit_pipeline
    from pipelines.training import TrainPipelineConfig, evaluate_pipeline, train_pipeline

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
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; choose from {sorted(PIPELINES)}")
    # Registers the "attention" network wrapper, so checkpoints of gated models load anywhere.
    importlib.import_module("saliency.attention")
    module, cls = PIPELINES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
