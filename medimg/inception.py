"""InceptionV3 (Szegedy et al., CVPR 2016) for any number of input channels: the classifier of Arun et al. 2020.

The saliency trust paper (Arun et al., Radiology: AI 2021) explains a Keras InceptionV3 (no top,
global average pooling, a dense layer over 2 classes) and compares its maps with a DenseNet121's
for reproducibility. Neither MONAI nor any package that installs beside our torch pin ships
InceptionV3 (torchvision's wheels fail to load their operators beside the CPU build of torch
2.13.0, and timm imports torchvision), so it is written here from the paper's architecture.

Layout (module *names* follow the Keras model, whose block names the paper's randomization figure
uses; the arithmetic follows torchvision's, which differs from Keras in two details: BatchNorm has
a learned scale, which Keras's InceptionV3 leaves out, and the average pools inside the blocks count
the zero padding, which Keras's SAME pooling does not; shapes for a 299 x 299 input):

* ``stem``: 3x3/2 conv 32 (valid), 3x3 conv 32 (valid), 3x3 conv 64 (same), 3x3/2 max pool,
  1x1 conv 80, 3x3 conv 192 (valid), 3x3/2 max pool -> 192 x 35 x 35;
* ``mixed0`` .. ``mixed2``: Inception-A blocks (1x1; 1x1-5x5; 1x1-3x3-3x3; avg pool-1x1 with 32, 64,
  64 channels) -> 256, 288, 288 x 35 x 35;
* ``mixed3``: grid reduction (3x3/2; 1x1-3x3-3x3/2; max pool) -> 768 x 17 x 17;
* ``mixed4`` .. ``mixed7``: Inception-C blocks with factorised 7x7 convolutions (inner widths 128,
  160, 160, 192) -> 768 x 17 x 17;
* ``mixed8``: grid reduction (1x1-3x3/2; 1x1-1x7-7x1-3x3/2; max pool) -> 1280 x 8 x 8;
* ``mixed9``, ``mixed10``: Inception-E blocks with expanded 1x3/3x1 outputs -> 2048 x 8 x 8;
* ``pool`` (global average), ``dropout`` (0 by default: the paper's head has none), ``fc``.

Every convolution has no bias and is followed by BatchNorm (eps 0.001, as Keras and torchvision)
and a ReLU *module* (``nn.ReLU``, not ``F.relu``: guided backpropagation hooks ReLU modules, and a
functional ReLU would silently turn it into the plain gradient). Parameter registration order and
shapes equal torchvision's ``Inception3(aux_logits=False)`` (23,834,568 parameters for 3 channels
and 1,000 classes; the tests check the count and the outputs against values computed once with
torchvision 0.28 on deterministic weights). Inputs must be at least 75 x 75 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GRADCAM_LAYER", "InceptionV3"]

#: The last Inception block: the Grad-CAM layer of the paper (Keras ``mixed10``).
GRADCAM_LAYER = "mixed10"
_MIN_SIZE = 75


class ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (eps 0.001), ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _chain(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers)


def _avg_pool_branch(in_channels: int, out_channels: int) -> nn.Sequential:
    return _chain(nn.AvgPool2d(3, stride=1, padding=1), ConvBN(in_channels, out_channels, 1))


class _Parallel(nn.Module):
    """Branches applied to one input, outputs concatenated along channels in registration order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.children()], dim=1)


class BlockA(_Parallel):
    """Inception-A (35 x 35): 1x1 64; 1x1 48 -> 5x5 64; 1x1 64 -> 3x3 96 -> 3x3 96; avg pool -> 1x1."""

    def __init__(self, in_channels: int, pool_channels: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5 = _chain(ConvBN(in_channels, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.branch3x3dbl = _chain(
            ConvBN(in_channels, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        )
        self.branch_pool = _avg_pool_branch(in_channels, pool_channels)


class ReductionA(nn.Module):
    """Grid reduction 35 -> 17: 3x3/2 384; 1x1 64 -> 3x3 96 -> 3x3/2 96; 3x3/2 max pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl = _chain(
            ConvBN(in_channels, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)
        )
        self.branch_pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)], dim=1)


class BlockC(_Parallel):
    """Inception-C (17 x 17) with factorised 7x7 convolutions of inner width ``width``."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        row, col = (1, 7), (7, 1)
        pad_row, pad_col = (0, 3), (3, 0)
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7 = _chain(
            ConvBN(in_channels, width, 1),
            ConvBN(width, width, row, padding=pad_row),
            ConvBN(width, 192, col, padding=pad_col),
        )
        self.branch7x7dbl = _chain(
            ConvBN(in_channels, width, 1),
            ConvBN(width, width, col, padding=pad_col),
            ConvBN(width, width, row, padding=pad_row),
            ConvBN(width, width, col, padding=pad_col),
            ConvBN(width, 192, row, padding=pad_row),
        )
        self.branch_pool = _avg_pool_branch(in_channels, 192)


class ReductionB(nn.Module):
    """Grid reduction 17 -> 8: 1x1 192 -> 3x3/2 320; 1x1 192 -> 1x7 -> 7x1 -> 3x3/2 192; 3x3/2 max pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = _chain(ConvBN(in_channels, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.branch7x7x3 = _chain(
            ConvBN(in_channels, 192, 1),
            ConvBN(192, 192, (1, 7), padding=(0, 3)),
            ConvBN(192, 192, (7, 1), padding=(3, 0)),
            ConvBN(192, 192, 3, stride=2),
        )
        self.branch_pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch7x7x3(x), self.branch_pool(x)], dim=1)


class _Split(nn.Module):
    """A 1x3 and a 3x1 convolution of one input, concatenated (the expanded outputs of Inception-E)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.row = ConvBN(channels, 384, (1, 3), padding=(0, 1))
        self.col = ConvBN(channels, 384, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.row(x), self.col(x)], dim=1)


class BlockE(_Parallel):
    """Inception-E (8 x 8): 1x1 320; 1x1 384 -> (1x3, 3x1); 1x1 448 -> 3x3 384 -> (1x3, 3x1); pool -> 1x1 192."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3 = _chain(ConvBN(in_channels, 384, 1), _Split(384))
        self.branch3x3dbl = _chain(ConvBN(in_channels, 448, 1), ConvBN(448, 384, 3, padding=1), _Split(384))
        self.branch_pool = _avg_pool_branch(in_channels, 192)


def _stem(in_channels: int) -> nn.Sequential:
    return _chain(
        ConvBN(in_channels, 32, 3, stride=2),
        ConvBN(32, 32, 3),
        ConvBN(32, 64, 3, padding=1),
        nn.MaxPool2d(3, stride=2),
        ConvBN(64, 80, 1),
        ConvBN(80, 192, 3),
        nn.MaxPool2d(3, stride=2),
    )


class InceptionV3(nn.Module):
    """InceptionV3 classifier: ``(B, in_channels, H, W)`` float32 -> ``(B, out_channels)`` logits.

    Args:
        spatial_dims: must be 2 (InceptionV3 is a 2-D network).
        in_channels: input channels (1 for a grayscale radiograph; the paper copied it into 3).
        out_channels: classes.
        dropout_prob: dropout before the last layer (0: the paper's Keras head has none).

    Raises:
        ValueError: ``spatial_dims`` other than 2, or non-positive channel counts.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, dropout_prob: float = 0.0):
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"InceptionV3 is 2-D only, got spatial_dims={spatial_dims}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channel counts must be positive, got {in_channels} in, {out_channels} out")
        self.stem = _stem(in_channels)
        self.mixed0 = BlockA(192, 32)
        self.mixed1 = BlockA(256, 64)
        self.mixed2 = BlockA(288, 64)
        self.mixed3 = ReductionA(288)
        self.mixed4 = BlockC(768, 128)
        self.mixed5 = BlockC(768, 160)
        self.mixed6 = BlockC(768, 160)
        self.mixed7 = BlockC(768, 192)
        self.mixed8 = ReductionB(768)
        self.mixed9 = BlockE(1280)
        self.mixed10 = BlockE(2048)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)
        self.fc = nn.Linear(2048, out_channels)
        self._initialize()

    def _initialize(self) -> None:
        """Truncated normal (sd 0.1) convolutions and dense weights, BN weight 1 and bias 0 (torchvision's scheme)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=0.1, a=-2, b=2)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < _MIN_SIZE:
            raise ValueError(f"InceptionV3 needs inputs of at least {_MIN_SIZE} x {_MIN_SIZE}, got {tuple(x.shape)}")
        x = self.stem(x)
        for index in range(11):
            x = getattr(self, f"mixed{index}")(x)
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))

    def randomization_blocks(self, include_stem: bool = True) -> list[tuple[str, Sequence[str]]]:
        """Cascading randomization stages, top-down: logits, ``mixed10`` .. ``mixed1``, then the stem with ``mixed0``.

        Arun et al. randomize the logits and then ``mixed10`` down to ``mixed1``; ``mixed0`` and the
        stem are never randomized, so ``include_stem=False`` reproduces their schedule.
        """
        blocks: list[tuple[str, Sequence[str]]] = [("logits", ["fc"])]
        blocks += [(f"mixed{i}", [f"mixed{i}"]) for i in range(10, 0, -1)]
        if include_stem:
            blocks.append(("stem", ["stem", "mixed0"]))
        return blocks
