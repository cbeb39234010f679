"""The network's blocks: MBConv (EfficientNet, MobileNetV2), FusedMBConv (EfficientNetV2),
DepthwiseSeparable (MobileNetV1) and Bottleneck (ResNet), all built by :func:`create_block`."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvNormAct, DropPath, SqueezeExcite, create_act
from .scaling import se_channels
from .specs import BlockType, StageSpec

__all__ = ["MBConv", "FusedMBConv", "DepthwiseSeparable", "Bottleneck", "create_block"]


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation (MobileNetV2, MnasNet; paper Table 1).

    expand 1x1 (skipped when ``expand_ratio == 1``) -> depthwise kxk (stride here) -> SE ->
    project 1x1 with no activation (linear bottleneck) -> identity skip with stochastic
    depth when ``stride == 1`` and ``in_chs == out_chs``.

    Args:
        in_chs, out_chs: channels; kernel: depthwise kernel (pixels); stride: 1 or 2.
        expand_ratio: inner width over ``in_chs``.
        se_ratio: SE bottleneck as a fraction of ``in_chs`` (0 = no SE).
        act: activation name; padding: ``symmetric`` or ``same``.
        drop_path_rate: stochastic-depth drop probability of this block's residual branch.
        norm_eps, norm_momentum: BatchNorm settings.

    Shapes: (N, in_chs, H, W) -> (N, out_chs, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, expand_ratio: int,
                 se_ratio: float = 0.25, act: str = "silu", padding: str = "symmetric",
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-3, norm_momentum: float = 0.01) -> None:
        super().__init__()
        norm = dict(padding=padding, norm_eps=norm_eps, norm_momentum=norm_momentum)
        mid = in_chs * expand_ratio
        self.has_skip = stride == 1 and in_chs == out_chs
        self.expand = ConvNormAct(in_chs, mid, 1, act=act, **norm) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvNormAct(mid, mid, kernel, stride, groups=mid, act=act, **norm)
        self.se = SqueezeExcite(mid, se_channels(in_chs, se_ratio), act) if se_ratio > 0 else nn.Identity()
        self.project = ConvNormAct(mid, out_chs, 1, act=None, **norm)
        self.drop_path = DropPath(drop_path_rate) if self.has_skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.has_skip:
            out = self.drop_path(out) + x
        return out


class FusedMBConv(nn.Module):
    """Fused MBConv (EfficientNetV2, Tan & Le 2021): one regular kxk conv replaces expand + depthwise.

    fused kxk (stride here, to ``in_chs * expand_ratio``) -> SE -> project 1x1 (linear);
    with ``expand_ratio == 1`` the fused conv goes straight to ``out_chs`` with its
    activation and there is no projection. Skip and stochastic depth as :class:`MBConv`.

    Shapes: (N, in_chs, H, W) -> (N, out_chs, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, expand_ratio: int,
                 se_ratio: float = 0.0, act: str = "silu", padding: str = "symmetric",
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-3, norm_momentum: float = 0.01) -> None:
        super().__init__()
        norm = dict(padding=padding, norm_eps=norm_eps, norm_momentum=norm_momentum)
        mid = in_chs * expand_ratio if expand_ratio != 1 else out_chs
        self.has_skip = stride == 1 and in_chs == out_chs
        self.fused = ConvNormAct(in_chs, mid, kernel, stride, act=act, **norm)
        self.se = SqueezeExcite(mid, se_channels(in_chs, se_ratio), act) if se_ratio > 0 else nn.Identity()
        self.project = ConvNormAct(mid, out_chs, 1, act=None, **norm) if expand_ratio != 1 else nn.Identity()
        self.drop_path = DropPath(drop_path_rate) if self.has_skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.fused(x)))
        if self.has_skip:
            out = self.drop_path(out) + x
        return out


class DepthwiseSeparable(nn.Module):
    """Depthwise-separable convolution (MobileNetV1, Howard et al. 2017, Fig. 3).

    depthwise kxk (stride here) -> BN -> act -> pointwise 1x1 -> BN -> act; no skip
    connection (MobileNetV1 has none). ``drop_path_rate`` is accepted for a uniform
    :func:`create_block` and unused.

    Shapes: (N, in_chs, H, W) -> (N, out_chs, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, act: str = "relu",
                 padding: str = "symmetric", norm_eps: float = 1e-5, norm_momentum: float = 0.1) -> None:
        super().__init__()
        norm = dict(padding=padding, norm_eps=norm_eps, norm_momentum=norm_momentum)
        self.depthwise = ConvNormAct(in_chs, in_chs, kernel, stride, groups=in_chs, act=act, **norm)
        self.project = ConvNormAct(in_chs, out_chs, 1, act=act, **norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.depthwise(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck (He et al. 2016, Fig. 5 right), v1.5 striding.

    1x1 reduce to ``inner_chs`` -> BN -> act -> 3x3 (stride here) -> BN -> act -> 1x1
    restore to ``out_chs`` -> BN; added to the shortcut, then act. The shortcut is the
    identity, or a strided 1x1 conv + BN where the shape changes (projection, option B).
    Stochastic depth drops the residual branch (timm's ``drop_path_rate`` for ResNets).

    Shapes: (N, in_chs, H, W) -> (N, out_chs, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_chs: int, inner_chs: int, out_chs: int, kernel: int = 3, stride: int = 1,
                 act: str = "relu", padding: str = "symmetric", drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-5, norm_momentum: float = 0.1) -> None:
        super().__init__()
        norm = dict(padding=padding, norm_eps=norm_eps, norm_momentum=norm_momentum)
        self.reduce = ConvNormAct(in_chs, inner_chs, 1, act=act, **norm)
        self.conv = ConvNormAct(inner_chs, inner_chs, kernel, stride, act=act, **norm)
        self.restore = ConvNormAct(inner_chs, out_chs, 1, act=None, **norm)
        self.shortcut = (ConvNormAct(in_chs, out_chs, 1, stride, act=None, **norm)
                         if stride != 1 or in_chs != out_chs else nn.Identity())
        self.drop_path = DropPath(drop_path_rate)
        self.act = create_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.restore(self.conv(self.reduce(x)))
        return self.act(self.drop_path(out) + self.shortcut(x))


def create_block(stage: StageSpec, in_chs: int, stride: int, act: str, padding: str,
                 drop_path_rate: float, norm_eps: float, norm_momentum: float) -> nn.Module:
    """Build one block of ``stage`` (its type, kernel, expansion, SE) with the given input and stride.

    Args:
        stage: the table row (block type, kernel, expansion, ``out_chs``, SE ratio).
        in_chs: the block's input channels; stride: 1 or 2 (the stage's first block only).
        act: activation name; padding: ``symmetric`` or ``same``.
        drop_path_rate: stochastic depth of this block's residual branch.
        norm_eps, norm_momentum: BatchNorm settings.
    """
    norm = dict(padding=padding, norm_eps=norm_eps, norm_momentum=norm_momentum)
    if stage.block is BlockType.DEPTHWISE_SEPARABLE:
        return DepthwiseSeparable(in_chs, stage.out_chs, stage.kernel, stride, act, **norm)
    if stage.block is BlockType.BOTTLENECK:
        return Bottleneck(in_chs, stage.inner_chs, stage.out_chs, stage.kernel, stride, act,
                          drop_path_rate=drop_path_rate, **norm)
    cls = MBConv if stage.block is BlockType.MBCONV else FusedMBConv
    return cls(in_chs, stage.out_chs, stage.kernel, stride, stage.expand_ratio, stage.se_ratio, act,
               drop_path_rate=drop_path_rate, **norm)
