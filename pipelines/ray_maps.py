"""The saliency audit's map computation on a Ray cluster (``medimg saliency audit --ray``).

:func:`ray_map_executor` gives a :data:`saliency.audit_maps.MapExecutor` for
:func:`saliency.audit.run_audit`: every map set not cached yet (each method on each model, and on
each randomized state of each replicate) becomes a Ray task computing
:func:`saliency.audit_maps.compute_map_job`, one CPU each (one GPU each on ``cuda``), all running
at once across the cluster. The images travel once (``ray.put``); each task gets its model. A task
whose worker dies is run again (:data:`pipelines.ray_runs.RETRIES` times). The maps come back to
the driver, which caches them in ``OUT/cache`` and runs the audit's statistics and report as
without Ray; a rerun reuses the cache.

Models cross to the workers pickled by this run (a compiled TorchScript model saved with
``torch.jit.save`` into bytes); the maps come back as arrays. Nothing read from a file is unpickled.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch

from pipelines.ray_runs import RETRIES, RayUnavailable, connect
from saliency.audit_maps import MapExecutor, MapJob, MapSettings, compute_map_job
from saliency.methods import MapBatch

__all__ = ["ray_map_executor"]


def _portable(job: MapJob) -> tuple[Any, str, str | None]:
    """``job`` as Ray can ship it: a TorchScript model as the bytes ``torch.jit.save`` writes."""
    model: Any = job.model
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        model = ("torchscript", buffer.getvalue())
    return model, job.method, job.layer


def _compute(shipped: tuple[Any, str, str | None], images: torch.Tensor, settings: MapSettings, device: str) -> Any:
    """On a worker: the maps of one shipped job, as plain arrays."""
    model, method, layer = shipped
    if isinstance(model, tuple) and model[0] == "torchscript":
        model = torch.jit.load(io.BytesIO(model[1]), map_location=device)
    else:
        model = model.to(device)
    batch = compute_map_job(MapJob(model, method, layer), images.to(device), settings)
    return batch.maps, batch.degenerate, batch.targets


def ray_map_executor(address: str, *, device: str = "cpu") -> MapExecutor:
    """A :data:`~saliency.audit_maps.MapExecutor` computing on the Ray cluster at ``address``
    (``"auto"`` or ``HOST:PORT``, see :func:`pipelines.ray_runs.connect`).

    Raises (when called):
        pipelines.ray_runs.RayUnavailable: Ray is not installed, the cluster cannot be reached, or
            ``cuda`` asked for on a cluster without GPUs.
    """

    def execute(jobs: Sequence[MapJob], images: torch.Tensor, settings: MapSettings) -> list[MapBatch]:
        ray = connect(address)
        gpu = device.startswith("cuda")
        if gpu and int(ray.cluster_resources().get("GPU", 0)) < 1:
            raise RayUnavailable(f"device {device} asked for, but the Ray cluster has no GPU")
        task = ray.remote(_compute).options(
            num_cpus=1, num_gpus=1 if gpu else 0, max_retries=RETRIES, retry_exceptions=False
        )
        shared = ray.put(images.cpu())
        refs = [task.remote(_portable(job), shared, settings, "cuda" if gpu else "cpu") for job in jobs]
        done = ray.get(refs)
        return [MapBatch(maps=maps, degenerate=flags, targets=targets, raw=None) for maps, flags, targets in done]

    return execute
