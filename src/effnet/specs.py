"""Baseline network tables as plain data (no torch).

A network is described by a :class:`NetworkSpec`: a stem convolution, a tuple of
:class:`StageSpec` rows and a 1x1 head convolution. The EfficientNet-B0 table below is
paper Table 1 (Tan & Le, ICML 2019) written row for row; every other EfficientNet is
this table passed through :mod:`effnet.scaling`.

Example (paper Table 1, stage 3)::

    mbconv(expand_ratio=6, kernel=5, stride=2, out_chs=40, repeats=2)
    # "MBConv6, k5x5 | 56x56 -> 28x28 | 40 channels | 2 layers"
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = [
    "BlockType",
    "StageSpec",
    "NetworkSpec",
    "mbconv",
    "fused_mbconv",
    "EFFICIENTNET_B0",
    "EFFICIENTNET_LITE0",
]


class BlockType(str, enum.Enum):
    """The block a stage is built from."""

    MBCONV = "MBConv"
    """Inverted residual: expand 1x1 -> depthwise kxk -> SE -> project 1x1 (MobileNetV2/EfficientNet)."""
    FUSED_MBCONV = "FusedMBConv"
    """Expand and depthwise fused into one regular kxk conv -> SE -> project 1x1 (EfficientNetV2)."""


@dataclass(frozen=True)
class StageSpec:
    """One row of a block table: ``repeats`` identical blocks, the first with ``stride``.

    Attributes:
        block: the block type (:class:`BlockType`).
        expand_ratio: width of the inner (expanded) layer over the block's input channels;
            1 means no expansion conv (MBConv1 in paper Table 1).
        kernel: depthwise kernel size in pixels (3 or 5 in EfficientNet).
        stride: stride of the first block of the stage (1 or 2); later blocks use 1.
        out_chs: output channels of every block in the stage.
        repeats: number of blocks (the "#Layers" column of Table 1).
        se_ratio: squeeze-and-excitation bottleneck as a fraction of the *block input*
            channels (0.25 in the official code); 0 disables SE (EfficientNet-Lite).
    """

    block: BlockType
    expand_ratio: int
    kernel: int
    stride: int
    out_chs: int
    repeats: int
    se_ratio: float = 0.25

    def __post_init__(self) -> None:
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {self.kernel}")
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {self.stride}")
        if self.expand_ratio < 1:
            raise ValueError(f"expand_ratio must be >= 1, got {self.expand_ratio}")
        if self.out_chs < 1 or self.repeats < 1:
            raise ValueError(f"out_chs and repeats must be >= 1, got {self.out_chs}, {self.repeats}")
        if not 0.0 <= self.se_ratio < 1.0:
            raise ValueError(f"se_ratio must be in [0, 1), got {self.se_ratio}")


def mbconv(expand_ratio: int, kernel: int, stride: int, out_chs: int, repeats: int,
           se_ratio: float = 0.25) -> StageSpec:
    """A stage of MBConv blocks, arguments in the order paper Table 1 names them."""
    return StageSpec(BlockType.MBCONV, expand_ratio, kernel, stride, out_chs, repeats, se_ratio)


def fused_mbconv(expand_ratio: int, kernel: int, stride: int, out_chs: int, repeats: int,
                 se_ratio: float = 0.0) -> StageSpec:
    """A stage of FusedMBConv blocks (EfficientNetV2 paper Table 4 notation)."""
    return StageSpec(BlockType.FUSED_MBCONV, expand_ratio, kernel, stride, out_chs, repeats, se_ratio)


@dataclass(frozen=True)
class NetworkSpec:
    """A whole network: stem conv, stages, 1x1 head conv.

    Attributes:
        stem_chs: output channels of the stem conv (kernel ``stem_kernel``, stride ``stem_stride``).
        stages: the block table, input side first.
        head_chs: output channels of the final 1x1 conv (the pooled feature size).
        act: activation name, ``"silu"`` (Swish, paper) or ``"relu6"`` (Lite).
        stem_kernel, stem_stride: stem conv geometry (3x3 stride 2 in Table 1).
        scale_stem_head: when False, compound scaling leaves stem and head widths as they
            are (EfficientNet-Lite, official ``fix_head_stem``).
        scale_first_last_repeats: when False, the first and last stages keep their repeats
            under depth scaling (EfficientNet-Lite, official ``fix_head_stem``).
    """

    stem_chs: int
    stages: tuple[StageSpec, ...]
    head_chs: int
    act: str = "silu"
    stem_kernel: int = 3
    stem_stride: int = 2
    scale_stem_head: bool = True
    scale_first_last_repeats: bool = True

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a NetworkSpec needs at least one stage")
        if self.act not in ("silu", "relu6", "relu"):
            raise ValueError(f"act must be 'silu', 'relu6' or 'relu', got {self.act!r}")

    @property
    def num_blocks(self) -> int:
        """Total number of blocks over all stages."""
        return sum(s.repeats for s in self.stages)

    @property
    def stride(self) -> int:
        """Total downsampling factor from input pixels to the head's feature map."""
        total = self.stem_stride
        for s in self.stages:
            total *= s.stride
        return total


# Paper Table 1: EfficientNet-B0 baseline network (input 224x224x3).
#   Stage 1      Conv3x3,   stride 2,  32 channels, 1 layer          (stem)
#   Stages 2-8   the MBConv rows below
#   Stage 9      Conv1x1 & Pooling & FC, 1280 channels                (head)
# SE ratio 0.25 of the block input channels and Swish are from the official code
# (tensorflow/tpu models/official/efficientnet/efficientnet_builder.py).
EFFICIENTNET_B0 = NetworkSpec(
    stem_chs=32,
    stages=(
        #      expand kernel stride  chs  layers     Table 1 resolution
        mbconv(1,     3,     1,      16,  1),      # 112x112
        mbconv(6,     3,     2,      24,  2),      # 112x112 -> 56x56
        mbconv(6,     5,     2,      40,  2),      # 56x56   -> 28x28
        mbconv(6,     3,     2,      80,  3),      # 28x28   -> 14x14
        mbconv(6,     5,     1,      112, 3),      # 14x14
        mbconv(6,     5,     2,      192, 4),      # 14x14   -> 7x7
        mbconv(6,     3,     1,      320, 1),      # 7x7
    ),
    head_chs=1280,
    act="silu",
)

# EfficientNet-Lite (official tensorflow/tpu models/official/efficientnet/lite/):
# the B0 table without squeeze-and-excitation, ReLU6 instead of Swish (both for
# post-training quantization), and stem/head/first-last repeats left unscaled.
EFFICIENTNET_LITE0 = replace(
    EFFICIENTNET_B0,
    stages=tuple(replace(s, se_ratio=0.0) for s in EFFICIENTNET_B0.stages),
    act="relu6",
    scale_stem_head=False,
    scale_first_last_repeats=False,
)
