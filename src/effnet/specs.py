"""Baseline network tables as plain data (no torch).

A network is described by a :class:`NetworkSpec`: a stem convolution (optionally followed
by a max-pool), a tuple of :class:`StageSpec` rows and an optional 1x1 head convolution.
Each baseline below is its paper's table written row for row: EfficientNet-B0 (Tan & Le,
ICML 2019, Table 1), MobileNetV1 (Howard et al. 2017, Table 1), MobileNetV2 (Sandler et
al. 2018, Table 2), ResNet-50 (He et al. 2016, Table 1) and EfficientNetV2-S/M/L/XL and
its base network (Tan & Le, ICML 2021, Table 4 and the official configs). Every other
network is one of these tables passed through :mod:`effnet.scaling`.

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
    "depthwise_separable",
    "bottleneck",
    "EFFICIENTNET_B0",
    "EFFICIENTNET_LITE0",
    "EFFICIENTNETV2_BASE",
    "EFFICIENTNETV2_S",
    "EFFICIENTNETV2_M",
    "EFFICIENTNETV2_L",
    "EFFICIENTNETV2_XL",
    "MOBILENET_V1",
    "MOBILENET_V2",
    "RESNET50",
]


class BlockType(str, enum.Enum):
    """The block a stage is built from."""

    MBCONV = "MBConv"
    """Inverted residual: expand 1x1 -> depthwise kxk -> SE -> project 1x1 (MobileNetV2/EfficientNet)."""
    FUSED_MBCONV = "FusedMBConv"
    """Expand and depthwise fused into one regular kxk conv -> SE -> project 1x1 (EfficientNetV2)."""
    DEPTHWISE_SEPARABLE = "DepthwiseSeparable"
    """Depthwise kxk -> pointwise 1x1, each with BN and activation, no skip (MobileNetV1)."""
    BOTTLENECK = "Bottleneck"
    """1x1 reduce -> 3x3 -> 1x1 restore, residual added before the last activation (ResNet-50)."""


@dataclass(frozen=True)
class StageSpec:
    """One row of a block table: ``repeats`` identical blocks, the first with ``stride``.

    Attributes:
        block: the block type (:class:`BlockType`).
        expand_ratio: MBConv/FusedMBConv: width of the inner (expanded) layer over the
            block's input channels; 1 means no expansion conv (MBConv1 in paper Table 1).
            Bottleneck: the *expansion* of He et al., output over inner width (4 in
            ResNet-50: inner 64, output 256); see :attr:`inner_chs`. DepthwiseSeparable: 1.
        kernel: the spatial (depthwise, fused or 3x3) kernel size in pixels.
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
        if self.block is BlockType.BOTTLENECK and self.out_chs % self.expand_ratio:
            raise ValueError(f"a Bottleneck's out_chs ({self.out_chs}) must be a multiple of its expansion "
                             f"({self.expand_ratio})")

    @property
    def inner_chs(self) -> int:
        """Bottleneck: the 1x1-reduce and 3x3 width, ``out_chs / expand_ratio`` (He et al.
        Table 1 lists it: 64, 128, 256, 512). Other blocks: ``out_chs``."""
        return self.out_chs // self.expand_ratio if self.block is BlockType.BOTTLENECK else self.out_chs


def mbconv(expand_ratio: int, kernel: int, stride: int, out_chs: int, repeats: int,
           se_ratio: float = 0.25) -> StageSpec:
    """A stage of MBConv blocks, arguments in the order paper Table 1 names them."""
    return StageSpec(BlockType.MBCONV, expand_ratio, kernel, stride, out_chs, repeats, se_ratio)


def fused_mbconv(expand_ratio: int, kernel: int, stride: int, out_chs: int, repeats: int,
                 se_ratio: float = 0.0) -> StageSpec:
    """A stage of FusedMBConv blocks (EfficientNetV2 paper Table 4 notation)."""
    return StageSpec(BlockType.FUSED_MBCONV, expand_ratio, kernel, stride, out_chs, repeats, se_ratio)


def depthwise_separable(kernel: int, stride: int, out_chs: int, repeats: int) -> StageSpec:
    """A stage of depthwise-separable convs (MobileNetV1 Table 1: "Conv dw / s" + "Conv 1x1")."""
    return StageSpec(BlockType.DEPTHWISE_SEPARABLE, 1, kernel, stride, out_chs, repeats, 0.0)


def bottleneck(inner_chs: int, stride: int, repeats: int, expansion: int = 4) -> StageSpec:
    """A stage of ResNet bottlenecks as He et al. Table 1 writes it:
    ``[1x1, inner; 3x3, inner; 1x1, inner * expansion] x repeats``."""
    return StageSpec(BlockType.BOTTLENECK, expansion, 3, stride, inner_chs * expansion, repeats, 0.0)


@dataclass(frozen=True)
class NetworkSpec:
    """A whole network: stem conv, stages, 1x1 head conv.

    Attributes:
        stem_chs: output channels of the stem conv (kernel ``stem_kernel``, stride ``stem_stride``).
        stages: the block table, input side first.
        head_chs: output channels of the final 1x1 conv (the pooled feature size); 0 for
            networks without one (MobileNetV1, ResNet-50: the last stage's output is pooled).
        act: activation name, ``"silu"`` (Swish, paper), ``"relu6"`` (Lite, MobileNetV1/V2)
            or ``"relu"`` (ResNet).
        stem_kernel, stem_stride: stem conv geometry (3x3 stride 2 in Table 1).
        stem_pool: a 3x3 stride-2 max-pool after the stem conv (ResNet: "3x3 max pool, stride 2").
        scale_stem_head: when False, compound scaling leaves stem and head widths as they
            are (EfficientNet-Lite, official ``fix_head_stem``).
        scale_first_last_repeats: when False, the first and last stages keep their repeats
            under depth scaling (EfficientNet-Lite, official ``fix_head_stem``).
        head_min_chs: width scaling never makes the head narrower than this (MobileNetV2
            keeps its 1280-channel last layer for multipliers below 1, Sandler et al.
            Section 6.1; torchvision and timm do the same). 0: no floor.
        round_limit: :func:`effnet.scaling.round_filters` adds one divisor when rounding
            loses more than ``1 - round_limit`` of a scaled width: 0.9 in V1's official code,
            0 (never) in V2's (google/automl efficientnetv2/utils.py ``round_filters`` has no
            such step; V2-B3's published 14,358,406 parameters need it: its first stage is
            16 channels, not 24).
    """

    stem_chs: int
    stages: tuple[StageSpec, ...]
    head_chs: int
    act: str = "silu"
    stem_kernel: int = 3
    stem_stride: int = 2
    stem_pool: bool = False
    scale_stem_head: bool = True
    scale_first_last_repeats: bool = True
    head_min_chs: int = 0
    round_limit: float = 0.9

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a NetworkSpec needs at least one stage")
        if self.head_chs < 0 or self.head_min_chs < 0:
            raise ValueError(f"head_chs and head_min_chs must be >= 0, got {self.head_chs}, {self.head_min_chs}")
        if self.act not in ("silu", "relu6", "relu"):
            raise ValueError(f"act must be 'silu', 'relu6' or 'relu', got {self.act!r}")

    @property
    def num_blocks(self) -> int:
        """Total number of blocks over all stages."""
        return sum(s.repeats for s in self.stages)

    @property
    def num_features(self) -> int:
        """Channels of the pooled features: the head conv's, or the last stage's without one."""
        return self.head_chs or self.stages[-1].out_chs

    @property
    def stride(self) -> int:
        """Total downsampling factor from input pixels to the head's feature map."""
        total = self.stem_stride * (2 if self.stem_pool else 1)
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


# MobileNetV1 1.0 (Howard et al. 2017, Table 1), input 224x224x3:
#   Conv / s2      3x3x3x32                         (stem)
#   then each "Conv dw / s" + "Conv / s1 1x1" pair is one depthwise-separable block,
#   grouped into stages at one resolution as timm's mobilenetv1_100 groups them (its
#   weight keys blocks.S.B follow this grouping). The table's second-to-last "Conv dw / s2"
#   at 7x7 is stride 1 (the output stays 7x7), as every implementation has it.
#   Avg Pool 7x7, FC 1024x1000: no head conv. An activation after every BN (the paper's
#   Fig. 3): ReLU6, as in the reference implementation (tensorflow/models
#   research/slim/nets/mobilenet_v1.py, mobilenet_v1_arg_scope: activation_fn=tf.nn.relu6)
#   and in timm's mobilenetv1_100 (timm/models/efficientnet.py _gen_mobilenet_v1:
#   resolve_act_layer(kwargs, 'relu6')), whose weights this model loads; with plain ReLU
#   those weights give logits off by 0.45 on the reference-scaling oracle.
MOBILENET_V1 = NetworkSpec(
    stem_chs=32,
    stages=(
        #                   kernel stride  chs   layers   Table 1 rows
        depthwise_separable(3,     1,      64,   1),    # dw/s1 112^2x32, 1x1 32x64
        depthwise_separable(3,     2,      128,  2),    # dw/s2 -> 56^2, 1x1 64x128; dw/s1, 1x1 128x128
        depthwise_separable(3,     2,      256,  2),    # dw/s2 -> 28^2, 1x1 128x256; dw/s1, 1x1 256x256
        depthwise_separable(3,     2,      512,  6),    # dw/s2 -> 14^2, 1x1 256x512; 5x (dw/s1, 1x1 512x512)
        depthwise_separable(3,     2,      1024, 2),    # dw/s2 -> 7^2, 1x1 512x1024; dw/s1, 1x1 1024x1024
    ),
    head_chs=0,
    act="relu6",
)

# MobileNetV2 1.0 (Sandler et al. 2018, Table 2), input 224x224x3: "bottleneck" rows are
# MBConv without squeeze-and-excitation, t = expansion, c = channels, n = repeats,
# s = stride of the first; all depthwise kernels 3x3; ReLU6 (Section 3.2).
#   conv2d 3x3, 32, s2 (stem) ... conv2d 1x1, 1280 (head); avgpool 7x7; conv2d 1x1 k (FC).
MOBILENET_V2 = NetworkSpec(
    stem_chs=32,
    stages=(
        #      t  kernel  s  c    n          Table 2 input
        mbconv(1, 3,      1, 16,  1, 0.0),   # 112^2 x 32
        mbconv(6, 3,      2, 24,  2, 0.0),   # 112^2 x 16
        mbconv(6, 3,      2, 32,  3, 0.0),   # 56^2 x 24
        mbconv(6, 3,      2, 64,  4, 0.0),   # 28^2 x 32
        mbconv(6, 3,      1, 96,  3, 0.0),   # 14^2 x 64
        mbconv(6, 3,      2, 160, 3, 0.0),   # 14^2 x 96
        mbconv(6, 3,      1, 320, 1, 0.0),   # 7^2 x 160
    ),
    head_chs=1280,
    act="relu6",
    head_min_chs=1280,
)

# ResNet-50 (He et al. 2016, Table 1, the 50-layer column), input 224x224x3:
#   conv1   7x7, 64, stride 2; 3x3 max pool, stride 2              (stem)
#   conv2_x [1x1, 64; 3x3, 64; 1x1, 256] x 3                       (56x56)
#   conv3_x [1x1, 128; 3x3, 128; 1x1, 512] x 4                     (28x28)
#   conv4_x [1x1, 256; 3x3, 256; 1x1, 1024] x 6                    (14x14)
#   conv5_x [1x1, 512; 3x3, 512; 1x1, 2048] x 3                    (7x7)
#   average pool, 1000-d fc: no head conv.
# Downsampling is on the 3x3 conv of each stage's first block and the shortcut is a
# strided 1x1 conv + BN where the shape changes (option B), as torchvision's and timm's
# "ResNet v1.5"; the paper's Table 1 strides the first 1x1 instead (same parameters).
RESNET50 = NetworkSpec(
    stem_chs=64,
    stages=(
        #          inner  stride  layers
        bottleneck(64,    1,      3),     # conv2_x
        bottleneck(128,   2,      4),     # conv3_x
        bottleneck(256,   2,      6),     # conv4_x
        bottleneck(512,   2,      3),     # conv5_x
    ),
    head_chs=0,
    act="relu",
    stem_kernel=7,
    stem_pool=True,
)


# EfficientNetV2 (Tan & Le, ICML 2021). Fused-MBConv replaces expand 1x1 + depthwise kxk
# by one regular kxk conv in the early, high-resolution stages; Fused-MBConv1 (expansion 1)
# is that conv alone. SE 0.25 of the block *input* channels, Swish, as in V1. Each table
# is a row-for-row copy of the official configs (google/automl efficientnetv2/
# effnetv2_configs.py, ``v2_*_block``: r = layers, k = kernel, s = stride, e = expansion,
# o = channels, c1 = fused, se0.25); S/M/L/XL are released as their own tables (width and
# depth 1.0), B0..B3 as this base table under V1's width/depth coefficients.

# The V2 base network ("v2_base_block"), scaled to V2-B0..B3 like V1's B0..B3.
EFFICIENTNETV2_BASE = NetworkSpec(
    stem_chs=32,
    stages=(
        #            expand kernel stride  chs  layers
        fused_mbconv(1,     3,     1,      16,  1),
        fused_mbconv(4,     3,     2,      32,  2),
        fused_mbconv(4,     3,     2,      48,  2),
        mbconv(      4,     3,     2,      96,  3),
        mbconv(      6,     3,     1,      112, 5),
        mbconv(      6,     3,     2,      192, 8),
    ),
    head_chs=1280,
    round_limit=0.0,         # V2's round_filters: nearest multiple of 8
)

# V2 paper Table 4, EfficientNetV2-S:
#   Stage 0  Conv3x3, stride 2, 24 channels, 1 layer                (stem)
#   Stages 1-6 the rows below ("Fused-MBConv4, k3x3" = fused_mbconv(4, 3, ...))
#   Stage 7  Conv1x1 & Pooling & FC, 1280 channels                  (head)
EFFICIENTNETV2_S = NetworkSpec(
    stem_chs=24,
    stages=(
        #            expand kernel stride  chs  layers
        fused_mbconv(1,     3,     1,      24,  2),
        fused_mbconv(4,     3,     2,      48,  4),
        fused_mbconv(4,     3,     2,      64,  4),
        mbconv(      4,     3,     2,      128, 6),     # SE 0.25
        mbconv(      6,     3,     1,      160, 9),     # SE 0.25
        mbconv(      6,     3,     2,      256, 15),    # SE 0.25
    ),
    head_chs=1280,
    round_limit=0.0,         # V2's round_filters: nearest multiple of 8
)

# EfficientNetV2-M ("v2_m_block"; about the S table x width 1.6, depth 2.2 of the base).
EFFICIENTNETV2_M = NetworkSpec(
    stem_chs=24,
    stages=(
        fused_mbconv(1, 3, 1, 24,  3),
        fused_mbconv(4, 3, 2, 48,  5),
        fused_mbconv(4, 3, 2, 80,  5),
        mbconv(      4, 3, 2, 160, 7),
        mbconv(      6, 3, 1, 176, 14),
        mbconv(      6, 3, 2, 304, 18),
        mbconv(      6, 3, 1, 512, 5),
    ),
    head_chs=1280,
    round_limit=0.0,         # V2's round_filters: nearest multiple of 8
)

# EfficientNetV2-L ("v2_l_block").
EFFICIENTNETV2_L = NetworkSpec(
    stem_chs=32,
    stages=(
        fused_mbconv(1, 3, 1, 32,  4),
        fused_mbconv(4, 3, 2, 64,  7),
        fused_mbconv(4, 3, 2, 96,  7),
        mbconv(      4, 3, 2, 192, 10),
        mbconv(      6, 3, 1, 224, 19),
        mbconv(      6, 3, 2, 384, 25),
        mbconv(      6, 3, 1, 640, 7),
    ),
    head_chs=1280,
    round_limit=0.0,         # V2's round_filters: nearest multiple of 8
)

# EfficientNetV2-XL ("v2_xl_block"; released only with ImageNet-21k pretraining).
EFFICIENTNETV2_XL = NetworkSpec(
    stem_chs=32,
    stages=(
        fused_mbconv(1, 3, 1, 32,  4),
        fused_mbconv(4, 3, 2, 64,  8),
        fused_mbconv(4, 3, 2, 96,  8),
        mbconv(      4, 3, 2, 192, 16),
        mbconv(      6, 3, 1, 256, 24),
        mbconv(      6, 3, 2, 512, 32),
        mbconv(      6, 3, 1, 640, 8),
    ),
    head_chs=1280,
    round_limit=0.0,         # V2's round_filters: nearest multiple of 8
)
