"""Trainable saliency: a spatial attention gate between a CNN backbone and its classifier.

**This is our design, not Aggarwal et al.'s.** Aggarwal et al. (arXiv 2011.07482) adds a
"model design element agnostic to both architecture complexity and model task" that makes the
classifier self-explanatory, but its exact element, read-out and numbers are not public. What
follows is our own design (docs/commands/saliency.md). Its closest published relatives are the
attention gates of Schlemper et al. (2019, "Attention gated networks", Medical Image Analysis 53)
and the trainable attention of Jetley et al. (ICLR 2018, "Learn to pay attention"); unlike both,
the gate here scores the last feature map on its own (no gating signal from a coarser layer, no
query vector) so that it fits any backbone.

Model (:class:`AttentionClassifier`), for a backbone feature map ``F in R^{K x s}`` on the grid
``s`` (``h x w`` or ``h x w x d``) of its last convolutional stage:

* **Scores**: ``z = W2 relu(W1 F + b1) + b2`` with 1x1 convolutions, ``z in R^{H x s}`` for
  ``H = heads`` (``hidden=0``, the default: a single 1x1 convolution ``z = W F + b``).
* **Attention**: ``A = sigmoid(z)`` (``activation="sigmoid"``: each cell in ``[0, 1]``
  independently) or ``A_h = softmax_s(z_h)`` (``"softmax"``: a distribution over the grid per
  head, summing to 1).
* **Pooling** (attention-weighted, per head): sigmoid ``g_h = sum_s A_h F / (sum_s A_h + eps)``
  (a weighted average, so the scale of ``A`` does not matter, only where it is high); softmax
  ``g_h = sum_s A_h F``. The heads are **averaged**, ``g = mean_h g_h in R^K``, and a linear head
  gives the logits ``W_o g + b_o``. Averaging (rather than concatenating as Jetley et al. do)
  makes every head count equally for the decision, so the head-averaged map read out below is
  the pooling weight the classifier actually used (exactly so for softmax, where
  ``g = sum_s mean_h(A_h) F``). Several softmax heads let the model attend to several regions
  (a single softmax tends to one peak).
* **Init**: the scoring layer's weights are drawn ``N(0, (0.01 / sqrt(fan_in))^2)`` and its bias is
  0, so the first maps are near-uniform (sigmoid about 0.5 everywhere, softmax about ``1/|s|``)
  and the model starts as global average pooling; the gate's hidden layer and the linear head
  use PyTorch's defaults; the backbone keeps MONAI's init.
* **Read-out** (:meth:`AttentionClassifier.attention`): the head mean of ``A``, upsampled
  (bilinear / trilinear, ``align_corners=False``) to the input size, *not* normalized; the
  saliency protocol min-max normalizes it like every other map.
* **Training**: image-level labels only, end to end with the classification loss; optional
  regularizers on the maps (:func:`attention_regularizer`: ``"sparsity"`` = mean of ``A``,
  ``"tv"`` = total variation) and, where boxes exist, :func:`box_supervision_loss`.
* **Sanity**: :meth:`AttentionClassifier.randomization_blocks` lists the head, then the gate,
  then the backbone's blocks top-down, so cascading randomization re-initializes the gate (to
  its own near-uniform initializer) right after the logits.

The backbone is a MONAI ``DenseNet`` (``"densenet121"``, ``"compact"``) or ``ResNet``
(``"resnet18"``, ``"resnet-compact"``) from :func:`medimg.models.build_network`, 2-D or 3-D. Its
classifier is removed (DenseNet: ``class_layers`` keeps only its ``relu``; ResNet: ``fc`` and
``avgpool`` set to None), so the backbone is a feature extractor only (do not call
``model.backbone(x)``) and its head is not in the state dict.

Checkpoints: importing this module registers the wrapper ``"attention"`` with
:func:`medimg.models.register_wrapper`. A checkpoint's ``meta["architecture"]`` is the backbone
name and ``meta["network"]`` is :meth:`AttentionClassifier.network_kwargs`, e.g.
``{"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "wrapper": {"name": "attention",
"heads": 1, "activation": "sigmoid", "hidden": 0}}``; :func:`medimg.models.load_checkpoint`
rebuilds it once this module is imported.

Grad-CAM on the wrapper: the feature map's module name is :attr:`AttentionClassifier.gradcam_layer`
(``"backbone.class_layers.relu"`` or ``"backbone.layer4"``); pass it as ``layer=`` to
:func:`saliency.methods.explain`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from medimg.models import build_network, register_wrapper
from saliency.randomization import Blocks, named_blocks, prefix_blocks

__all__ = [
    "ACTIVATIONS",
    "REGULARIZERS",
    "WRAPPER_NAME",
    "AttentionClassifier",
    "AttentionGate",
    "attention_network",
    "attention_regularizer",
    "box_supervision_loss",
]

#: Name under which the wrapper is registered with :func:`medimg.models.register_wrapper`.
WRAPPER_NAME = "attention"
ACTIVATIONS: tuple[str, ...] = ("sigmoid", "softmax")
REGULARIZERS: tuple[str, ...] = ("none", "sparsity", "tv")
#: Standard deviation of the scoring weights times sqrt(fan_in): small, so the first map is near-uniform.
SCORE_INIT_SCALE = 0.01
_EPS = 1e-6
_WRAPPER_KEYS = ("name", "heads", "activation", "hidden")


class _PointwiseScore(nn.Module):
    """The scoring 1x1 convolution ``(B, C, *s) -> (B, heads, *s)`` with its own near-uniform initializer.

    It owns its parameters (it is not a ``Conv``), so cascading randomization re-initializes it
    through :meth:`reset_parameters`, i.e. with the initializer the model was built with.
    """

    def __init__(self, in_channels: int, heads: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, in_channels))
        self.bias = nn.Parameter(torch.empty(heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weight, 0.0, SCORE_INIT_SCALE / math.sqrt(self.weight.shape[1]))
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("hc,bc...->bh...", self.weight, x)
        return scores + self.bias.view(1, -1, *([1] * (x.ndim - 2)))

    def extra_repr(self) -> str:
        return f"in_channels={self.weight.shape[1]}, heads={self.weight.shape[0]}"


class AttentionGate(nn.Module):
    """Spatial attention over a feature map: ``(B, K, *s) -> A (B, heads, *s)`` in ``[0, 1]``.

    ``hidden > 0`` inserts a 1x1 convolution ``K -> hidden`` and a ReLU before the scoring layer.
    ``activation`` is ``"sigmoid"`` (cell-wise) or ``"softmax"`` (over the grid, per head).
    """

    def __init__(
        self, channels: int, *, spatial_dims: int, heads: int = 1, activation: str = "sigmoid", hidden: int = 0
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown attention activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        self.activation = activation
        self.heads = heads
        self.hidden: nn.Module | None = None
        self.relu: nn.Module | None = None
        if hidden:
            conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
            self.hidden = conv(channels, hidden, kernel_size=1)
            self.relu = nn.ReLU()
        self.score = _PointwiseScore(hidden or channels, heads)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Unnormalized scores ``z`` ``(B, heads, *s)``."""
        x = features
        if self.hidden is not None:
            x = self.relu(self.hidden(x))
        return self.score(x)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.scores(features)
        if self.activation == "sigmoid":
            return torch.sigmoid(z)
        return torch.softmax(z.flatten(2), dim=2).view_as(z)


def _spatial_dims_of(backbone: nn.Module) -> int:
    for module in backbone.modules():
        if isinstance(module, _ConvNd):
            return len(module.kernel_size)
    raise ValueError(f"{type(backbone).__name__} has no convolution: cannot tell its spatial dimensions")


def _in_channels_of(backbone: nn.Module) -> int:
    for module in backbone.modules():
        if isinstance(module, _ConvNd):
            return int(module.in_channels)
    raise ValueError(f"{type(backbone).__name__} has no convolution")


class AttentionClassifier(nn.Module):
    """Backbone features -> spatial attention gate -> attention-weighted pooling -> linear head.

    See the module docstring for the maths. Submodules: ``backbone`` (the MONAI network without
    its classifier), ``gate`` (:class:`AttentionGate`), ``head`` (``nn.Linear(K, out_channels)``).

    Args:
        backbone: a MONAI ``DenseNet`` (incl. ``DenseNet121``) or ``ResNet``, 1-, 2- or 3-D; its
            classifier is removed in place.
        architecture: the backbone's name in :func:`medimg.models.build_network` (recorded for
            :meth:`network_kwargs`).
        out_channels: number of classes; the model returns ``(B, out_channels)`` logits.
        heads: number of attention heads (>= 1), averaged after pooling.
        activation: ``"sigmoid"`` or ``"softmax"`` (spatial softmax per head).
        hidden: channels of an optional hidden 1x1 convolution (+ ReLU) in the gate; 0: none.
        backbone_kwargs: further ``build_network`` kwargs the backbone was built with (recorded).

    Attributes:
        last_attention: ``(B, heads, *s)`` attention of the latest forward pass (with its autograd
            graph when gradients were on; not copied by ``copy.deepcopy`` or pickling), or None.
        gradcam_layer: name of the module whose output is the feature map ``F``, for Grad-CAM.
        feature_channels: ``K``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        architecture: str,
        out_channels: int,
        heads: int = 1,
        activation: str = "sigmoid",
        hidden: int = 0,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from monai.networks.nets.densenet import DenseNet
        from monai.networks.nets.resnet import ResNet

        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"heads must be an integer >= 1, got {heads!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"hidden must be an integer >= 0, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown attention activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be an integer >= 1, got {out_channels!r}")
        spatial_dims = _spatial_dims_of(backbone)
        in_channels = _in_channels_of(backbone)
        if isinstance(backbone, DenseNet):
            channels = int(backbone.class_layers.out.in_features)
            # Keep only the final activation: the features are relu(norm5(...)), as MONAI computes them.
            backbone.class_layers = nn.Sequential(OrderedDict([("relu", backbone.class_layers.relu)]))
            self._family = "densenet"
            self.gradcam_layer = "backbone.class_layers.relu"
        elif isinstance(backbone, ResNet):
            channels = int(backbone.fc.in_features) if backbone.fc is not None else int(backbone.in_planes)
            backbone.fc = None
            backbone.avgpool = None
            self._family = "resnet"
            self.gradcam_layer = "backbone.layer4"
        else:
            raise TypeError(
                f"AttentionClassifier wraps MONAI DenseNet or ResNet backbones, not {type(backbone).__name__}"
            )
        self.backbone = backbone
        self.gate = AttentionGate(
            channels, spatial_dims=spatial_dims, heads=heads, activation=activation, hidden=hidden
        )
        self.head = nn.Linear(channels, out_channels)
        self.architecture = architecture
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.feature_channels = channels
        self.heads = heads
        self.activation = activation
        self.hidden = hidden
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.last_attention: torch.Tensor | None = None
        self.regularizer, self.regularizer_weight, self.box_weight = "none", 0.0, 0.0

    def configure_losses(
        self, *, regularizer: str = "none", regularizer_weight: float = 0.0, box_weight: float = 0.0
    ) -> None:
        """Set the training-time terms :meth:`auxiliary_loss` adds to the classification loss: a
        regularizer (:func:`attention_regularizer`) with its weight, and the weight of the box
        supervision (:func:`box_supervision_loss`). They are training settings, not weights: the
        pipeline records them in the checkpoint's training metadata."""
        if regularizer not in REGULARIZERS:
            raise ValueError(f"unknown attention regularizer {regularizer!r}; known: {', '.join(REGULARIZERS)}")
        if regularizer_weight < 0 or box_weight < 0:
            raise ValueError("loss weights must be >= 0")
        self.regularizer, self.regularizer_weight, self.box_weight = (
            regularizer,
            float(regularizer_weight),
            float(box_weight),
        )

    def auxiliary_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``regularizer_weight * regularizer(A) + box_weight * BCE(A, boxes)`` for the last forward.

        Meant as the ``extra_loss`` of :func:`medimg.training.train_classifier`
        (``extra_loss=model.auxiliary_loss``), which calls it after each training forward with the
        collated batch; the loop does not look for it on the model. Box supervision uses the
        batch's ``box_mask`` ``(B, 1, *spatial)`` and ``box_weight`` ``(B,)`` (0 for images whose
        boxes are not used) when present.
        """
        if self.last_attention is None:
            raise RuntimeError("auxiliary_loss needs a forward pass first")
        attention = self.last_attention
        total = attention.new_zeros(())
        if self.regularizer != "none" and self.regularizer_weight > 0:
            total = total + self.regularizer_weight * attention_regularizer(attention, self.regularizer)
        if self.box_weight > 0 and isinstance(batch, Mapping) and "box_mask" in batch:
            masks = torch.as_tensor(batch["box_mask"]).to(attention.device).float()
            weight = torch.as_tensor(batch.get("box_weight", 1.0)).to(attention.device).float().reshape(-1)
            total = total + self.box_weight * box_supervision_loss(attention, masks[:, 0], weight)
        return total

    # -- pickling / deepcopy: the stored map may carry an autograd graph, which deepcopy refuses
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["last_attention"] = None
        return state

    def network_kwargs(self) -> dict[str, Any]:
        """The ``build_network`` kwargs (checkpoint ``meta["network"]``) that rebuild this model.

        ``meta["architecture"]`` is :attr:`architecture` (the backbone name).
        """
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            **self.backbone_kwargs,
            "wrapper": {
                "name": WRAPPER_NAME,
                "heads": self.heads,
                "activation": self.activation,
                "hidden": self.hidden,
            },
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last convolutional feature map ``F`` ``(B, K, *s)``."""
        b = self.backbone
        if self._family == "densenet":
            return b.class_layers.relu(b.features(x))
        x = b.act(b.bn1(b.conv1(x)))
        if not b.no_max_pool:
            x = b.maxpool(x)
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def pool(self, features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Attention-weighted pooling, heads averaged: ``(B, K, *s), (B, H, *s) -> (B, K)``."""
        f = features.flatten(2)
        a = attention.flatten(2)
        pooled = torch.einsum("bhs,bks->bhk", a, f)
        if self.activation == "sigmoid":
            pooled = pooled / (a.sum(dim=2, keepdim=True) + _EPS)
        return pooled.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels)``; stores the attention ``(B, heads, *s)`` as :attr:`last_attention`."""
        features = self.features(x)
        attention = self.gate(features)
        self.last_attention = attention
        return self.head(self.pool(features, attention))

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, n), maps (B, 1, *input_spatial))``: heads averaged, upsampled, not normalized.

        Upsampling is linear (bilinear / trilinear, ``align_corners=False``), so the maps stay in
        ``[0, 1]``. Gradients flow when enabled; wrap in ``torch.no_grad()`` for read-out.
        """
        logits = self(x)
        maps = self.last_attention.mean(dim=1, keepdim=True)
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[maps.ndim - 2]
        maps = F.interpolate(maps, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
        return logits, maps

    def randomization_blocks(self, include_stem: bool = True) -> Blocks:
        """Top-down randomization stages: ``("logits", ["head"])``, ``("gate", ["gate"])``, then the backbone's.

        The backbone's blocks are :func:`saliency.randomization.named_blocks` of ``self.backbone``
        (its classifier is gone, so it has no "logits" stage of its own), prefixed ``backbone.``.
        """
        backbone = named_blocks(self.backbone, include_stem=include_stem)
        return [("logits", ["head"]), ("gate", ["gate"]), *prefix_blocks(backbone, "backbone")]


def attention_network(
    architecture: str,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    heads: int = 1,
    activation: str = "sigmoid",
    hidden: int = 0,
    **backbone_kwargs: Any,
) -> AttentionClassifier:
    """An :class:`AttentionClassifier` on a freshly initialized ``architecture`` backbone.

    Args:
        architecture: ``"densenet121"``, ``"compact"``, ``"resnet18"`` or ``"resnet-compact"``.
        spatial_dims, in_channels, out_channels: as for :func:`medimg.models.build_network`.
        heads, activation, hidden: the gate (see :class:`AttentionClassifier`).
        **backbone_kwargs: further ``build_network`` kwargs for the backbone (e.g.
            ``dropout_prob``); recorded in :meth:`AttentionClassifier.network_kwargs`.

    Raises:
        ValueError: unknown or segmentation architecture, bad gate settings.
    """
    if architecture not in ("densenet121", "compact", "resnet18", "resnet-compact"):
        raise ValueError(
            f"the attention wrapper needs a DenseNet or ResNet classifier backbone "
            f"(densenet121, compact, resnet18, resnet-compact), not {architecture!r}"
        )
    backbone = build_network(
        architecture, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **backbone_kwargs
    )
    return AttentionClassifier(
        backbone,
        architecture=architecture,
        out_channels=out_channels,
        heads=heads,
        activation=activation,
        hidden=hidden,
        backbone_kwargs=backbone_kwargs,
    )


def _build_from_network_kwargs(network: dict[str, Any]) -> AttentionClassifier:
    """The registered builder: ``network`` = ``{"architecture", ..., "wrapper": {"name": "attention", ...}}``."""
    kwargs = dict(network)
    wrapper = dict(kwargs.pop("wrapper"))
    unknown = sorted(set(wrapper) - set(_WRAPPER_KEYS))
    if unknown:
        raise ValueError(f"attention wrapper settings {unknown} are not known; known: {', '.join(_WRAPPER_KEYS)}")
    wrapper.pop("name", None)
    return attention_network(kwargs.pop("architecture"), **wrapper, **kwargs)


register_wrapper(WRAPPER_NAME, _build_from_network_kwargs)


# ---------------------------------------------------------------------------------------------- losses


def attention_regularizer(maps: torch.Tensor, kind: str) -> torch.Tensor:
    """A scalar penalty on attention maps ``(B, heads, *s)`` (e.g. :attr:`AttentionClassifier.last_attention`).

    * ``"sparsity"``: the mean of ``A`` over everything (pushes sigmoid maps towards small
      support; constant ``1/|s|`` for softmax maps, which are sparse by construction, so no effect).
    * ``"tv"``: total variation, the sum over spatial axes of the mean absolute difference between
      neighbouring cells along that axis (an axis of length 1 contributes 0); 0 for a constant map.
    * ``"none"``: 0.

    Add it to the classification loss with a weight of your choice; record kind and weight.

    Raises:
        ValueError: unknown kind, or maps with fewer than 3 dimensions.
    """
    if kind not in REGULARIZERS:
        raise ValueError(f"unknown attention regularizer {kind!r}; known: {', '.join(REGULARIZERS)}")
    if maps.ndim < 3:
        raise ValueError(f"attention maps must be (B, heads, *spatial), got shape {tuple(maps.shape)}")
    if kind == "none":
        return maps.new_zeros(())
    if kind == "sparsity":
        return maps.mean()
    total = maps.new_zeros(())
    for axis in range(2, maps.ndim):
        if maps.shape[axis] > 1:
            total = total + maps.diff(dim=axis).abs().mean()
    return total


def box_supervision_loss(
    last_attention: torch.Tensor, masks: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE between the head-mean attention and the lesion masks on the attention grid.

    Args:
        last_attention: ``(B, heads, *s)`` in ``[0, 1]`` (keep its graph: call after the forward).
        masks: ``(B, *input_spatial)`` bool or float in ``[0, 1]`` (boxes or lesion masks); they are
            area-downsampled to the grid ``s`` (adaptive average pooling), giving the fraction of
            each cell covered.
        weight: ``(B,)`` 1 for images whose masks supervise the map, 0 otherwise (e.g. no boxes
            drawn). None: all 1.

    Returns:
        The mean over the images with weight 1 of each image's mean BCE over the grid; 0 (still
        attached to the graph) when no image has weight 1. With softmax attention the map sums to
        1 and cannot reach the cell fractions; the loss then still raises the attention inside
        the masks and lowers it outside.

    Raises:
        ValueError: shapes that do not match.
    """
    if last_attention.ndim < 3:
        raise ValueError(f"last_attention must be (B, heads, *s), got shape {tuple(last_attention.shape)}")
    batch, grid = last_attention.shape[0], tuple(last_attention.shape[2:])
    if masks.ndim != last_attention.ndim - 1 or masks.shape[0] != batch:
        raise ValueError(
            f"masks must be (B, *spatial) with B={batch} and {len(grid)} spatial axes, got {tuple(masks.shape)}"
        )
    attention = last_attention.mean(dim=1)
    target = masks.to(device=attention.device, dtype=attention.dtype).unsqueeze(1)
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(grid)]
    target = pool(target, grid).squeeze(1).clamp(0.0, 1.0)
    if weight is None:
        weight = attention.new_ones(batch)
    weight = torch.as_tensor(weight, device=attention.device, dtype=attention.dtype).reshape(-1)
    if weight.shape[0] != batch:
        raise ValueError(f"weight must have {batch} entries, got {weight.shape[0]}")
    per_image = F.binary_cross_entropy(attention.clamp(0.0, 1.0), target, reduction="none").flatten(1).mean(dim=1)
    return (per_image * weight).sum() / weight.sum().clamp_min(1.0)
