"""The maps an audit scores, computed once and cached on disk so that an interrupted audit resumes.

:class:`MapCache` returns a :class:`~saliency.methods.MapBatch` for (model, method): one of the
eight post-hoc methods (:func:`saliency.methods.explain`), the trainable attention of a gated model
(:func:`attention_maps`) or a model-independent control (:func:`saliency.controls.control_maps`,
not cached: it costs less than reading a file). Cached maps live in ``folder/{method}-{key}.npz``,
the key hashing the weights, the method's settings, the Grad-CAM layer, the images and the seed.

:meth:`MapCache.prefetch` computes many map sets at once through a :data:`MapExecutor` (e.g. on a
Ray cluster, :mod:`pipelines.ray_maps`), each a :class:`MapJob` computed by :func:`compute_map_job`
exactly as :meth:`MapCache.maps` computes it here; the audit then reads them from the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medimg.writers import write_bytes
from saliency.controls import control_maps, is_control
from saliency.methods import MapBatch

__all__ = [
    "ATTENTION",
    "ATTENTION_READOUT",
    "MapCache",
    "MapExecutor",
    "MapJob",
    "MapSettings",
    "attention_maps",
    "compute_map_job",
    "has_attention",
    "state_hash",
]

#: The ninth method: the map of a model with the trainable attention gate (:mod:`saliency.attention`).
ATTENTION = "attention"
#: Post-processing of attention maps: min-max only (they are already non-negative and single-channel).
ATTENTION_READOUT = "gate map, heads averaged, upsampled (bilinear/trilinear) to the input, min-max to [0, 1]"


def has_attention(model: torch.nn.Module) -> bool:
    """Whether ``model`` exposes a trainable attention map (a callable ``attention(x)``)."""
    return callable(getattr(model, "attention", None))


def state_hash(model: torch.nn.Module) -> str:
    """A short hash of a model's state dict (names and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def attention_maps(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 32) -> MapBatch:
    """The trainable attention maps of a gated model (min-max per image, degenerate when constant;
    targets = predicted classes).

    Raises:
        ValueError: the model has no ``attention()`` method.
    """
    from saliency.postprocess import PostProcess, postprocess

    if not has_attention(model):
        raise ValueError(f"{type(model).__name__} has no trainable attention map (no attention() method)")
    was_training = model.training
    model.eval()
    logits, maps = [], []
    try:
        with torch.no_grad():
            for chunk in images.split(max(1, batch_size)):
                out, attn = model.attention(chunk)  # type: ignore[operator]
                logits.append(out.float().cpu())
                maps.append(attn.float().cpu())
    finally:
        model.train(was_training)
    raw = torch.cat(maps).numpy()
    post, degenerate = postprocess(raw, PostProcess(abs=False, channel_reduce="sum", clip_percentile=None, minmax=True))
    return MapBatch(maps=post, degenerate=degenerate, targets=torch.cat(logits).argmax(1).numpy(), raw=raw)


@dataclass
class MapJob:
    """One map set to compute: ``method``'s maps of ``model`` (Grad-CAM family at ``layer``)."""

    model: torch.nn.Module
    method: str
    layer: str | None


@dataclass(frozen=True)
class MapSettings:
    """What every map set of an audit shares besides the images: the methods' preset, the noise seed
    and the images per forward/backward chunk."""

    method_preset: str
    seed: int
    batch_size: int


#: ``executor(jobs, images, settings)``: the :class:`~saliency.methods.MapBatch` of each job, in
#: order, each as :func:`compute_map_job` gives it (wherever it is computed).
MapExecutor = Callable[[Sequence[MapJob], torch.Tensor, MapSettings], Sequence[MapBatch]]


def compute_map_job(job: MapJob, images: torch.Tensor, settings: MapSettings) -> MapBatch:
    """The maps of ``job`` on ``images``: attention read-out or :func:`saliency.methods.explain`."""
    from saliency.methods import explain, method_settings

    if job.method == ATTENTION:
        return attention_maps(job.model, images, batch_size=settings.batch_size)
    return explain(
        job.model,
        images,
        job.method,
        settings=method_settings(job.method, settings.method_preset),
        layer=job.layer,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )


class MapCache:
    """Post-processed maps per (weights, method, settings, images, seed) in ``folder`` as ``.npz``.

    Args:
        folder: the cache folder (created on the first write).
        ids: image identifiers; images: ``(N, C, *spatial)`` network inputs.
        method_preset: method settings preset (:data:`saliency.methods.PRESETS`).
        seed: seed of the noise of SmoothGrad and SmoothGrad-IG.
        batch_size: images x samples per forward/backward chunk.
        progress: called once per map set returned.
    """

    def __init__(
        self,
        folder: Path,
        ids: list[str],
        images: torch.Tensor,
        *,
        method_preset: str,
        seed: int,
        batch_size: int,
        progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.folder = folder
        self.images = images
        self.method_preset = method_preset
        self.seed = seed
        self.batch_size = batch_size
        self.progress = progress
        self.images_key = hashlib.sha256("\n".join(ids).encode() + images.numpy().tobytes()).hexdigest()[:12]
        self.computed = 0
        self.loaded = 0
        self._prefetched: set[Path] = set()

    def _key(self, model: torch.nn.Module, method: str, settings: Any, layer: str | None) -> str:
        described = {"read-out": ATTENTION_READOUT} if method == ATTENTION else settings.to_dict()
        text = json.dumps(
            [state_hash(model), method, described, layer, self.images_key, self.seed], sort_keys=True, default=str
        )
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def _load(self, path: Path) -> MapBatch | None:
        if not path.is_file():
            return None
        try:
            with np.load(path) as stored:
                return MapBatch(
                    maps=stored["maps"], degenerate=stored["degenerate"], targets=stored["targets"], raw=None
                )
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
            return None

    @property
    def settings(self) -> MapSettings:
        """The settings every map set of this cache is computed with."""
        return MapSettings(method_preset=self.method_preset, seed=self.seed, batch_size=self.batch_size)

    def _path(self, job: MapJob) -> Path:
        from saliency.methods import method_settings

        settings = None if job.method == ATTENTION else method_settings(job.method, self.method_preset)
        return self.folder / f"{job.method}-{self._key(job.model, job.method, settings, job.layer)}.npz"

    def _store(self, path: Path, batch: MapBatch) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, maps=batch.maps, degenerate=batch.degenerate, targets=batch.targets)
        write_bytes(path, buffer.getvalue())

    def maps(self, model: torch.nn.Module, method: str, layer: str | None) -> MapBatch:
        """The maps of ``method`` for ``model`` on the cache's images (computed, or read back)."""
        if is_control(method):
            self.progress()
            return control_maps(self.images, method)
        job = MapJob(model, method, layer)
        path = self._path(job)
        batch = self._load(path)
        if batch is not None:
            if path in self._prefetched:  # computed by this audit (prefetch), not reused from an earlier one
                self._prefetched.discard(path)  # a second model with the same weights reuses it
                self.computed += 1
            else:
                self.loaded += 1
            self.progress()
            return batch
        batch = compute_map_job(job, self.images, self.settings)
        self._store(path, batch)
        self.computed += 1
        self.progress()
        return batch

    def prefetch(self, jobs: Sequence[MapJob], executor: MapExecutor) -> int:
        """Compute the jobs not cached yet (controls are never cached) with ``executor`` and cache
        them; :meth:`maps` then reads them back. Returns how many were computed."""
        todo: list[tuple[MapJob, Path]] = []
        for job in jobs:
            path = self._path(job) if not is_control(job.method) else None
            if path is not None and not path.is_file() and path not in {p for _, p in todo}:
                todo.append((job, path))
        if not todo:
            return 0
        batches = executor([job for job, _ in todo], self.images, self.settings)
        for (_, path), batch in zip(todo, batches, strict=True):
            self._store(path, batch)
        self._prefetched.update(path for _, path in todo)
        return len(todo)
