"""Voxel-wise uncertainty maps in [0, 100] for any segmentation model, as QU-BraTS wants them.

Three ways to draw several probability predictions for one image (``SUPPORTED_METHODS``):

- ``"tta"``: test-time augmentation with flips. The identity, then flips over every non-empty
  subset of the spatial axes (3-D: 8 combinations, 2-D: 4), ordered by subset size and then
  lexicographically; each prediction is flipped back before it is averaged.
- ``"mc-dropout"``: Monte Carlo dropout. Stochastic passes with the dropout layers in train mode
  and every other module (batch/instance norm, ...) in eval mode, seeded.
- ``"ensemble"``: one pass per model of an ensemble (>= 2 models).

The per-region probabilities are averaged over the samples (a running sum: one sample is held at
a time); the mean gives the segmentation (the caller thresholds it, e.g. at 0.5) and the
uncertainty map.

**The mapping to [0, 100]** (:func:`predictive_entropy_map`): the predictive entropy of the mean
probability ``p`` of a region at a voxel, that is the binary entropy
``H(p) = -p log p - (1 - p) log(1 - p)``, divided by ``log 2`` (so it lies in [0, 1]) and
multiplied by 100. Why this one: it is symmetric in ``p`` and ``1 - p`` (being sure a voxel is
outside a region is as certain as being sure it is inside), it is 100 at ``p = 0.5``, exactly
where the thresholded decision flips, it is 0 only where every sample agrees with certainty
(``p`` is 0 or 1), and it rises monotonically in between, so the QU-BraTS filtering
``u > tau`` removes the voxels closest to the decision boundary first. It needs no calibration
constant and is the same for every method, so maps from TTA, MC dropout and ensembles are
comparable.

Generic over any torch model: the caller passes ``predict(model, x)``, which maps a
(1, C, *spatial) input to (1, R, *spatial) probabilities with the given model (for example
``sliding_window_inference`` followed by a sigmoid). Regions are named by a mapping from region
name to output channel; the default is MONAI's BraTS bundle order (TC, WT, ET).

This module never imports ``pipelines``, ``saliency`` or ``continual``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn.modules.dropout import _DropoutNd

__all__ = [
    "DEFAULT_REGIONS",
    "SUPPORTED_METHODS",
    "UncertaintyResult",
    "estimate_uncertainty",
    "flip_combinations",
    "predictive_entropy_map",
]

#: The estimation methods :func:`estimate_uncertainty` accepts.
SUPPORTED_METHODS: tuple[str, ...] = ("tta", "mc-dropout", "ensemble")
#: Region name -> output channel of MONAI's BraTS bundle (sigmoid channels TC, WT, ET).
DEFAULT_REGIONS: Mapping[str, int] = {"TC": 0, "WT": 1, "ET": 2}

_LOG2 = math.log(2.0)


def predictive_entropy_map(probabilities: torch.Tensor) -> torch.Tensor:
    """Binary predictive entropy of probabilities, scaled to [0, 100].

    ``u = 100 * H(p) / log 2`` with ``H(p) = -p log p - (1 - p) log(1 - p)`` (``0 log 0 = 0``):
    100 at ``p = 0.5``, 0 at ``p`` in {0, 1}, symmetric in ``p`` and ``1 - p``, increasing on
    [0, 0.5]. See the module docstring for why this mapping.

    Args:
        probabilities: probabilities in [0, 1], any shape (typically (*spatial) or
            (R, *spatial)), any floating dtype or bool/integer (0/1); any device.

    Returns:
        Tensor of the same shape and device, float32, values in [0, 100] (0 = certain,
        100 = most uncertain).

    Raises:
        ValueError: if a value is NaN or outside [0, 1].
    """
    p = probabilities
    if not torch.is_floating_point(p):
        p = p.to(torch.float32)
    compute = torch.float64 if p.dtype == torch.float64 else torch.float32
    p = p.to(compute)
    if p.numel():
        low, high = torch.aminmax(p)  # NaN propagates, and fails both comparisons
        if not (low.item() >= 0.0 and high.item() <= 1.0):
            raise ValueError(f"probabilities must lie in [0, 1] without NaN; got min {low.item()}, max {high.item()}")
    # torch.special.entr(x) = -x log x with entr(0) = 0: exact 0 at p = 0 and p = 1.
    entropy = torch.special.entr(p) + torch.special.entr(1.0 - p)
    return (entropy * (100.0 / _LOG2)).clamp_(0.0, 100.0).to(torch.float32)


@dataclass(frozen=True)
class UncertaintyResult:
    """Mean prediction and per-region uncertainty maps of one image.

    Attributes:
        mean_probability: (R, *spatial) float32, the probabilities averaged over the samples, all
            R output channels in the model's channel order; threshold it (e.g. at 0.5) for the
            segmentation. On the device ``predict`` returned.
        maps: region name -> (*spatial) float32 uncertainty in [0, 100] (0 = certain, 100 = most
            uncertain), :func:`predictive_entropy_map` of that region's channel of
            ``mean_probability``; in the order of the ``regions`` mapping.
        method: the method that produced it, one of ``SUPPORTED_METHODS``.
        samples: the number of predictions averaged (TTA: flip combinations used; MC dropout:
            stochastic passes; ensemble: models).
    """

    mean_probability: torch.Tensor
    maps: dict[str, torch.Tensor]
    method: str
    samples: int

    def uint8_maps(self) -> dict[str, torch.Tensor]:
        """The maps rounded to integers, as written to NIfTI submissions.

        Rounding (half to even) then clipping to 0..100. Rounding changes a value by at most 0.5,
        so for the QU-BraTS filtering ``u > tau`` it moves a voxel across a threshold ``tau`` only
        when the voxel's value lies within 0.5 of ``tau``; the scores of the rounded maps differ
        from those of the float maps only through such voxels.

        Returns:
            Region name -> (*spatial) uint8 tensor in 0..100, on the maps' device.
        """
        return {region: u.round().clamp_(0, 100).to(torch.uint8) for region, u in self.maps.items()}


def flip_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """The TTA flip combinations: the identity, then every non-empty subset of spatial axes.

    Ordered by subset size, then lexicographically: for 3-D ``[(), (0,), (1,), (2,), (0, 1),
    (0, 2), (1, 2), (0, 1, 2)]``.

    Args:
        spatial_dims: number of spatial axes (>= 1).

    Returns:
        ``2 ** spatial_dims`` tuples of spatial axis indices (0 = first spatial axis, i.e. tensor
        dimension 2 of a (1, C, *spatial) input).

    Raises:
        ValueError: if ``spatial_dims < 1``.
    """
    if spatial_dims < 1:
        raise ValueError(f"spatial_dims must be >= 1, got {spatial_dims}")
    axes = range(spatial_dims)
    return [combo for size in range(spatial_dims + 1) for combo in itertools.combinations(axes, size)]


def estimate_uncertainty(
    predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    models: torch.nn.Module | Sequence[torch.nn.Module],
    *,
    method: str,
    samples: int = 8,
    regions: Mapping[str, int] = DEFAULT_REGIONS,
    seed: int = 0,
    flip_axes: Sequence[Sequence[int]] | None = None,
) -> UncertaintyResult:
    """Mean probabilities and per-region uncertainty maps in [0, 100] of one image.

    Runs under ``torch.no_grad()`` and keeps a running sum, never all samples. Every module's
    train/eval state is restored afterwards, also when ``predict`` raises.

    - ``"tta"``: one model, run in eval mode on the image flipped by each combination of
      ``flip_axes`` (default :func:`flip_combinations`: identity first), at most ``samples``
      of them, in order; each prediction is flipped back.
    - ``"mc-dropout"``: one model with its dropout layers (any ``torch.nn`` dropout, i.e. a
      ``_DropoutNd`` subclass) in train mode and all other modules in eval mode; ``samples``
      passes after ``torch.manual_seed(seed)``, inside ``torch.random.fork_rng`` so that the
      caller's global RNG state is unchanged afterwards. Dropout applied functionally
      (``F.dropout(x, training=self.training)``) is not switched on.
    - ``"ensemble"``: every model once, in eval mode; ``samples`` is ignored.

    Args:
        predict: ``predict(model, x)`` maps a (1, C, *spatial) input to (1, R, *spatial)
            probabilities in [0, 1] (any floating dtype) with ``model``, for example
            ``lambda m, x: torch.sigmoid(sliding_window_inference(x, roi, 4, m))``. It must not
            change the modules' train/eval modes.
        image: (1, C, *spatial) input (a ``MetaTensor`` is fine; it is passed to ``predict``
            as is, flipped for TTA); not modified.
        models: the model (one module, or a sequence of one, for ``"tta"`` and
            ``"mc-dropout"``), or the ensemble members (a sequence of >= 2 modules). A single
            module, a ``ModuleList`` included, counts as one model; pass ``list(module_list)``
            for an ensemble.
        method: one of ``SUPPORTED_METHODS``.
        samples: TTA: the most flip combinations to use; MC dropout: the number of passes
            (>= 1). Ignored for ensembles.
        regions: region name -> output channel; maps are produced for these regions only.
        seed: seed of the MC dropout passes (unused by the other methods).
        flip_axes: TTA flip combinations, each a sequence of distinct spatial axis indices
            (0 = first spatial axis; ``()`` = identity), used in the given order; default
            :func:`flip_combinations` of the image's spatial dimensions.

    Returns:
        An :class:`UncertaintyResult`: ``mean_probability`` (R, *spatial) float32 and ``maps``
        region -> (*spatial) float32 in [0, 100], on the device ``predict`` returned.

    Raises:
        ValueError: unknown method; wrong number of models; ``samples < 1``; an image that is
            not (1, C, *spatial); invalid ``flip_axes`` or ``regions``; a model without dropout
            layers (p > 0) for MC dropout; a prediction of the wrong shape or with values
            outside [0, 1].
    """
    model_list = _checked_inputs(image, models, method=method, samples=samples, regions=regions)
    with torch.no_grad(), _modes_restored(model_list):
        if method == "tta":
            combos = _validated_flips(flip_axes, image.ndim - 2)[:samples]
            total, count = _tta_sum(predict, model_list[0], image, regions, combos)
        elif method == "mc-dropout":
            total, count = _mc_dropout_sum(predict, model_list[0], image, regions, samples=samples, seed=seed)
        else:
            for model in model_list:
                model.eval()
            total, count = _running_sum((predict(model, image) for model in model_list), image, regions)

    mean = total.div_(count)[0]
    maps = {region: predictive_entropy_map(mean[channel]) for region, channel in regions.items()}
    return UncertaintyResult(mean_probability=mean, maps=maps, method=method, samples=count)


def _checked_inputs(
    image: torch.Tensor,
    models: torch.nn.Module | Sequence[torch.nn.Module],
    *,
    method: str,
    samples: int,
    regions: Mapping[str, int],
) -> list[torch.nn.Module]:
    """The models as a list, after checking the method, their number, ``samples``, the image shape and ``regions``."""
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"unknown uncertainty method {method!r}; expected one of {', '.join(SUPPORTED_METHODS)}")
    model_list = [models] if isinstance(models, torch.nn.Module) else list(models)
    if method == "ensemble":
        if len(model_list) < 2:
            raise ValueError(f"an ensemble needs at least 2 models, got {len(model_list)}")
    elif len(model_list) != 1:
        raise ValueError(f"method {method!r} takes exactly one model, got {len(model_list)}")
    if method != "ensemble" and samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if image.ndim < 3 or image.shape[0] != 1:
        raise ValueError(
            f"image must be (1, C, *spatial) with at least one spatial axis, got shape {tuple(image.shape)}"
        )
    if not regions:
        raise ValueError("regions must name at least one region")
    return model_list


def _tta_sum(
    predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    model: torch.nn.Module,
    image: torch.Tensor,
    regions: Mapping[str, int],
    combos: Sequence[tuple[int, ...]],
) -> tuple[torch.Tensor, int]:
    """Test-time augmentation: the model in eval mode on the image flipped by each combination, flipped back."""
    model.eval()
    predictions = (
        _flip(predict(model, _flip(image, combo)), combo) if combo else predict(model, image) for combo in combos
    )
    return _running_sum(predictions, image, regions)


def _mc_dropout_sum(
    predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    model: torch.nn.Module,
    image: torch.Tensor,
    regions: Mapping[str, int],
    *,
    samples: int,
    seed: int,
) -> tuple[torch.Tensor, int]:
    """Monte Carlo dropout: ``samples`` seeded passes with only the dropout layers in train mode; the caller's
    RNG state (CPU and initialized CUDA devices) is unchanged afterwards."""
    dropouts = [m for m in model.modules() if isinstance(m, _DropoutNd) and m.p > 0]
    if not dropouts:
        raise ValueError(
            f"model {type(model).__name__} has no dropout layers (with p > 0); build it with "
            "dropout_prob > 0 (SegResNet: dropout_prob) or use tta/ensemble"
        )
    model.eval()
    for layer in dropouts:
        layer.train()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return _running_sum((predict(model, image) for _ in range(samples)), image, regions)


@contextmanager
def _modes_restored(models: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Restore the ``training`` flag of every module of ``models`` on exit (also on errors)."""
    saved = [(module, module.training) for model in models for module in model.modules()]
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


def _validated_flips(flip_axes: Sequence[Sequence[int]] | None, spatial_dims: int) -> list[tuple[int, ...]]:
    """Flip combinations as tuples of spatial axes, checked against the number of spatial axes."""
    if flip_axes is None:
        return flip_combinations(spatial_dims)
    combos = [tuple(int(axis) for axis in combo) for combo in flip_axes]
    if not combos:
        raise ValueError("flip_axes must hold at least one combination (use () for the identity)")
    for combo in combos:
        if len(set(combo)) != len(combo) or any(not 0 <= axis < spatial_dims for axis in combo):
            raise ValueError(
                f"invalid flip combination {combo}: axes must be distinct spatial axis indices in 0..{spatial_dims - 1}"
            )
    return combos


def _flip(tensor: torch.Tensor, spatial_axes: tuple[int, ...]) -> torch.Tensor:
    """Flip a (B, C, *spatial) tensor over the given spatial axes (0 = tensor dimension 2)."""
    return torch.flip(tensor, dims=[axis + 2 for axis in spatial_axes])


def _running_sum(
    predictions: Iterator[torch.Tensor], image: torch.Tensor, regions: Mapping[str, int]
) -> tuple[torch.Tensor, int]:
    """Sum predictions one at a time in float32, checking each; returns (sum, count)."""
    expected_spatial = tuple(image.shape[2:])
    total: torch.Tensor | None = None
    count = 0
    for prediction in predictions:
        prediction = prediction.as_subclass(torch.Tensor)  # drop MetaTensor metadata: plain sums
        if prediction.ndim != image.ndim or prediction.shape[0] != 1 or tuple(prediction.shape[2:]) != expected_spatial:
            raise ValueError(
                f"predict returned shape {tuple(prediction.shape)}; expected (1, R, *{expected_spatial}) "
                f"for an image of shape {tuple(image.shape)}"
            )
        channels = prediction.shape[1]
        bad = {region: channel for region, channel in regions.items() if not 0 <= channel < channels}
        if bad:
            raise ValueError(f"regions {bad} name channels outside the prediction's {channels} channels")
        low, high = torch.aminmax(prediction.detach().to(torch.float32))
        if not (0.0 <= low.item() and high.item() <= 1.0):  # also catches NaN
            raise ValueError(
                f"predict must return probabilities in [0, 1] (apply the sigmoid); sample {count} has "
                f"min {low.item()}, max {high.item()}"
            )
        if total is None:
            total = prediction.to(torch.float32, copy=True)
        else:
            total += prediction.to(torch.float32)
        count += 1
    if total is None:  # unreachable: every method draws at least one sample
        raise ValueError("no predictions were drawn")
    return total, count
