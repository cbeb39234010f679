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

import math
from dataclasses import dataclass, replace

from ._validate import check_float, check_int
from .specs import EFFICIENTNET_B0, BlockType, NetworkSpec

__all__ = [
    "Scaling",
    "EFFICIENTNET_SCALING",
    "LITE_SCALING",
    "PAPER_ALPHA",
    "PAPER_BETA",
    "PAPER_GAMMA",
    "round_filters",
    "round_repeats",
    "se_channels",
    "compound",
    "scale_network",
    "estimate_macs",
    "scale_to_budget",
]

# Paper Section 3.3, step 1: grid search under alpha * beta^2 * gamma^2 ~= 2.
PAPER_ALPHA = 1.2
PAPER_BETA = 1.1
PAPER_GAMMA = 1.15


@dataclass(frozen=True)
class Scaling:
    """Scaling coefficients of one model.

    Attributes:
        width: channel multiplier (``w`` in paper Eq. 3; ``width_coefficient`` officially).
        depth: repeats multiplier (``d``; ``depth_coefficient``).
        resolution: input size in pixels (square side).
        dropout: dropout rate before the classifier.
    """

    width: float
    depth: float
    resolution: int
    dropout: float

    def __post_init__(self) -> None:
        """Raises TypeError (not a number) or ValueError (NaN, infinite, out of range), naming the field."""
        check_float("Scaling.width", self.width, 0.0, low_open=True)
        check_float("Scaling.depth", self.depth, 0.0, low_open=True)
        check_int("Scaling.resolution", self.resolution, 1)
        check_float("Scaling.dropout", self.dropout, 0.0, 1.0, high_open=True)


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
             gamma: float = PAPER_GAMMA, base_resolution: int = 224,
             dropout: float = 0.2) -> Scaling:
    """Coefficients of paper Eq. 3 for compound coefficient ``phi`` (any real, fractional too).

    Args:
        phi: compound coefficient; 0 is the baseline, each +1 roughly doubles FLOPs when
            ``alpha * beta**2 * gamma**2 == 2``.
        alpha, beta, gamma: depth, width and resolution bases (paper: 1.2, 1.1, 1.15).
        base_resolution: the baseline's input size in pixels (224 for B0).
        dropout: dropout rate to attach (the paper gives no rule for it; the official
            variants step from 0.2 to 0.5 as they grow).

    Returns:
        ``Scaling(width=beta**phi, depth=alpha**phi, resolution=round(base_resolution * gamma**phi))``.

    Raises:
        TypeError: a non-numeric argument.
        ValueError: ``phi`` NaN or infinite, a base not positive, or a ``phi`` so large the
            multipliers overflow or vanish.
    """
    phi = check_float("phi", phi)
    alpha = check_float("alpha", alpha, 0.0, low_open=True)
    beta = check_float("beta", beta, 0.0, low_open=True)
    gamma = check_float("gamma", gamma, 0.0, low_open=True)
    base_resolution = check_int("base_resolution", base_resolution, 1)
    for name, base in (("depth alpha**phi", alpha), ("width beta**phi", beta), ("resolution gamma**phi", gamma)):
        try:
            value = base ** phi
        except OverflowError:
            value = math.inf
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"compound(phi={phi:g}): {name} = {value:g} is not a usable positive finite "
                             f"multiplier; use a smaller |phi|")
    return Scaling(
        width=beta ** phi,
        depth=alpha ** phi,
        resolution=max(1, int(round(base_resolution * gamma ** phi))),
        dropout=dropout,
    )


def scale_network(spec: NetworkSpec, scaling: Scaling, divisor: int = 8) -> NetworkSpec:
    """Apply width and depth scaling to a baseline table.

    Widths go through :func:`round_filters`, repeats through :func:`round_repeats`. Stem and
    head widths, and the first and last stages' repeats, stay as they are when the spec says
    so (EfficientNet-Lite). SE ratios are relative to a block's input channels, so they
    need no scaling. The returned spec has concrete channels and repeats and no further
    scaling flags.
    """
    width, depth = scaling.width, scaling.depth
    last = len(spec.stages) - 1
    stages = []
    for i, stage in enumerate(spec.stages):
        fixed_repeats = not spec.scale_first_last_repeats and i in (0, last)
        stages.append(replace(
            stage,
            out_chs=round_filters(stage.out_chs, width, divisor),
            repeats=stage.repeats if fixed_repeats else round_repeats(stage.repeats, depth),
        ))
    if spec.scale_stem_head:
        stem, head = round_filters(spec.stem_chs, width, divisor), round_filters(spec.head_chs, width, divisor)
    else:
        stem, head = spec.stem_chs, spec.head_chs
    return replace(spec, stem_chs=stem, stages=tuple(stages), head_chs=head,
                   scale_stem_head=True, scale_first_last_repeats=True)


def _conv_out(size: int, stride: int) -> int:
    # Both SAME and symmetric k//2 padding give ceil(size / stride) for odd kernels.
    return -(-size // stride)


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
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    h, w = _conv_out(h, spec.stem_stride), _conv_out(w, spec.stem_stride)
    macs = in_chans * spec.stem_chs * spec.stem_kernel ** 2 * h * w
    cin = spec.stem_chs
    for stage in spec.stages:
        for j in range(stage.repeats):
            stride = stage.stride if j == 0 else 1
            ho, wo = _conv_out(h, stride), _conv_out(w, stride)
            mid = cin * stage.expand_ratio
            k2 = stage.kernel ** 2
            if stage.block is BlockType.MBCONV:
                if stage.expand_ratio != 1:
                    macs += cin * mid * h * w            # expand 1x1
                macs += mid * k2 * ho * wo               # depthwise kxk
            else:
                macs += cin * mid * k2 * ho * wo         # fused expand kxk
            if stage.se_ratio > 0:
                macs += 2 * mid * se_channels(cin, stage.se_ratio)   # SE reduce + expand (1x1 pooled)
            if stage.block is BlockType.MBCONV or stage.expand_ratio != 1:
                macs += mid * stage.out_chs * ho * wo    # project 1x1
            cin, h, w = stage.out_chs, ho, wo
    macs += cin * spec.head_chs * h * w                  # head 1x1
    macs += spec.head_chs * num_classes                  # classifier
    return int(macs)


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
