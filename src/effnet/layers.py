"""Small building blocks: padding, conv-norm-activation, squeeze-and-excitation, drop path.

Every module here is TorchScript-scriptable, traceable by torch.export and exportable to
ONNX. Tensors are NCHW float unless a docstring says otherwise.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PADDING_MODES",
    "same_padding",
    "Conv2dSame",
    "create_conv2d",
    "create_act",
    "ConvNormAct",
    "MaxPool2dSame",
    "create_max_pool",
    "SqueezeExcite",
    "DropPath",
    "drop_path",
]

PADDING_MODES = ("symmetric", "same")
"""``symmetric``: pad ``k // 2`` on every side (PyTorch-trained weights).
``same``: TensorFlow 'SAME' (TF-trained weights), asymmetric for stride 2 on even sizes."""


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """TensorFlow 'SAME' padding of one spatial dimension, as (before, after) in pixels.

    TensorFlow's rule (tf.nn.convolution docs): the output has ``ceil(size / stride)``
    elements; the total padding needed for that is split with the extra pixel *after*.

    >>> same_padding(224, 3, 2), same_padding(225, 3, 2), same_padding(7, 5, 1)
    ((0, 1), (1, 1), (2, 2))
    """
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow 'SAME' padding, computed from the input size.

    Correct for any input size (odd, even, non-square). The padding is plain integer
    arithmetic on the input shape, so with a fixed input size it becomes constants in an
    exported graph (no shape ops). Where the padding comes out symmetric (odd sizes) it is
    passed to the convolution itself and no separate pad op runs.

    Shapes: (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0,
                         dilation=dilation, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top == bottom and left == right:
            padding: List[int] = [top, left]
        else:
            x = F.pad(x, [left, right, top, bottom])
            padding = [0, 0]
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


def create_conv2d(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1,
                  padding: str = "symmetric", bias: bool = False) -> nn.Conv2d:
    """A 2-D convolution with the given padding mode (see :data:`PADDING_MODES`).

    With ``padding="same"`` and stride 1 an odd kernel pads ``k // 2`` on both sides, which
    is exactly SAME, so a plain ``nn.Conv2d`` is returned; only strided convs need
    :class:`Conv2dSame`.

    Raises:
        ValueError: unknown padding mode.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if padding == "same" and (stride > 1 or kernel % 2 == 0):
        return Conv2dSame(in_chs, out_chs, kernel, stride, groups=groups, bias=bias)
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


def create_act(name: Optional[str]) -> nn.Module:
    """Activation module by name: ``silu`` (Swish, paper), ``relu6`` (Lite), ``relu``, None -> identity."""
    if name is None:
        return nn.Identity()
    acts = {"silu": nn.SiLU, "relu6": nn.ReLU6, "relu": nn.ReLU}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(acts)}")
    return acts[name]()


class ConvNormAct(nn.Module):
    """Convolution (no bias) -> BatchNorm -> activation.

    Args:
        in_chs, out_chs: channels.
        kernel: kernel size in pixels; stride: 1 or 2; groups: ``in_chs`` for depthwise.
        act: activation name or None (linear, as the MBConv projection).
        padding: ``symmetric`` or ``same``.
        norm_eps, norm_momentum: BatchNorm epsilon and PyTorch-convention momentum
            (TF's decay 0.99 is momentum 0.01).

    Shapes: (N, in_chs, H, W) -> (N, out_chs, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: Optional[str] = "silu", padding: str = "symmetric",
                 norm_eps: float = 1e-3, norm_momentum: float = 0.01) -> None:
        super().__init__()
        self.conv = create_conv2d(in_chs, out_chs, kernel, stride, groups, padding)
        self.bn = nn.BatchNorm2d(out_chs, eps=norm_eps, momentum=norm_momentum)
        self.act = create_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MaxPool2dSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` with TensorFlow 'SAME' padding (padded pixels never win: -inf).

    Shapes: (N, C, H, W) -> (N, C, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__(kernel_size, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel_size, self.stride)
        x = F.pad(x, [left, right, top, bottom], value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


def create_max_pool(kernel: int, stride: int, padding: str = "symmetric") -> nn.Module:
    """Max-pool with the given padding mode: ``symmetric`` pads ``kernel // 2`` (ResNet's
    3x3 stride-2 pool: ``nn.MaxPool2d(3, 2, 1)``), ``same`` is TF 'SAME'.

    Raises:
        ValueError: unknown padding mode.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if padding == "same":
        return MaxPool2dSame(kernel, stride)
    return nn.MaxPool2d(kernel, stride, padding=kernel // 2)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as used in EfficientNet.

    Global average pool -> 1x1 conv to ``rd_chs`` (with bias) -> activation -> 1x1 conv back
    to ``chs`` (with bias) -> sigmoid -> channel-wise gate on the input.

    Shapes: (N, chs, H, W) -> (N, chs, H, W).
    """

    def __init__(self, chs: int, rd_chs: int, act: str = "silu") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = create_act(act)
        self.expand = nn.Conv2d(rd_chs, chs, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(self.act(self.reduce(s)))
        return x * torch.sigmoid(s)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016) on a residual branch: drop whole samples.

    In training, each sample of the batch is zeroed with probability ``p`` and the kept
    ones are scaled by ``1 / (1 - p)`` (official ``drop_connect``); otherwise identity.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape: List[int] = [x.shape[0]] + [1] * (x.dim() - 1)
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path` with drop probability ``p`` in [0, 1)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"
