"""Top-1 / top-5 evaluation of a classifier over a labelled image dataset."""

from __future__ import annotations

import time
import warnings
from typing import Dict, Union

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import ImageDataset, collate_skip

__all__ = ["evaluate"]


@torch.inference_mode()
def evaluate(model: nn.Module, data: Union[ImageDataset, DataLoader], batch_size: int = 32, workers: int = 2,
             progress: bool = True, device: Union[str, torch.device] = "cpu") -> Dict[str, float]:
    """Accuracy of ``model`` on ``data`` in eval mode.

    Args:
        model: a classifier, (N, 3, H, W) -> (N, num_classes) logits.
        data: an :class:`ImageDataset` (a DataLoader with ``workers`` processes is made) or a
            DataLoader yielding :func:`collate_skip` batches.
        batch_size: images per forward pass.
        workers: DataLoader worker processes decoding images (0 = in this process).
        progress: show a tqdm bar with running top-1 and images/s.
        device: where to run the model.

    Returns:
        ``{"top1", "top5" (percent), "images", "skipped", "images_per_s", "seconds"}``;
        images/s counts decode, preprocessing and the forward pass together.
    """
    if isinstance(data, ImageDataset):
        data = DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip)
    was_training = model.training
    model.eval()
    correct1 = correct5 = seen = 0
    skipped = []
    start = time.perf_counter()
    bar = tqdm(data, desc="evaluate", unit="batch", disable=not progress, leave=False)
    try:
        for x, y, bad in bar:
            skipped += bad
            if x is None:
                continue
            logits = model(x.to(device)).float().cpu()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(dim=1).sum().item()
            seen += len(y)
            elapsed = time.perf_counter() - start
            bar.set_postfix(top1=f"{100 * correct1 / seen:.2f}", img_s=f"{seen / elapsed:.1f}")
    finally:
        model.train(was_training)
    for reason in skipped:
        warnings.warn(f"skipped: {reason}")
    seconds = time.perf_counter() - start
    return dict(top1=100.0 * correct1 / max(seen, 1), top5=100.0 * correct5 / max(seen, 1), images=seen,
                skipped=len(skipped), images_per_s=seen / seconds if seconds > 0 else 0.0, seconds=seconds)
