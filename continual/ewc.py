"""Elastic weight consolidation: the diagonal Fisher at the old site, its file, and the penalty.

Spec continual.md 2.2 steps 2-5. At site A, :func:`estimate_fisher` measures the diagonal of the
Fisher information of the trained model ``theta_A``; the :class:`Fisher` it returns carries the
anchor ``theta_A`` too, so its file plus the model are all that leave site A (no images). At site
B, :class:`EWCPenalty` adds ``(lambda / 2) * sum_i F_i (theta_i - theta_A,i)^2`` to the loss.

Fisher modes (:data:`FISHER_MODES`):

* ``"empirical_logprob"`` (default): ``F_i = (1/N) sum_n g_{n,i}^2`` with
  ``g_n = grad_theta log_softmax(f(x_n))[y_n]`` for the dataset label ``y_n``.
* ``"true_fisher"``: the same with ``y_n`` drawn from the model's own predictive distribution
  ``softmax(f(x_n))`` (inverse CDF of uniforms from a ``torch.Generator`` seeded with ``seed``,
  one uniform per sample in data order, so a seed fixes the labels).
* ``"qtim_logit_sum"``: the released paper code (QTIM-Lab/MedicalDomainExpansion ``fim.py``):
  gradient of the **raw target logit**, BN layers in **train mode** (each minibatch normalized
  with its own statistics, so the per-sample gradients are coupled through them), **summed**
  over samples, not averaged. The BN train mode is reproduced faithfully: one forward pass of the
  whole minibatch, then one backward pass per sample from that shared graph, exactly the paper
  code's algorithm. It is not vmapped: vmapping the model would give each sample batch statistics
  of its own (batch size 1), a different quantity; and vmapping the backward passes
  (``autograd.grad(is_grads_batched=True)``) measured no faster (32 samples of 64x64 on the compact
  DenseNet: 0.48 s against 0.42 s for the loop), because every coupled per-sample gradient needs a
  full-batch backward pass anyway. Two quirks are documented, not reproduced: the paper code's
  forward passes update the model's BN running statistics (here they run on copies of the
  buffers: inputs are never modified), and its loader iterator is rebuilt on every pass so that
  its "sum over N samples" is the first minibatch repeated N/64 times (here every sample is
  visited once: pass the first batch ``max_samples // 64`` times to mimic it).

How the batched estimate works (``bn_eval=True``): the model is called through
``torch.func.functional_call`` on one sample, and ``torch.func.vmap(torch.func.grad(...))`` over
the samples of a chunk (``batch_size``) yields every per-sample gradient of every parameter with
``requires_grad`` in one vectorized pass; their squares are summed in float64. With the BN layers
in eval mode the samples are independent, so this equals the per-sample loop
(:func:`fisher_loop_reference`, kept for tests and the benchmark) to float rounding. Memory: one
chunk's per-sample gradients are held at once, ``batch_size x n_params x 4`` bytes (compact
DenseNet 25 k parameters: 25 MB at 256; ResNet-18 11.2 M parameters: 2.9 GB at 64); the default
chunk (:func:`default_chunk`) keeps it near 256 MB.

Module modes while estimating: the BN layers are in eval mode (``bn_eval=True``, the Fisher is
measured under the normalization that BN-frozen fine-tuning uses) or train mode
(``bn_eval=False``); every other module (dropout) is in eval mode, so the Fisher is that of the
deterministic network. All modes are restored afterwards; parameters and buffers are not changed.

File layout (``torch.save``, read with ``weights_only=True``)::

    {"format": "medimg-fisher", "version": 1, "values": {name: tensor}, "meta": {...},
     "anchor": {name: tensor} | None}
"""

from __future__ import annotations

import contextlib
import math
import os
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from continual.bn import bn_modules, is_batch_norm, is_bn_frozen, is_scripted
from medimg import __version__
from medimg.models import CheckpointError, load_medimg_file
from medimg.training import classification_batch
from medimg.writers import atomic_path

__all__ = [
    "default_chunk",
    "FISHER_FORMAT",
    "FISHER_MODES",
    "FISHER_VERSION",
    "EWCPenalty",
    "Fisher",
    "FisherFileError",
    "estimate_fisher",
    "ewc_penalty",
    "fisher_loop_reference",
]

FISHER_MODES: tuple[str, ...] = ("empirical_logprob", "true_fisher", "qtim_logit_sum")
FISHER_FORMAT = "medimg-fisher"
FISHER_VERSION = 1


class FisherFileError(CheckpointError):
    """A Fisher file is missing, unreadable, not a medimg Fisher file, or inconsistent; the message names the file."""


@dataclass
class Fisher:
    """A diagonal Fisher information estimate with the anchor it was measured at.

    Attributes:
        values: ``{parameter name: F}``, each F float with the parameter's shape, >= 0, on the CPU.
        meta: how it was made: ``mode``, ``normalization`` (``"mean"``: divided by ``n_samples``;
            ``"sum"``: not, the ``qtim_logit_sum`` mode), ``n_samples``, ``n_batches``, ``seed``,
            ``bn_eval``, ``max_samples``, ``subset`` (``"all"``, ``"random"``: a seeded random subset
            of a dataset, ``"first"``: the first ``max_samples`` samples of an iterable of batches),
            ``batch_size``, ``differentiated``, ``labels``, ``algorithm`` (``"vmap"``, ``"shared
            forward"`` or ``"loop"``), ``parameters`` (names), ``shapes``, ``created`` (UTC ISO 8601),
            ``torch_version``, ``medimg_version``.
        anchor: ``{parameter name: theta_A}`` copies of the parameters the Fisher was measured at
            (the EWC anchor), same names and shapes as ``values``; None when unknown (then the
            penalty needs an explicit anchor).
    """

    values: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    anchor: dict[str, torch.Tensor] | None = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the Fisher, its metadata and its anchor to ``path`` (``.pt``), atomically.

        Returns:
            The path written.
        """
        payload = {
            "format": FISHER_FORMAT,
            "version": FISHER_VERSION,
            "values": {name: t.detach().cpu().contiguous() for name, t in self.values.items()},
            "meta": dict(self.meta),
            "anchor": None
            if self.anchor is None
            else {name: t.detach().cpu().contiguous() for name, t in self.anchor.items()},
        }
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, map_location: Any = "cpu") -> Fisher:
        """Read a file written by :meth:`save` (``torch.load(weights_only=True)``) and check it.

        Raises:
            FisherFileError: missing or unreadable file, pickled objects, another format, a newer
                version, or contents that are not a Fisher (non-tensor values, negative or
                non-finite entries, an anchor whose names or shapes do not match).
        """
        path = Path(path)
        payload = load_medimg_file(
            path,
            kind="Fisher file",
            file_format=FISHER_FORMAT,
            max_version=FISHER_VERSION,
            map_location=map_location,
            error=FisherFileError,
        )
        values, meta, anchor = payload.get("values"), payload.get("meta"), payload.get("anchor")
        if not _is_tensor_dict(values) or not values:
            raise FisherFileError(f"Fisher file {path}: 'values' must be a non-empty dict of parameter name -> tensor")
        if not isinstance(meta, dict):
            raise FisherFileError(f"Fisher file {path}: 'meta' must be a dict")
        bad = [name for name, t in values.items() if not bool(torch.isfinite(t).all()) or bool((t < 0).any())]
        if bad:
            raise FisherFileError(f"Fisher file {path}: negative or non-finite Fisher values in {', '.join(bad[:5])}")
        if anchor is not None:
            if not _is_tensor_dict(anchor):
                raise FisherFileError(f"Fisher file {path}: 'anchor' must be a dict of parameter name -> tensor")
            mismatch = [n for n, t in values.items() if n not in anchor or anchor[n].shape != t.shape]
            if mismatch:
                raise FisherFileError(
                    f"Fisher file {path}: the anchor lacks or mis-shapes parameter(s) {', '.join(mismatch[:5])}"
                )
        return cls(values=dict(values), meta=meta, anchor=None if anchor is None else dict(anchor))


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


# --------------------------------------------------------------------------------------------
# data


def _iter_batches(
    data: Any, *, max_samples: int | None, seed: int, batch_size: int, device: torch.device, info: dict[str, Any]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images (B, C, *spatial) float, labels (B,) int64)`` on ``device``, at most ``max_samples`` in all.

    A ``torch.utils.data.Dataset`` with a length is batched here (``batch_size``, data order); with
    ``max_samples`` below its length, a random subset of that size is drawn with ``seed`` and visited
    in index order. Any other iterable is taken as batches, truncated after ``max_samples`` samples.
    Sets ``info["subset"]``.
    """
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        n = len(data)
        if max_samples is not None and max_samples < n:
            generator = torch.Generator().manual_seed(seed)
            indices = sorted(torch.randperm(n, generator=generator)[:max_samples].tolist())
            info["subset"] = "random"
        else:
            indices = list(range(n))
            info["subset"] = "all"
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, indices), batch_size=batch_size)
        for batch in loader:
            yield classification_batch(batch, device)
        return
    info["subset"] = "all"
    seen = 0
    for batch in data:
        images, labels = classification_batch(batch, device)
        if max_samples is not None and seen + images.shape[0] >= max_samples:
            info["subset"] = "first"  # the first max_samples samples (all of them if there were no more)
            yield images[: max_samples - seen], labels[: max_samples - seen]
            return
        seen += images.shape[0]
        yield images, labels


def _sampled_target(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Class drawn from ``softmax(logits)`` (K,) by inverse CDF at ``u`` (float64 scalar in [0, 1))."""
    cdf = torch.softmax(logits.detach().double(), dim=-1).cumsum(-1)
    return (cdf < u).sum(-1).clamp(max=logits.shape[-1] - 1)


# --------------------------------------------------------------------------------------------
# per-batch squared-gradient sums


def _selected_outputs(
    logits: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None, *, logprob: bool
) -> torch.Tensor:
    """``(B,)`` the differentiated output per sample: log-softmax or raw logit of the target class."""
    if u is None:
        targets = labels
    else:
        targets = torch.stack([_sampled_target(row, ui) for row, ui in zip(logits, u, strict=True)])
    out = torch.log_softmax(logits, dim=-1) if logprob else logits
    return out.gather(1, targets.view(-1, 1)).squeeze(1)


def _affine_bn_forward(self: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm written as its per-channel affine map (same values to float rounding)."""
    scale = torch.rsqrt(self.running_var + self.eps)
    if self.affine:
        scale = scale * self.weight
    shift = -self.running_mean * scale
    if self.affine:
        shift = shift + self.bias
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.view(shape) + shift.view(shape)


@contextlib.contextmanager
def _bn_as_affine(model: torch.nn.Module) -> Iterator[None]:
    """While vmapping, run each eval-mode BN layer with running statistics as its affine map.

    Under ``vmap`` the batching rule of ``native_batch_norm`` (and its backward) is markedly slower
    than the equivalent elementwise ``x * scale + shift`` (measured on the compact DenseNet: the whole
    batched Fisher 98 ms instead of 116 ms for 64 images of 64x64, 1 thread; 63 instead of 82 ms,
    2 threads). Each such layer gets an instance-level ``forward`` for the duration of the block,
    removed afterwards; layers in train mode or without running statistics are left alone, and so are
    TorchScript layers (their compiled parent would not call a Python ``forward``).
    """
    patched = []
    for module in bn_modules(model).values():
        if module.training or module.running_mean is None or module.running_var is None or is_scripted(module):
            continue
        patched.append((module, module.__dict__.get("forward")))
        module.__dict__["forward"] = types.MethodType(_affine_bn_forward, module)
    try:
        yield
    finally:
        for module, previous in patched:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous


class _Estimator:
    """Per-batch sums of squared per-sample gradients for one model and Fisher mode."""

    def __init__(self, model: torch.nn.Module, *, logprob: bool, sampled: bool, bn_eval: bool, chunk: int) -> None:
        self.model = model
        self.logprob, self.sampled, self.bn_eval, self.chunk = logprob, sampled, bn_eval, chunk
        named = dict(model.named_parameters())
        self.names = [name for name, p in named.items() if p.requires_grad]
        self.params = {name: named[name].detach() for name in self.names}
        self.frozen = {name: p.detach() for name, p in named.items() if not p.requires_grad}
        self.buffers = dict(model.named_buffers())
        self._vmapped: Callable[..., dict[str, torch.Tensor]] | None = None

    # -- batched ------------------------------------------------------------------------------

    def _per_sample_grads(self) -> Callable[..., dict[str, torch.Tensor]]:
        if self._vmapped is None:
            from torch.func import functional_call, grad, vmap

            model, others = self.model, {**self.frozen, **self.buffers}
            logprob, sampled = self.logprob, self.sampled

            def selected(
                params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, u: torch.Tensor
            ) -> torch.Tensor:
                logits = functional_call(model, (params, others), (x.unsqueeze(0),))[0]
                target = _sampled_target(logits, u) if sampled else y
                out = torch.log_softmax(logits, dim=-1) if logprob else logits
                return out.gather(0, target.reshape(1)).squeeze(0)

            self._vmapped = vmap(grad(selected), in_dims=(None, 0, 0, 0))
        return self._vmapped

    def batched(self, images: torch.Tensor, labels: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.bn_eval:
            return self._shared_forward(images, labels, u)
        sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in self.params.items()}
        per_sample = self._per_sample_grads()
        with _bn_as_affine(self.model):
            for start in range(0, images.shape[0], self.chunk):
                stop = start + self.chunk
                grads = per_sample(self.params, images[start:stop], labels[start:stop], u[start:stop])
                for name in self.names:
                    sums[name] += grads[name].double().square().sum(0)
        return sums

    def _shared_forward(self, images: torch.Tensor, labels: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """BN in train mode: one forward of the minibatch (on copies of the buffers), one backward per sample."""
        from torch.func import functional_call

        params = {name: p.detach().requires_grad_(True) for name, p in self.params.items()}
        buffers = {name: b.clone() for name, b in self.buffers.items()}  # BN train mode updates them
        logits = functional_call(self.model, (params, self.frozen, buffers), (images,))
        selected = _selected_outputs(logits, labels, u if self.sampled else None, logprob=self.logprob)
        return self._backward_each(selected, list(params.values()))

    def _backward_each(self, selected: torch.Tensor, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        sums = [torch.zeros_like(p, dtype=torch.float64) for p in inputs]
        for n in range(selected.shape[0]):
            grads = torch.autograd.grad(selected[n], inputs, retain_graph=n < selected.shape[0] - 1)
            for acc, g in zip(sums, grads, strict=True):
                acc += g.double().square()
        return dict(zip(self.names, sums, strict=True))

    # -- reference loop -----------------------------------------------------------------------

    def loop(self, images: torch.Tensor, labels: torch.Tensor, u: torch.Tensor) -> dict[str, torch.Tensor]:
        named = dict(self.model.named_parameters())
        inputs = [named[name] for name in self.names]
        sampled_u = u if self.sampled else None
        if not self.bn_eval:  # the paper code: one forward of the batch, one backward per sample
            saved = {name: b.clone() for name, b in self.buffers.items()}
            try:  # restored after the backward passes: BN saves its running-stat tensors for backward
                logits = self.model(images)
                selected = _selected_outputs(logits, labels, sampled_u, logprob=self.logprob)
                return self._backward_each(selected, inputs)
            finally:
                with torch.no_grad():
                    for name, b in self.buffers.items():
                        b.copy_(saved[name])
        sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in self.params.items()}
        for n in range(images.shape[0]):
            logits = self.model(images[n : n + 1])
            ui = None if sampled_u is None else sampled_u[n : n + 1]
            selected = _selected_outputs(logits, labels[n : n + 1], ui, logprob=self.logprob)[0]
            for name, g in zip(self.names, torch.autograd.grad(selected, inputs), strict=True):
                sums[name] += g.double().square()
        return sums


# --------------------------------------------------------------------------------------------
# estimation


def _estimate(
    model: torch.nn.Module,
    data: Any,
    *,
    mode: str,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    bn_eval: bool | None,
    batched: bool,
) -> Fisher:
    _check_settings(mode, max_samples, batch_size)
    if bn_eval is None:
        bn_eval = mode != "qtim_logit_sum"
    bns = bn_modules(model)
    if not bn_eval and any(is_bn_frozen(m) for m in bns.values()):
        raise ValueError("bn_eval=False needs BN layers in train mode, but they are frozen by freeze_bn_stats")
    first = next(iter(model.parameters()), None)
    if first is None:
        raise ValueError("the model has no parameters")
    estimator = _Estimator(
        model, logprob=mode != "qtim_logit_sum", sampled=mode == "true_fisher", bn_eval=bn_eval, chunk=batch_size
    )
    if not estimator.names:
        raise ValueError("no parameter of the model has requires_grad=True: nothing to estimate a Fisher for")
    acc = _accumulate(
        model, estimator, data, max_samples=max_samples, seed=seed, batch_size=batch_size, device=first.device,
        bn_eval=bn_eval, batched=batched,
    )  # fmt: skip
    return _fisher(
        model, estimator.names, acc, mode=mode, seed=seed, bn_eval=bn_eval, max_samples=max_samples,
        batch_size=batch_size, batched=batched,
    )  # fmt: skip


def _check_settings(mode: str, max_samples: int | None, batch_size: int) -> None:
    if mode not in FISHER_MODES:
        raise ValueError(f"Fisher mode must be one of {', '.join(FISHER_MODES)}; got {mode!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer or None; got {max_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")


@dataclass
class _SquaredGradientSums:
    """What a pass over the data accumulated: per-parameter sums (float64) and what they cover."""

    sums: dict[str, torch.Tensor]
    n_samples: int
    n_batches: int
    n_classes: int | None
    subset: str = "all"


def _accumulate(
    model: torch.nn.Module,
    estimator: _Estimator,
    data: Any,
    *,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    device: torch.device,
    bn_eval: bool,
    batched: bool,
) -> _SquaredGradientSums:
    """Sum the squared per-sample gradients over the batches of ``data`` (:func:`_iter_batches`) with the BN
    layers in eval (``bn_eval``) or train mode and every other module in eval mode; modes are restored afterwards.

    Raises:
        ValueError: labels outside ``[0, K)``, or no samples at all.
    """
    modes = {m: m.training for m in model.modules()}
    generator = torch.Generator().manual_seed(seed)
    info: dict[str, Any] = {}
    sums: dict[str, torch.Tensor] | None = None
    n_samples = n_batches = 0
    n_classes: int | None = None
    try:
        for m in model.modules():
            m.training = is_batch_norm(m) and not bn_eval
        with torch.enable_grad():
            for images, labels in _iter_batches(
                data, max_samples=max_samples, seed=seed, batch_size=batch_size, device=device, info=info
            ):
                if images.shape[0] == 0:
                    continue
                if n_classes is None:
                    n_classes = _probe_classes(model, images[:1])
                if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
                    raise ValueError(
                        f"labels must be class indices in [0, {n_classes}) for this {n_classes}-class model; "
                        f"got values from {int(labels.min())} to {int(labels.max())}"
                    )
                u = torch.rand(images.shape[0], generator=generator, dtype=torch.float64).to(device)
                batch_sums = (estimator.batched if batched else estimator.loop)(images, labels, u)
                if sums is None:
                    sums = batch_sums
                else:
                    for name, value in batch_sums.items():
                        sums[name] += value
                n_samples += images.shape[0]
                n_batches += 1
    finally:
        for m, training in modes.items():
            m.training = training
    if sums is None or n_samples == 0:
        raise ValueError("the data held no samples: cannot estimate a Fisher")
    return _SquaredGradientSums(sums, n_samples, n_batches, n_classes, subset=info.get("subset", "all"))


def _fisher(
    model: torch.nn.Module,
    names: list[str],
    acc: _SquaredGradientSums,
    *,
    mode: str,
    seed: int,
    bn_eval: bool,
    max_samples: int | None,
    batch_size: int,
    batched: bool,
) -> Fisher:
    """The :class:`Fisher` of the sums (divided by the sample count unless ``qtim_logit_sum``), with its
    anchor (copies of the parameters) and its meta (how it was made)."""
    normalization = "sum" if mode == "qtim_logit_sum" else "mean"
    named = dict(model.named_parameters())
    values = {}
    for name in names:
        total = acc.sums[name] if normalization == "sum" else acc.sums[name] / acc.n_samples
        values[name] = total.to(named[name].dtype).cpu()
    anchor = {name: named[name].detach().cpu().clone() for name in names}
    meta = {
        "mode": mode,
        "normalization": normalization,
        "n_samples": acc.n_samples,
        "n_batches": acc.n_batches,
        "seed": seed,
        "bn_eval": bn_eval,
        "max_samples": max_samples,
        "subset": acc.subset,
        "batch_size": batch_size,
        "differentiated": "log_softmax(logits)[target]" if mode != "qtim_logit_sum" else "logits[target]",
        "labels": "sampled from softmax(logits)" if mode == "true_fisher" else "dataset",
        "algorithm": ("vmap" if bn_eval else "shared forward") if batched else "loop",
        "n_classes": acc.n_classes,
        "parameters": list(names),
        "shapes": {name: list(named[name].shape) for name in names},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        "medimg_version": __version__,
    }
    return Fisher(values=values, meta=meta, anchor=anchor)


@torch.no_grad()
def _probe_classes(model: torch.nn.Module, image: torch.Tensor) -> int:
    """Number of classes K from one forward pass of one image with every module in eval mode."""
    modes = {m: m.training for m in model.modules()}
    try:
        for m in model.modules():
            m.training = False
        logits = model(image)
    finally:
        for m, training in modes.items():
            m.training = training
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return (B, K) class logits; for one image it returned {shape}")
    return int(logits.shape[1])


#: Memory for one chunk's per-sample gradients chosen by :func:`default_chunk` (bytes).
CHUNK_MEMORY = 256 * 2**20


def default_chunk(model: torch.nn.Module, *, memory: int = CHUNK_MEMORY, largest: int = 256) -> int:
    """Per-sample gradients per vmapped chunk: as many as fit ``memory`` bytes of float32 gradients
    of the trainable parameters, between 8 and ``largest`` (compact DenseNet, 25 k parameters: 256;
    ResNet-18, 11.2 M: 8)."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(min(largest, max(8, memory // max(1, 4 * n))))


def estimate_fisher(
    model: torch.nn.Module,
    data: Any,
    *,
    mode: str = "empirical_logprob",
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    bn_eval: bool | None = None,
) -> Fisher:
    """Diagonal Fisher information of a classifier, from batched per-sample gradients (``torch.func``).

    Args:
        model: a classifier returning ``(B, K)`` float logits; the Fisher covers every parameter
            with ``requires_grad``. Not modified: modes are restored, BN buffers untouched.
        data: a ``torch.utils.data.Dataset`` of ``{"image": (C, *spatial), "label": int}`` dicts or
            ``(image, label)`` tuples (batched here by ``batch_size``), or an iterable of collated
            batches ``(images (B, C, *spatial), labels (B,))`` / ``{"image", "label"}`` dicts (e.g. a
            ``DataLoader``). Moved to the model's device.
        mode: one of :data:`FISHER_MODES` (module docstring).
        max_samples: at most this many samples (a documented subset of at least 1,000, as the method needs). For a
            Dataset a random subset drawn with ``seed``; for an iterable of batches its first
            ``max_samples`` samples (order them with a seeded sampler). None: all.
        seed: seeds the subset and the labels drawn by ``"true_fisher"``.
        batch_size: samples per batch when ``data`` is a Dataset, and per vmapped chunk (memory:
            ``batch_size x n_params x 4`` bytes). With BN in train mode the batch is the
            normalization group; batches of an iterable are then used as given. None:
            :func:`default_chunk` (a vmap call costs ~25 ms whatever its size, so large chunks
            amortize it), 64 for ``"qtim_logit_sum"`` (the paper code's batch).
        bn_eval: BN layers in eval mode (running statistics) while estimating. None: True, except
            for ``"qtim_logit_sum"`` (False: BN in train mode, as the paper code).

    Returns:
        A :class:`Fisher` with ``values`` (mean, or sum for ``"qtim_logit_sum"``), ``meta`` and
        ``anchor`` (copies of the parameters, ``theta_A``), all on the CPU.

    Raises:
        ValueError: unknown mode, bad ``max_samples``/``batch_size``, no trainable parameter, empty
            data, labels outside ``[0, K)``, output not ``(B, K)``, or ``bn_eval=False`` while the BN
            layers are frozen by :func:`continual.bn.freeze_bn_stats`.
    """
    if batch_size is None:
        batch_size = 64 if mode == "qtim_logit_sum" else default_chunk(model)
    return _estimate(
        model, data, mode=mode, max_samples=max_samples, seed=seed, batch_size=batch_size, bn_eval=bn_eval, batched=True
    )


def fisher_loop_reference(
    model: torch.nn.Module,
    data: Any,
    *,
    mode: str = "empirical_logprob",
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    bn_eval: bool | None = None,
) -> Fisher:
    """The same Fisher as :func:`estimate_fisher`, by a slow per-sample Python loop (tests, benchmark).

    With BN in eval mode every sample gets its own forward and backward pass through the model
    itself (no ``torch.func``); with BN in train mode, one forward of the batch and one backward
    per sample (the paper code's loop; BN buffers restored after each forward). Same arguments,
    subset, label draws and result layout; ``meta["algorithm"] == "loop"``.
    """
    return _estimate(
        model,
        data,
        mode=mode,
        max_samples=max_samples,
        seed=seed,
        batch_size=batch_size,
        bn_eval=bn_eval,
        batched=False,
    )


# --------------------------------------------------------------------------------------------
# penalty


class EWCPenalty:
    """``(lam / 2) * sum_i F_i (theta_i - theta_A,i)^2``, built once and called every training step.

    The sum runs over the parameters that have a Fisher entry, exist in ``model`` and have
    ``requires_grad`` at call time: new parameters (no entry), entries the model lacks (listed in
    :attr:`missing`) and frozen parameters contribute nothing. The Fisher and the
    anchor are moved once, at construction, to each parameter's device and dtype; the call is one
    fused multiply-add per parameter tensor. Build it again if the model moves to another device.

    Args:
        model: the network being fine-tuned.
        fisher: a :class:`Fisher` or a plain ``{name: F}`` dict.
        lam: lambda >= 0. Its scale depends on ``fisher.meta["normalization"]``: a code-grid lambda
            for the summed Fisher corresponds to ``lambda * N`` for the mean.
        anchor: ``{name: theta_A}``; None: ``fisher.anchor`` (the parameters the Fisher was
            measured at).

    Raises:
        ValueError: no anchor, an anchor entry missing, a Fisher or anchor shape that differs from
            the model's parameter, or a negative/non-finite lambda.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        fisher: Fisher | Mapping[str, torch.Tensor],
        lam: float,
        *,
        anchor: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        lam = float(lam)
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"the EWC lambda must be a finite number >= 0; got {lam}")
        values = fisher.values if isinstance(fisher, Fisher) else dict(fisher)
        if anchor is None:
            anchor = fisher.anchor if isinstance(fisher, Fisher) else None
        if anchor is None:
            raise ValueError("no EWC anchor: pass anchor= (theta_A) or a Fisher that carries one")
        params = dict(model.named_parameters())
        self.lam = lam
        self.names: list[str] = []
        self.missing: list[str] = [name for name in values if name not in params]
        self._params: list[torch.nn.Parameter] = []
        self._fisher: list[torch.Tensor] = []
        self._anchor: list[torch.Tensor] = []
        for name, f in values.items():
            p = params.get(name)
            if p is None:
                continue
            if name not in anchor:
                raise ValueError(f"the EWC anchor lacks parameter {name!r}, which has a Fisher entry")
            a = anchor[name]
            for what, t in (("Fisher entry", f), ("anchor", a)):
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(
                        f"EWC {what} for {name!r} has shape {tuple(t.shape)} but the model's parameter has "
                        f"{tuple(p.shape)}: the Fisher was estimated for another architecture"
                    )
            self.names.append(name)
            self._params.append(p)
            self._fisher.append(f.detach().to(device=p.device, dtype=p.dtype))
            self._anchor.append(a.detach().to(device=p.device, dtype=p.dtype))
        first = next(iter(params.values()), None)
        self._zero = torch.zeros((), device=first.device if first is not None else "cpu")

    def __call__(self) -> torch.Tensor:
        """The penalty, a scalar tensor on the model's device (differentiable w.r.t. the parameters)."""
        total = self._zero
        for p, f, a in zip(self._params, self._fisher, self._anchor, strict=True):
            if p.requires_grad:
                total = total + (f * (p - a).square()).sum()
        return total * (self.lam / 2)


def ewc_penalty(
    model: torch.nn.Module,
    fisher: Fisher | Mapping[str, torch.Tensor],
    anchor: Mapping[str, torch.Tensor] | None,
    lam: float,
) -> torch.Tensor:
    """``(lam / 2) * sum_i F_i (theta_i - theta_A,i)^2`` once; in a training loop build an :class:`EWCPenalty`.

    Arguments, rules and errors as :class:`EWCPenalty` (``anchor=None``: the Fisher's own anchor).
    """
    return EWCPenalty(model, fisher, lam, anchor=anchor)()
