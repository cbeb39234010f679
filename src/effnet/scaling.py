"""Compound scaling (paper Section 3.3) as pure functions of :mod:`effnet.specs` (no torch).

Paper Eq. 3: depth ``d = alpha ** phi``, width ``w = beta ** phi``, resolution
``r = gamma ** phi`` with ``alpha * beta**2 * gamma**2 ~= 2`` so that FLOPs grow by about
``2 ** phi``; the grid search on B0 found ``alpha=1.2, beta=1.1, gamma=1.15``.

The released B1..B7 (and B8, L2) do not use ``phi`` literally: the official code lists
their (width, depth, resolution, dropout) as constants, reproduced in
:data:`EFFICIENTNET_SCALING` and :data:`LITE_SCALING`. :func:`compound` gives the
coefficients of Eq. 3 for any ``phi``; :func:`scale_network` applies either to a baseline
table; :func:`scale_to_budget` picks ``phi`` for a target MACs budget.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass, replace
from typing import Optional, Union

from ._validate import check_float, check_int
from .specs import EFFICIENTNET_B0, BlockType, NetworkSpec, StageSpec

__all__ = [
    "Scaling",
    "EFFICIENTNET_SCALING",
    "LITE_SCALING",
    "EFFICIENTNETV2_SCALING",
    "EFFICIENTNETV2_TRAIN_SIZE",
    "PAPER_ALPHA",
    "PAPER_BETA",
    "PAPER_GAMMA",
    "round_filters",
    "round_repeats",
    "se_channels",
    "compound",
    "scale_network",
    "estimate_macs",
    "estimate_params",
    "estimate_activations",
    "scale_to_budget",
    "GRID_ALPHA",
    "GRID_BETA",
    "GRID_GAMMA",
    "MAX_GRID_AXIS",
    "MAX_GRID_POINTS",
    "grid_values",
    "flops_factor",
    "candidate_grid",
]

# Paper Section 3.3, step 1: grid search under alpha * beta^2 * gamma^2 ~= 2.
PAPER_ALPHA = 1.2
PAPER_BETA = 1.1
PAPER_GAMMA = 1.15
# A float Scaling.resolution is a multiplier; above this it is surely pixels given as a float.
MAX_RESOLUTION_MULTIPLIER = 64.0


@dataclass(frozen=True)
class Scaling:
    """Scaling coefficients of one model, relative to its baseline table.

    Attributes:
        width: channel multiplier (``w = beta ** phi`` in paper Eq. 3; ``width_coefficient``
            officially), > 0.
        depth: repeats multiplier (``d = alpha ** phi``; ``depth_coefficient``), > 0.
        resolution: the input size. An ``int`` is pixels (the square side, as the official
            table gives it: 240 for B1); a ``float`` is a multiplier of the baseline's
            resolution (``r = gamma ** phi``), in (0, 64], rounded to a multiple of 8 pixels
            (1.0 keeps the baseline's exactly: see :meth:`pixels`); None is the baseline's.
        dropout: dropout rate before the classifier in [0, 1); None keeps the baseline's.

    Raises:
        TypeError: a field of the wrong type (a string, a bool).
        ValueError: a field NaN, infinite or out of range; the message names the field.
    """

    width: float = 1.0
    depth: float = 1.0
    resolution: Union[int, float, None] = None
    dropout: Optional[float] = None

    def __post_init__(self) -> None:
        check_float("Scaling.width", self.width, 0.0, low_open=True)
        check_float("Scaling.depth", self.depth, 0.0, low_open=True)
        r = self.resolution
        if isinstance(r, numbers.Integral) and not isinstance(r, bool):
            check_int("Scaling.resolution", r, 1)
        elif r is not None:
            if isinstance(r, bool) or not isinstance(r, numbers.Real):
                raise TypeError(f"Scaling.resolution must be pixels (int), a multiplier (float) or None, "
                                f"got {r!r} ({type(r).__name__})")
            if not (math.isfinite(r) and 0 < r <= MAX_RESOLUTION_MULTIPLIER):
                raise ValueError(f"Scaling.resolution {r!r} is a float, so a multiplier of the baseline's "
                                 f"resolution, and must be in (0, {MAX_RESOLUTION_MULTIPLIER:g}]; give pixels "
                                 f"as an int (e.g. 288)")
        if self.dropout is not None:
            check_float("Scaling.dropout", self.dropout, 0.0, 1.0, high_open=True)

    def pixels(self, base_resolution: int) -> int:
        """The input side in pixels for a baseline at ``base_resolution`` pixels.

        An int resolution is returned as is; a float multiplier ``r`` gives
        ``base_resolution`` itself for ``r == 1`` and otherwise ``base_resolution * r``
        rounded to the nearest multiple of 8 (never below 8), so that the stride-2 stages
        halve it evenly.
        """
        r = self.resolution
        if r is None:
            return base_resolution
        if isinstance(r, numbers.Integral):
            return int(r)
        return base_resolution if r == 1 else max(8, int(round(base_resolution * r / 8)) * 8)

    def compose(self, other: "Scaling") -> "Scaling":
        """``other`` applied on top of this (concrete) scaling: widths and depths multiply,
        a resolution multiplier multiplies this one's pixels (an int replaces them), a
        dropout replaces it.

        Raises:
            ValueError: this scaling has no concrete resolution in pixels.
        """
        if not isinstance(self.resolution, numbers.Integral):
            raise ValueError(f"compose needs a scaling with its resolution in pixels, got {self.resolution!r}")
        return Scaling(self.width * other.width, self.depth * other.depth, other.pixels(int(self.resolution)),
                       self.dropout if other.dropout is None else other.dropout)


# (width, depth, resolution, dropout) from the official code:
# tensorflow/tpu models/official/efficientnet/efficientnet_builder.py, efficientnet_params().
EFFICIENTNET_SCALING: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
    "b8": Scaling(2.2, 3.6, 672, 0.5),
    "l2": Scaling(4.3, 5.3, 800, 0.5),
}

# tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py,
# efficientnet_lite_params().
LITE_SCALING: dict[str, Scaling] = {
    "lite0": Scaling(1.0, 1.0, 224, 0.2),
    "lite1": Scaling(1.0, 1.1, 240, 0.2),
    "lite2": Scaling(1.1, 1.2, 260, 0.3),
    "lite3": Scaling(1.2, 1.4, 280, 0.3),
    "lite4": Scaling(1.4, 1.8, 300, 0.3),
}

# EfficientNetV2 (google/automl efficientnetv2/effnetv2_configs.py, efficientnetv2_params:
# block table, width, depth, train_size, eval_size, dropout, ...). S/M/L/XL are their own
# tables at width = depth = 1; B0..B3 scale the base table with V1's B0..B3 coefficients.
# The resolution here is the *eval* size; V2 trains smaller (EFFICIENTNETV2_TRAIN_SIZE).
EFFICIENTNETV2_SCALING: dict[str, Scaling] = {
    "s": Scaling(1.0, 1.0, 384, 0.2),
    "m": Scaling(1.0, 1.0, 480, 0.3),
    "l": Scaling(1.0, 1.0, 480, 0.4),
    "xl": Scaling(1.0, 1.0, 512, 0.4),
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
}
# Training image size of each (the same efficientnetv2_params column; with progressive
# learning, the last stage's size).
EFFICIENTNETV2_TRAIN_SIZE: dict[str, int] = {"s": 300, "m": 384, "l": 384, "xl": 384,
                                             "b0": 192, "b1": 192, "b2": 208, "b3": 240}


def round_filters(channels: int, width: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Scale a channel count by ``width`` and round it to a multiple of ``divisor``.

    The official rule (efficientnet_model.py ``round_filters``): round to the nearest
    multiple of ``divisor`` (8), never below ``divisor``, and add one ``divisor`` when
    rounding lost more than 10% (``round_limit`` 0.9) of the scaled width.

    >>> round_filters(32, 1.1), round_filters(1280, 2.0), round_filters(40, 1.8)
    (32, 2560, 72)
    """
    check_int("channels", channels, 1)
    check_float("width", width, 0.0, low_open=True)
    check_int("divisor", divisor, 1)
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < round_limit * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth``, rounding up (official ``round_repeats``: ceil).

    >>> round_repeats(3, 1.4), round_repeats(1, 3.1)
    (5, 4)
    """
    if repeats < 1 or depth <= 0:
        raise ValueError(f"repeats must be >= 1 and depth > 0, got {repeats}, {depth}")
    return int(math.ceil(depth * repeats))


def se_channels(in_chs: int, se_ratio: float) -> int:
    """Squeeze-and-excitation bottleneck width: ``max(1, int(in_chs * se_ratio))``.

    ``in_chs`` is the block's input channels, not the expanded width (official
    ``MBConvBlock._build``: ``input_filters * se_ratio``).
    """
    return max(1, int(in_chs * se_ratio))


def compound(phi: float, alpha: float = PAPER_ALPHA, beta: float = PAPER_BETA,
             gamma: float = PAPER_GAMMA, base_resolution: Optional[int] = 224,
             dropout: Optional[float] = 0.2) -> Scaling:
    """Coefficients of paper Eq. 3 for compound coefficient ``phi`` (any real, fractional too).

    Args:
        phi: compound coefficient; 0 is the baseline, each +1 roughly doubles FLOPs when
            ``alpha * beta**2 * gamma**2 == 2``.
        alpha, beta, gamma: depth, width and resolution bases (paper: 1.2, 1.1, 1.15).
        base_resolution: the baseline's input size in pixels (224 for B0); None returns
            the resolution as the multiplier ``gamma**phi`` (a float), to apply to any
            baseline (:meth:`Scaling.pixels`).
        dropout: dropout rate to attach (the paper gives no rule for it; the official
            variants step from 0.2 to 0.5 as they grow); None keeps the baseline's.

    Returns:
        ``Scaling(width=beta**phi, depth=alpha**phi, resolution=...)``, the resolution
        ``base_resolution * gamma**phi`` rounded to a multiple of 8 pixels (``phi = 0``
        keeps ``base_resolution`` exactly), or ``gamma**phi`` itself without a base.

    Raises:
        TypeError: a non-numeric argument.
        ValueError: ``phi`` NaN or infinite, a base not positive, or a ``phi`` so large the
            multipliers overflow or vanish.
    """
    phi = check_float("phi", phi)
    alpha = check_float("alpha", alpha, 0.0, low_open=True)
    beta = check_float("beta", beta, 0.0, low_open=True)
    gamma = check_float("gamma", gamma, 0.0, low_open=True)
    if base_resolution is not None:
        base_resolution = check_int("base_resolution", base_resolution, 1)
    for name, base in (("depth alpha**phi", alpha), ("width beta**phi", beta), ("resolution gamma**phi", gamma)):
        try:
            value = base ** phi
        except OverflowError:
            value = math.inf
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"compound(phi={phi:g}): {name} = {value:g} is not a usable positive finite "
                             f"multiplier; use a smaller |phi|")
    if gamma ** phi > MAX_RESOLUTION_MULTIPLIER:
        raise ValueError(f"compound(phi={phi:g}): resolution gamma**phi = {gamma ** phi:g} is over "
                         f"{MAX_RESOLUTION_MULTIPLIER:g}x the baseline's, with depth x{alpha ** phi:.3g} and width "
                         f"x{beta ** phi:.3g}: no machine holds that network; use a smaller phi")
    multiplier = Scaling(width=beta ** phi, depth=alpha ** phi, resolution=float(gamma ** phi), dropout=dropout)
    if base_resolution is None:
        return multiplier
    return replace(multiplier, resolution=multiplier.pixels(base_resolution))


def _scale_width(stage: StageSpec, width: float, divisor: int, round_limit: float) -> int:
    """A stage's scaled output channels. A Bottleneck scales its inner width and keeps the
    expansion exact (outer = round_filters(inner) * expansion), as wide ResNets do."""
    if stage.block is BlockType.BOTTLENECK:
        return round_filters(stage.inner_chs, width, divisor, round_limit) * stage.expand_ratio
    return round_filters(stage.out_chs, width, divisor, round_limit)


def scale_network(spec: NetworkSpec, scaling: Scaling, divisor: int = 8) -> NetworkSpec:
    """Apply width and depth scaling to a baseline table (any spec: pure, no torch).

    The rule, the same for every network:

    - depth: every stage's repeats ``ceil(d * repeats)`` (:func:`round_repeats`, the official
      code's ceil; Table 3's MobileNetV2 numbers need it: rounding to nearest gives 22% fewer
      MACs). EfficientNet-Lite keeps the first and last stages' repeats.
    - width: stem, every stage's output and the head through :func:`round_filters` (divisor
      8; V1 never loses more than 10%, ``spec.round_limit``; V2 rounds to nearest). Inside a block the inner widths follow: MBConv and
      FusedMBConv expand their (scaled) input by ``expand_ratio``, SE is a fraction of it;
      a ResNet Bottleneck scales its inner width (64..512) and its output is exactly
      ``expansion`` (4) times that; a depthwise-separable block's depthwise conv keeps its
      input width. EfficientNet-Lite keeps stem and head; MobileNetV2's head never goes
      below 1280 (``head_min_chs``); networks without a head conv (MobileNetV1, ResNet-50)
      pool the last stage.
    - resolution is not part of the table: see :meth:`Scaling.pixels`.

    Returns:
        A spec with concrete channels and repeats and no further scaling flags.
    """
    width, depth = scaling.width, scaling.depth
    last = len(spec.stages) - 1
    stages = []
    for i, stage in enumerate(spec.stages):
        fixed_repeats = not spec.scale_first_last_repeats and i in (0, last)
        stages.append(replace(
            stage,
            out_chs=_scale_width(stage, width, divisor, spec.round_limit),
            repeats=stage.repeats if fixed_repeats else round_repeats(stage.repeats, depth),
        ))
    stem, head = spec.stem_chs, spec.head_chs
    if spec.scale_stem_head:
        stem = round_filters(spec.stem_chs, width, divisor, spec.round_limit)
        head = (max(round_filters(spec.head_chs, width, divisor, spec.round_limit), spec.head_min_chs)
                if spec.head_chs else 0)
    return replace(spec, stem_chs=stem, stages=tuple(stages), head_chs=head,
                   scale_stem_head=True, scale_first_last_repeats=True)


def _conv_out(size: int, stride: int) -> int:
    # Both SAME and symmetric k//2 padding give ceil(size / stride) for odd kernels.
    return -(-size // stride)


def _block_counts(stage: StageSpec, cin: int, h: int, w: int, stride: int) -> tuple[int, int, int, int, list]:
    """MACs, parameters, output size and output-activation sizes of one block of ``stage``
    on a ``cin`` x ``h`` x ``w`` input (conv weights and BN affine pairs; SE biases)."""
    ho, wo = _conv_out(h, stride), _conv_out(w, stride)
    k2, out = stage.kernel ** 2, stage.out_chs
    macs = params = 0
    acts: list = []

    def conv(ci: int, co: int, kk: int, hh: int, ww: int, groups: int = 1) -> None:
        nonlocal macs, params
        macs += ci // groups * co * kk * hh * ww
        params += ci // groups * co * kk + 2 * co              # weight + BN weight/bias
        acts.append(co * hh * ww)

    if stage.block is BlockType.BOTTLENECK:
        inner = stage.inner_chs
        conv(cin, inner, 1, h, w)                                # reduce 1x1
        conv(inner, inner, k2, ho, wo)                           # 3x3 (stride here)
        conv(inner, out, 1, ho, wo)                              # restore 1x1
        if stride != 1 or cin != out:
            conv(cin, out, 1, ho, wo)                            # projection shortcut
    elif stage.block is BlockType.DEPTHWISE_SEPARABLE:
        conv(cin, cin, k2, ho, wo, groups=cin)                   # depthwise kxk
        conv(cin, out, 1, ho, wo)                                # pointwise 1x1
    else:
        mid = cin * stage.expand_ratio
        if stage.block is BlockType.MBCONV:
            if stage.expand_ratio != 1:
                conv(cin, mid, 1, h, w)                          # expand 1x1
            conv(mid, mid, k2, ho, wo, groups=mid)               # depthwise kxk
        else:
            mid = mid if stage.expand_ratio != 1 else out
            conv(cin, mid, k2, ho, wo)                           # fused kxk
        if stage.se_ratio > 0:
            rd = se_channels(cin, stage.se_ratio)
            macs += 2 * mid * rd                                 # SE reduce + expand (1x1 pooled)
            params += 2 * mid * rd + rd + mid
        if stage.block is BlockType.MBCONV or stage.expand_ratio != 1:
            conv(mid, out, 1, ho, wo)                            # project 1x1
    return macs, params, ho, wo, acts


def _network_counts(spec: NetworkSpec, resolution, num_classes: int, in_chans: int) -> tuple[int, int, list]:
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    h, w = _conv_out(h, spec.stem_stride), _conv_out(w, spec.stem_stride)
    macs = in_chans * spec.stem_chs * spec.stem_kernel ** 2 * h * w
    params = in_chans * spec.stem_chs * spec.stem_kernel ** 2 + 2 * spec.stem_chs
    acts = [spec.stem_chs * h * w]
    if spec.stem_pool:
        h, w = _conv_out(h, 2), _conv_out(w, 2)
        acts.append(spec.stem_chs * h * w)
    cin = spec.stem_chs
    for stage in spec.stages:
        for j in range(stage.repeats):
            m, p, h, w, a = _block_counts(stage, cin, h, w, stage.stride if j == 0 else 1)
            macs, params, cin = macs + m, params + p, stage.out_chs
            acts.extend(a)
    if spec.head_chs:
        macs += cin * spec.head_chs * h * w                      # head 1x1
        params += cin * spec.head_chs + 2 * spec.head_chs
        acts.append(spec.head_chs * h * w)
    macs += spec.num_features * num_classes                      # classifier
    params += (spec.num_features + 1) * num_classes if num_classes else 0
    return int(macs), int(params), acts


def estimate_macs(spec: NetworkSpec, resolution: int | tuple[int, int], num_classes: int = 1000,
                  in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass of a (scaled) network, counted analytically.

    Counts convolutions and the classifier (the ops torch.utils.flop_counter counts);
    BN, activations, pooling, SE gating and residual adds are not MACs. Agrees with
    :func:`effnet.analysis.count_macs` on the built model (tested).

    Args:
        spec: a network with concrete channels (e.g. from :func:`scale_network`).
        resolution: input size in pixels, an int for square or (height, width).
        num_classes: classifier outputs (0 for none).
        in_chans: input image channels.

    Returns:
        MACs (int) for a batch of one image.
    """
    return _network_counts(spec, resolution, num_classes, in_chans)[0]


def estimate_params(spec: NetworkSpec, num_classes: int = 1000, in_chans: int = 3) -> int:
    """Parameters of a (scaled) network without building it: conv weights, BatchNorm
    weight and bias, SE and classifier biases (BN running statistics are buffers, not
    parameters). Equal to ``sum(p.numel() for p in model.parameters())`` (tested)."""
    return _network_counts(spec, 32, num_classes, in_chans)[1]


def estimate_activations(spec: NetworkSpec, resolution: int | tuple[int, int], in_chans: int = 3) -> int:
    """Elements of every conv/BN output of one image's forward pass (float32: x4 bytes).

    What training keeps for the backward pass is a small multiple of this (each conv's
    output, its BN output and activation); inference needs about the two largest.
    """
    return int(sum(_network_counts(spec, resolution, 0, in_chans)[2]))


def scale_to_budget(target_macs: float, base: NetworkSpec = EFFICIENTNET_B0,
                    alpha: float = PAPER_ALPHA, beta: float = PAPER_BETA, gamma: float = PAPER_GAMMA,
                    base_resolution: int = 224, num_classes: int = 1000,
                    tolerance: float = 1e-3) -> tuple[float, Scaling, int]:
    """Find the largest compound coefficient ``phi`` whose scaled network fits a MACs budget.

    Bisection on ``phi`` over :func:`estimate_macs` of ``scale_network(base, compound(phi))``
    at the scaled resolution (paper Section 3.3, step 2, run backwards from a budget).

    Args:
        target_macs: the budget in MACs per image (e.g. ``1.8e9``).
        base: the baseline table (B0 by default).
        alpha, beta, gamma: scaling bases (the paper's by default).
        base_resolution: the baseline's input size in pixels.
        num_classes: classifier outputs counted in the budget.
        tolerance: bisection stops when the bracket on ``phi`` is narrower than this.

    Returns:
        ``(phi, scaling, macs)``: the coefficient, its :class:`Scaling`, and the MACs of the
        network it produces (``<= target_macs``).

    Raises:
        ValueError: if the budget is below the MACs of ``phi = -4`` (a sixteenth of the
            baseline: no meaningful network fits), or not positive.
    """
    target_macs = check_float("target_macs", target_macs, 0.0, low_open=True)

    def macs_at(phi: float) -> tuple[int, Scaling]:
        s = compound(phi, alpha, beta, gamma, base_resolution)
        return estimate_macs(scale_network(base, s), s.resolution, num_classes), s

    lo, hi = -4.0, 0.0
    if macs_at(lo)[0] > target_macs:
        raise ValueError(f"target_macs {target_macs:.3g} is below the smallest network tried "
                         f"(phi={lo}: {macs_at(lo)[0]:.3g} MACs)")
    while macs_at(hi)[0] <= target_macs:
        lo, hi = hi, hi + 1.0
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if macs_at(mid)[0] <= target_macs:
            lo = mid
        else:
            hi = mid
    macs, s = macs_at(lo)
    return lo, s, macs


# The default search grid of step 1 (issue 13): the paper gives no grid, only its winner
# (1.2, 1.1, 1.15); these ranges hold it with room on every side. (start, stop, step), stop
# included.
GRID_ALPHA = (1.0, 1.4, 0.05)
GRID_BETA = (1.0, 1.3, 0.05)
GRID_GAMMA = (1.0, 1.3, 0.05)
# The most values one axis of the grid may have, and the most (alpha, beta, gamma) points the
# whole grid may have: each point's product is computed (~0.5 s per million in Python), so
# three fine axes (1:2:0.0002 is 5,001 values, 1.25e11 points) are refused before anything
# is built instead of running out of memory.
MAX_GRID_AXIS = 10_000
MAX_GRID_POINTS = 1_000_000


def _grid_count(start: float, stop: float, step: float) -> tuple[float, float, float, int]:
    """The checked ``(start, stop, step)`` of one axis and its number of values, nothing built."""
    start = check_float("grid start", start, 0.0, low_open=True)
    stop = check_float("grid stop", stop, 0.0, low_open=True)
    step = check_float("grid step", step, 0.0, low_open=True)
    if stop < start:
        raise ValueError(f"grid stop {stop:g} is below its start {start:g}; write start:stop:step with start <= stop")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if n > MAX_GRID_AXIS:
        raise ValueError(f"grid {start:g}:{stop:g}:{step:g} has {n} values, more than {MAX_GRID_AXIS:,}; "
                         f"use a larger step or a narrower range")
    return start, stop, step, n


def grid_values(start: float, stop: float, step: float) -> tuple[float, ...]:
    """``start, start + step, ..., stop`` (``stop`` included when on the grid), each rounded to
    9 decimals so that 1.0 + 4 * 0.05 is exactly 1.2.

    Raises:
        ValueError: a bound not positive and finite, ``stop < start``, ``step <= 0`` (a
            single value is ``start == stop``, any step), or more than :data:`MAX_GRID_AXIS`
            values.
    """
    start, stop, step, n = _grid_count(start, stop, step)
    return tuple(round(start + i * step, 9) for i in range(n))


def _tolerance_hint(gap: float) -> str:
    """The smallest tolerance, rounded UP to 3 decimals (3 significant digits below 0.001),
    that admits a point ``gap`` from the target, as text that parses back to that value."""
    decimals = 3 if gap >= 1e-3 else 2 - math.floor(math.log10(gap))
    scale = 10 ** decimals
    units = math.ceil(gap * scale)
    while units / scale + 1e-12 < gap:                       # float rounding of gap * scale
        units += 1
    return f"{units / scale:.{decimals}f}".rstrip("0").rstrip(".")


def flops_factor(alpha: float, beta: float, gamma: float) -> float:
    """``alpha * beta**2 * gamma**2``: how much FLOPs grow per unit of ``phi`` (paper Eq. 3:
    FLOPs scale linearly with depth and quadratically with width and resolution)."""
    return alpha * beta ** 2 * gamma ** 2


def _spread(points: list[tuple[float, float, float]], n: int, first: int) -> list[tuple[float, float, float]]:
    """``n`` of ``points`` spread over them: farthest-point sampling from ``points[first]``,
    distances measured in units of each axis's range (ties go to the earlier point)."""
    lows = [min(p[i] for p in points) for i in range(3)]
    spans = [max(p[i] for p in points) - lows[i] or 1.0 for i in range(3)]
    unit = [tuple((p[i] - lows[i]) / spans[i] for i in range(3)) for p in points]
    chosen = [first]
    nearest = [math.dist(u, unit[first]) for u in unit]
    while len(chosen) < n:
        best = max(range(len(points)), key=lambda j: (nearest[j], -j))
        chosen.append(best)
        nearest = [min(d, math.dist(u, unit[best])) for d, u in zip(nearest, unit)]
    return [points[j] for j in sorted(chosen)]


def candidate_grid(alpha: tuple[float, float, float] = GRID_ALPHA, beta: tuple[float, float, float] = GRID_BETA,
                   gamma: tuple[float, float, float] = GRID_GAMMA, target: float = 2.0, tolerance: float = 0.1,
                   max_trials: Optional[int] = None) -> list[tuple[float, float, float]]:
    """The (alpha, beta, gamma) candidates of the grid search of paper Section 3.3, step 1.

    Every point of the ``alpha x beta x gamma`` grid (each a ``(start, stop, step)`` triple,
    stop included) whose :func:`flops_factor` is within ``tolerance`` of ``target``
    (``|alpha * beta**2 * gamma**2 - target| <= tolerance``): at ``phi = 1`` each scales the
    baseline's FLOPs by about ``target``.

    Args:
        max_trials: keep only this many, spread over the candidates by farthest-point
            sampling (each axis normalised to its range), starting from the paper's
            (1.2, 1.1, 1.15) when it is a candidate, else from the one nearest ``target``.

    Returns:
        Sorted ``(alpha, beta, gamma)`` tuples (floats rounded to 9 decimals).

    Raises:
        ValueError: a malformed range, ``target``/``tolerance`` not positive, ``max_trials``
            below 1, a grid of more than :data:`MAX_GRID_POINTS` points (checked from the
            axes' lengths before any point is built), or no grid point within the tolerance
            (the message gives the closest point and its product, and a tolerance, rounded
            up, that admits it).
    """
    target = check_float("target", target, 0.0, low_open=True)
    tolerance = check_float("tolerance", tolerance, 0.0)
    if max_trials is not None:
        max_trials = check_int("max_trials", max_trials, 1)
    counts = [_grid_count(*r)[3] for r in (alpha, beta, gamma)]
    if math.prod(counts) > MAX_GRID_POINTS:
        raise ValueError(f"the alpha x beta x gamma grid has {counts[0]:,} x {counts[1]:,} x {counts[2]:,} = "
                         f"{math.prod(counts):,} points, more than {MAX_GRID_POINTS:,}; use larger steps or "
                         f"narrower ranges (max_trials, --max-trials of effnet search, does not help: it picks among "
                         f"the points within the tolerance after the whole grid is built)")
    axes = [grid_values(*r) for r in (alpha, beta, gamma)]
    inside = [p for p in itertools.product(*axes) if abs(flops_factor(*p) - target) <= tolerance + 1e-12]
    if not inside:
        a, b, g = min(itertools.product(*axes), key=lambda p: abs(flops_factor(*p) - target))
        gap = abs(flops_factor(a, b, g) - target)
        raise ValueError(f"no grid point has alpha * beta^2 * gamma^2 within {tolerance:g} of {target:g}: the "
                         f"closest is alpha={a:g}, beta={b:g}, gamma={g:g} with {flops_factor(a, b, g):.4f} "
                         f"(off by {gap:.4g}); widen the grid or use a tolerance of at least {_tolerance_hint(gap)}")
    if max_trials is None or max_trials >= len(inside):
        return inside
    paper = (PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA)
    first = inside.index(paper) if paper in inside else min(
        range(len(inside)), key=lambda j: abs(flops_factor(*inside[j]) - target))
    return _spread(inside, max_trials, first)
