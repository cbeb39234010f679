"""Model analysis: parameter counts and MACs (torch.utils.flop_counter).

Counting runs on the ``meta`` device when asked, so even EfficientNet-L2 at 800 px is
counted in a fraction of a second without allocating its weights or activations.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs", "model_stats"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: int | tuple[int, int], in_chans: int | None = None,
               batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass, from torch.utils.flop_counter (MACs = FLOPs / 2).

    flop_counter counts convolutions and matrix products (the classifier), which is the
    convention of paper Table 2; BN, activations, pooling and elementwise ops add none.

    Args:
        model: the network, on any device including ``meta``.
        input_size: input side in pixels (square) or (height, width).
        in_chans: input channels (default: ``model.in_chans`` or 3).
        batch_size: images per forward pass; the result is for the whole batch.

    Returns:
        MACs as an int.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    chans = in_chans or getattr(model, "in_chans", 3)
    ref = next(model.parameters())
    x = torch.zeros(batch_size, chans, h, w, device=ref.device, dtype=ref.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def model_stats(name: str, num_classes: int = 1000) -> dict:
    """Params and MACs at the native resolution of a registered model, counted on ``meta``.

    Returns:
        ``{"name", "params", "macs", "input_size"}`` (params and MACs as ints).
    """
    from .registry import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    size = model.config.input_size
    return dict(name=name, params=count_params(model), macs=count_macs(model, size), input_size=size)
