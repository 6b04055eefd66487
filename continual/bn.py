"""Batch-norm statistics: find, snapshot, freeze, recompute and check them (docs/methods/domain-expansion.md).

The "global BN statistics" of Gupta et al. are the old site's population (running) statistics,
kept exactly while the network is fine-tuned on a new site. This module provides the pieces:

* :func:`bn_modules`: every batch-norm layer (``torch.nn.modules.batchnorm._BatchNorm``:
  ``BatchNorm1d/2d/3d``, their lazy variants and ``SyncBatchNorm``; instance norm is not a
  ``_BatchNorm`` and is excluded), TorchScript ones included (:func:`is_batch_norm`).
* :func:`snapshot_bn_stats` / :func:`snapshot_params`: copies of the BN buffers and of the
  parameters (the anchors ``mu_A``, ``sigma2_A``, ``theta_A``).
* :func:`freeze_bn_stats`: puts only the BN layers in eval mode and keeps them there across any
  later ``model.train()``; dropout and everything else follow ``train()``/``eval()`` as usual.
* :func:`set_trainable`: ``"all"`` or ``"bn_affine"`` (only BN gamma/beta train; the classifier
  head is frozen too, as in the paper code's ``ft_bn`` arms).
* :func:`recompute_bn_stats`: exact population statistics over a dataset in one pass.
* :func:`check_postconditions`: the bit-for-bit post-conditions of a fine-tuning arm.

Generic: works on any ``torch.nn.Module``; imports nothing from the other medimg packages.

TorchScript networks (a ``.ts`` model): their BN layers are ``RecursiveScriptModule`` objects whose
``original_name`` is the class they were compiled from. They have the same buffers, parameters and
``training`` flag (train mode updates the running statistics), but refuse forward hooks, and the
compiled parent calls them directly. So :func:`freeze_bn_stats` relies on the ``train`` guard alone
there, and :func:`recompute_bn_stats` observes their inputs at the operator level instead of with a
hook: a ``TorchDispatchMode`` sees every ``aten`` batch-norm call the TorchScript interpreter makes,
and the call's ``running_mean`` tensor (shared with the module) says which layer it is.
"""

from __future__ import annotations

import contextlib
import types
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "TRAINABLE_MODES",
    "BNFreezeHandle",
    "PostconditionError",
    "bn_modules",
    "check_postconditions",
    "freeze_bn_stats",
    "is_batch_norm",
    "is_bn_frozen",
    "is_scripted",
    "recompute_bn_stats",
    "set_trainable",
    "snapshot_bn_stats",
    "snapshot_params",
]

TRAINABLE_MODES: tuple[str, ...] = ("all", "bn_affine")
TrainableMode = Literal["all", "bn_affine"]
_BN_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
#: ``original_name`` of the TorchScript modules compiled from a ``_BatchNorm`` class.
_SCRIPTED_BN_NAMES = frozenset(
    {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"}
    | {"LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d"}
)
# BN modules currently frozen by a live handle -> how many handles hold them (freezes may nest).
_FROZEN: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()


class PostconditionError(AssertionError):
    """A fine-tuned model breaks a post-condition of its arm (frozen BN statistics or frozen weights moved)."""


def is_scripted(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a TorchScript module (no forward hooks; its compiled parent calls it directly)."""
    return isinstance(module, torch.jit.ScriptModule)


def is_batch_norm(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a batch-norm layer: a ``_BatchNorm``, or a TorchScript module compiled from one."""
    if isinstance(module, _BatchNorm):
        return True
    return is_scripted(module) and getattr(module, "original_name", None) in _SCRIPTED_BN_NAMES


def bn_modules(model: torch.nn.Module) -> dict[str, _BatchNorm]:
    """Every batch-norm layer of ``model``, by its name in ``model.named_modules()``.

    Args:
        model: any network.

    Returns:
        ``{name: module}`` in module order for every ``_BatchNorm`` (``BatchNorm1d``, ``BatchNorm2d``,
        ``BatchNorm3d``, the lazy variants, ``SyncBatchNorm``). Instance and group norm are not batch
        norm and are left out. The root module itself is named ``""``. TorchScript BN layers
        (:func:`is_batch_norm`) are included; they have the same attributes.
    """
    return {name: module for name, module in model.named_modules() if is_batch_norm(module)}


def _bn_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the BN layers' affine weight and bias."""
    bn_ids = {id(p) for module in bn_modules(model).values() for p in module.parameters(recurse=False)}
    return {name for name, p in model.named_parameters() if id(p) in bn_ids}


def snapshot_bn_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BN layer's running statistics.

    Args:
        model: any network.

    Returns:
        ``{buffer name: tensor copy}`` with the names of ``model.named_buffers()`` (e.g.
        ``"features.norm0.running_mean"``) for ``running_mean`` (float, (C,)), ``running_var``
        (float, (C,), unbiased as PyTorch stores it) and ``num_batches_tracked`` (int64, ()), on the
        buffers' device. Layers built with ``track_running_stats=False`` have none and are skipped.
    """
    stats: dict[str, torch.Tensor] = {}
    for name, module in bn_modules(model).items():
        for key in _BN_STAT_BUFFERS:
            buffer = getattr(module, key, None)
            if isinstance(buffer, torch.Tensor):
                stats[f"{name}.{key}" if name else key] = buffer.detach().clone()
    return stats


def snapshot_params(model: torch.nn.Module, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Copies of the parameters (the EWC anchor ``theta_A``).

    Args:
        model: any network.
        trainable_only: keep only parameters with ``requires_grad``.

    Returns:
        ``{name: detached copy}`` with the names of ``model.named_parameters()``, on their device.
    """
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad or not trainable_only}


def is_bn_frozen(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a BN layer held in eval mode by a live :func:`freeze_bn_stats` handle."""
    return _FROZEN.get(module, 0) > 0


def _frozen_train(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    """Replacement ``train`` of a frozen BN layer: whatever is asked, the layer stays in eval mode.

    A deep copy of a frozen model carries this method but is not frozen itself (the freeze belongs
    to the handle): there it behaves as the ordinary ``train``.
    """
    return torch.nn.Module.train(self, mode and not is_bn_frozen(self))


def _frozen_pre_hook(module: torch.nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen BN layer: undo any direct ``module.training = True`` before it runs."""
    if is_bn_frozen(module):
        module.training = False


@dataclass
class BNFreezeHandle:
    """What :func:`freeze_bn_stats` did, so that :meth:`remove` can undo it.

    Use it as a context manager, or call :meth:`remove` when the frozen phase ends.
    """

    model: torch.nn.Module
    modules: dict[str, _BatchNorm]
    _hooks: list[Any] = field(default_factory=list, repr=False)
    _previous_train: dict[str, Any] = field(default_factory=dict, repr=False)
    removed: bool = False

    def remove(self) -> None:
        """Unfreeze: restore each BN layer's ``train`` method and set its mode to the model's (``model.training``).

        Calling it twice does nothing the second time.
        """
        if self.removed:
            return
        for hook in self._hooks:
            hook.remove()
        for name, module in self.modules.items():
            previous = self._previous_train.get(name)
            if previous is None:
                module.__dict__.pop("train", None)
            else:  # an outer (nested) freeze is still active: give it its method back
                module.__dict__["train"] = previous
            count = _FROZEN.get(module, 0) - 1
            if count > 0:
                _FROZEN[module] = count
            else:
                _FROZEN.pop(module, None)
                module.training = self.model.training
        self.removed = True

    def __enter__(self) -> BNFreezeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def freeze_bn_stats(model: torch.nn.Module) -> BNFreezeHandle:
    """Put only the BN layers in eval mode and keep them there after any later ``model.train()``.

    In eval mode a BN layer normalizes with its running statistics (the old site's global
    statistics) and never updates them; its affine gamma/beta still receive gradients. Other
    modules are not touched: dropout keeps following ``model.train()``/``model.eval()``, unlike the
    paper code's whole-model ``model.eval()``.

    Mechanism (two guards, per module instance, nothing global): each BN layer gets an
    instance-level ``train`` method that always switches it to eval mode, so ``model.train()``
    (which calls ``child.train(True)`` recursively) leaves ``bn.training == False``, visible to
    anyone inspecting the model; and a forward pre-hook on each BN layer resets ``training`` to
    False before every forward, which also catches code that assigns ``module.training = True``
    directly. The freeze belongs to the handle: a ``copy.deepcopy`` of a frozen model is not frozen
    (the copied method and hook do nothing there); freeze the copy with its own handle.
    TorchScript BN layers refuse hooks: they get the ``train`` guard only, so a direct
    ``module.training = True`` there is not undone.

    Args:
        model: any network; models without BN layers are accepted (nothing is frozen).

    Returns:
        A :class:`BNFreezeHandle`; ``handle.remove()`` (or leaving its ``with`` block) unfreezes and
        sets the BN layers to the model's current mode. Freezes may nest.
    """
    modules = bn_modules(model)
    handle = BNFreezeHandle(model=model, modules=modules)
    for name, module in modules.items():
        handle._previous_train[name] = module.__dict__.get("train")
        module.__dict__["train"] = types.MethodType(_frozen_train, module)
        if not is_scripted(module):
            handle._hooks.append(module.register_forward_pre_hook(_frozen_pre_hook))
        module.training = False
        _FROZEN[module] = _FROZEN.get(module, 0) + 1
    return handle


def set_trainable(model: torch.nn.Module, mode: str) -> list[str]:
    """Choose which parameters fine-tuning updates.

    Args:
        model: any network.
        mode: ``"all"``: every parameter gets ``requires_grad=True``; ``"bn_affine"``: only the BN
            layers' weight (gamma) and bias (beta) keep ``requires_grad=True``; every other
            parameter, the classifier head included, gets ``requires_grad=False``.

    Returns:
        The names of the trainable parameters after the change.

    Raises:
        ValueError: unknown mode, or ``"bn_affine"`` on a model without affine BN layers.
    """
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"trainable mode must be one of {', '.join(TRAINABLE_MODES)}; got {mode!r}")
    bn_names = _bn_parameter_names(model)
    if mode == "bn_affine" and not bn_names:
        raise ValueError("trainable='bn_affine' needs a model with affine batch-norm layers; this one has none")
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(mode == "all" or name in bn_names)
        if p.requires_grad:
            trainable.append(name)
    return trainable


def _batch_images(batch: Any) -> torch.Tensor:
    """The images of a batch: a tensor, an ``(images, labels, ...)`` tuple or an ``{"image": ...}`` dict."""
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise ValueError(f"batch dicts must hold 'image'; this one has keys {sorted(batch)}")
        images = batch["image"]
    elif isinstance(batch, (list, tuple)):
        images = batch[0]
    else:
        images = batch
    if hasattr(images, "as_tensor"):  # a MONAI MetaTensor
        images = images.as_tensor()
    images = torch.as_tensor(images)
    return images if torch.is_floating_point(images) else images.float()


@torch.no_grad()
def recompute_bn_stats(model: torch.nn.Module, batches: Iterable[Any]) -> int:
    """Replace every BN layer's running statistics by the exact statistics of its input over ``batches``.

    One forward pass over the data. The BN layers run in train mode, normalizing
    with each batch's statistics as in training (as ``torch.optim.swa_utils.update_bn`` does); every
    other module runs in eval mode (dropout off: the statistics are those of the inference network).
    A forward pre-hook on each BN layer accumulates the per-channel count, mean and sum of squared
    deviations of its input (float64, Chan et al.'s pairwise merge of the batch moments). At the end
    ``running_mean`` is the population mean, ``running_var`` the unbiased population variance
    (``M2 / (N - 1)``, the convention PyTorch stores) and ``num_batches_tracked`` the number of
    batches; module modes are restored (momentum is not used and left as it is).

    Why not PyTorch's cumulative average (``momentum=None``): it averages the per-batch means and
    the per-batch unbiased variances with equal weight per batch, so its variance misses the spread
    between batch means and batches of unequal size are mis-weighted; it is exact only for a single
    batch. The accumulation here is exact for any batching.

    Args:
        model: the network; its BN buffers are replaced in place, nothing else changes.
        batches: an iterable of batches: image tensors ``(B, C, *spatial)``, ``(images, labels)``
            tuples or ``{"image": ..., ...}`` dicts (e.g. a ``DataLoader``). Images are moved to the
            device of the model's first parameter (or buffer).

    Returns:
        The number of samples seen.

    Raises:
        RuntimeError: a BN layer is frozen by :func:`freeze_bn_stats` (remove the handle first).
        ValueError: ``batches`` is empty.
    """
    modules = _recomputable_layers(model)
    moments = {name: _Moments() for name in modules}
    hooks = [m.register_forward_pre_hook(moments[name].observe) for name, m in modules.items() if not is_scripted(m)]
    try:
        with _observing_scripted(modules, moments):
            samples, n_batches = _forward_in_bn_train_mode(model, batches)
    finally:
        for hook in hooks:
            hook.remove()
    if n_batches == 0:
        raise ValueError("recompute_bn_stats got no batches")
    for name, m in modules.items():
        moments[name].write_to(m, n_batches)
    return samples


def _recomputable_layers(model: torch.nn.Module) -> dict[str, _BatchNorm]:
    """The BN layers that track running statistics.

    Raises:
        RuntimeError: one of them is frozen by :func:`freeze_bn_stats`.
    """
    modules = {name: m for name, m in bn_modules(model).items() if m.track_running_stats}
    frozen = [name or "<root>" for name, m in modules.items() if is_bn_frozen(m)]
    if frozen:
        raise RuntimeError(
            f"cannot recompute BN statistics: layer(s) {', '.join(frozen[:5])} are frozen by freeze_bn_stats; "
            "remove its handle first"
        )
    return modules


@contextlib.contextmanager
def _observing_scripted(modules: Mapping[str, torch.nn.Module], moments: Mapping[str, _Moments]) -> Iterator[None]:
    """While active, feed the input of every ``aten`` batch-norm call on a TorchScript layer of ``modules``
    to that layer's :class:`_Moments` (the layer is found by its ``running_mean`` tensor)."""
    # torch's operator-level interception (what its FlopCounterMode builds on); torch has no public alias for it
    from torch.utils._python_dispatch import TorchDispatchMode

    by_buffer = {
        m.running_mean.data_ptr(): moments[name]
        for name, m in modules.items()
        if is_scripted(m) and isinstance(m.running_mean, torch.Tensor)
    }
    if not by_buffer:
        yield
        return

    class _BatchNormInputs(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if "batch_norm" in func.name() and len(args) > 3 and isinstance(args[3], torch.Tensor):
                observed = by_buffer.get(args[3].data_ptr())
                if observed is not None:
                    observed.observe(None, (args[0],))
            return func(*args, **(kwargs or {}))

    with _BatchNormInputs():
        yield


@dataclass
class _Moments:
    """Per-channel count, mean and sum of squared deviations (``M2``, float64) of a BN layer's inputs so far."""

    count: int = 0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    def observe(self, module: torch.nn.Module | None, args: tuple[Any, ...]) -> None:
        """Forward pre-hook: merge the moments of this input (Chan et al.'s pairwise update)."""
        x = args[0].detach().double()
        dims = [d for d in range(x.ndim) if d != 1]
        n = x.numel() // x.shape[1]
        mean = x.mean(dim=dims)
        m2 = ((x - mean.view(1, -1, *([1] * (x.ndim - 2)))) ** 2).sum(dim=dims)
        if self.count == 0 or self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
        else:
            total = self.count + n
            delta = mean - self.mean
            self.mean, self.m2 = self.mean + delta * n / total, self.m2 + m2 + delta**2 * self.count * n / total
            self.count = total

    def write_to(self, module: _BatchNorm, n_batches: int) -> None:
        """Population mean, unbiased variance and batch count into the layer's buffers (left alone if never reached)."""
        mean, var, tracked = module.running_mean, module.running_var, module.num_batches_tracked
        if self.count == 0 or self.mean is None or self.m2 is None or mean is None or var is None or tracked is None:
            return
        mean.copy_(self.mean.to(mean.dtype))
        var.copy_((self.m2 / max(self.count - 1, 1)).to(var.dtype))
        tracked.fill_(n_batches)


def _forward_in_bn_train_mode(model: torch.nn.Module, batches: Iterable[Any]) -> tuple[int, int]:
    """One forward pass over ``batches`` with only the BN layers in train mode; modes restored afterwards.

    Returns:
        ``(samples, batches)`` seen. Images go to the device of the model's first parameter (or buffer).
    """
    tensor: torch.Tensor | None = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    samples = n_batches = 0
    try:
        for m in model.modules():
            m.training = is_batch_norm(m)
        for batch in batches:
            images = _batch_images(batch).to(device)
            model(images)
            samples += images.shape[0]
            n_batches += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
    return samples, n_batches


def _diff_summary(name: str, actual: torch.Tensor, expected: torch.Tensor) -> str:
    if actual.shape != expected.shape:
        return f"{name} (shape {tuple(actual.shape)}, anchor {tuple(expected.shape)})"
    diff = (actual.double() - expected.to(actual.device).double()).abs()
    return f"{name} (max |diff| {diff.max().item():.3g}, {int((diff > 0).sum())} of {diff.numel()} values differ)"


def check_postconditions(
    model: torch.nn.Module,
    anchor_params: Mapping[str, torch.Tensor],
    anchor_bn: Mapping[str, torch.Tensor],
    *,
    freeze_bn_stats: bool,
    trainable: str,
) -> None:
    """Assert the post-conditions of an arm after fine-tuning, bit for bit (``torch.equal``).

    Args:
        model: the fine-tuned network.
        anchor_params: :func:`snapshot_params` of the model before fine-tuning (``theta_A``).
        anchor_bn: :func:`snapshot_bn_stats` of the model before fine-tuning (``mu_A``, ``sigma2_A``,
            ``num_batches_tracked``).
        freeze_bn_stats: the BN statistics were frozen: every buffer of ``anchor_bn`` must equal the
            model's.
        trainable: ``"all"`` (no parameter condition) or ``"bn_affine"``: every anchored parameter
            that is not a BN weight/bias must equal the model's.

    Raises:
        PostconditionError: (an ``AssertionError``) naming every offending tensor with its largest
            difference, or an anchored tensor the model lacks.
        ValueError: unknown ``trainable``.
    """
    if trainable not in TRAINABLE_MODES:
        raise ValueError(f"trainable must be one of {', '.join(TRAINABLE_MODES)}; got {trainable!r}")
    problems: list[str] = []
    if freeze_bn_stats:
        if not anchor_bn and bn_modules(model):
            problems.append("freeze_bn_stats=True but anchor_bn is empty")
        buffers = dict(model.named_buffers())
        moved = []
        for name, expected in anchor_bn.items():
            actual = buffers.get(name)
            if actual is None:
                moved.append(f"{name} (missing from the model)")
            elif actual.shape != expected.shape or not torch.equal(actual, expected.to(actual.device)):
                moved.append(_diff_summary(name, actual, expected))
        if moved:
            more = " ..." if len(moved) > 10 else ""
            problems.append(f"frozen BN statistics changed: {'; '.join(moved[:10])}{more}")
    if trainable == "bn_affine":
        params = dict(model.named_parameters())
        bn_names = _bn_parameter_names(model)
        moved = []
        for name, expected in anchor_params.items():
            if name in bn_names:
                continue
            actual = params.get(name)
            if actual is None:
                moved.append(f"{name} (missing from the model)")
            elif actual.shape != expected.shape or not torch.equal(actual.detach(), expected.to(actual.device)):
                moved.append(_diff_summary(name, actual.detach(), expected))
        if moved:
            more = " ..." if len(moved) > 10 else ""
            problems.append(f"trainable='bn_affine' but non-BN parameters changed: {'; '.join(moved[:10])}{more}")
    if problems:
        raise PostconditionError("post-condition failed: " + " | ".join(problems))
