"""Make a foreign network speak medimg's conventions, differentiably.

medimg's classifiers return logits whose softmax is the class probabilities, take the image's
grey channel, and its BraTS segmenters return per-channel logits for a sigmoid. Model Zoo bundles
and TorchScript models say otherwise in their cards: a sigmoid per class, a single logit, three
input channels holding copies of the grey image. :class:`ModelAdapter` wraps such a network so
that ``softmax(adapter(x))`` (classifiers) equals the probabilities the model's own activation
gives, without changing a single weight, and keeps gradients flowing for the saliency methods.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ACTIVATIONS", "ModelAdapter"]

#: ``softmax`` (logits of exclusive classes), ``sigmoid`` (one independent logit per class, or a
#: single logit for a two-class task), ``probabilities`` (the network already outputs them).
ACTIVATIONS = ("softmax", "sigmoid", "probabilities")
_TINY = 1e-12


class ModelAdapter(torch.nn.Module):
    """``network`` with its input channels repeated and its output turned into softmax logits.

    Args:
        network: the wrapped network (any ``torch.nn.Module``, a TorchScript module included).
        activation: one of :data:`ACTIVATIONS`, the activation the model's card or bundle states.
        repeat_channels: feed the network this many copies of a one-channel input (a grey
            radiograph for a network trained on RGB copies); 0 or 1 leaves the input alone.
        task: ``"classification"`` (the output becomes softmax logits) or ``"segmentation"``
            (sigmoid channel logits pass through; other activations are refused).
        output_order: the network's output channels in medimg's order (None: as they are).

    The classifier output ``z`` (B, K) becomes: ``softmax`` -> ``z``; ``sigmoid`` with K = 1 ->
    ``[0, z]`` (softmax gives ``[1 - sigmoid(z), sigmoid(z)]``); ``sigmoid`` with K > 1 ->
    ``log sigmoid(z)`` (softmax gives each class's sigmoid divided by their sum); ``probabilities``
    -> ``log p``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        activation: str,
        repeat_channels: int = 0,
        task: str = "classification",
        output_order: list[int] | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if task == "segmentation" and activation != "sigmoid":
            raise ValueError(
                f"a segmentation model must give one sigmoid logit per region (TC, WT, ET); its activation is "
                f"{activation!r}"
            )
        self.network = network
        self.activation = activation
        self.repeat_channels = int(repeat_channels)
        self.task = task
        #: Output channels to take, in medimg's order (e.g. a model's ET, TC, WT -> TC, WT, ET).
        self.output_order = [int(i) for i in output_order] if output_order is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_channels > 1 and x.shape[1] == 1:
            x = x.expand(-1, self.repeat_channels, *x.shape[2:])
        out = self.network(x)
        if isinstance(out, (tuple, list)):  # e.g. Inception's auxiliary logits: the main output first
            out = out[0]
        if self.output_order is not None:
            out = out[:, self.output_order]
        if self.task == "segmentation" or self.activation == "softmax":
            return out
        if self.activation == "probabilities":
            return torch.log(out.clamp_min(_TINY))
        if out.shape[1] == 1:
            return torch.cat([torch.zeros_like(out), out], dim=1)
        return torch.nn.functional.logsigmoid(out)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, repeat_channels={self.repeat_channels}, task={self.task!r}"

    def settings(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this adapter around the same network."""
        return {
            "activation": self.activation,
            "repeat_channels": self.repeat_channels,
            "task": self.task,
            "output_order": self.output_order,
        }
