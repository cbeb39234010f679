"""Training-time augmentation with kornia, on whole batches (on the GPU when there is one).

DataLoader workers only decode and bring each image to a fixed square of uint8 pixels
(:func:`train_decode`); RandomResizedCrop, flip and AutoAugment/RandAugment then run on the
batch as tensors in the training process (:class:`TrainAugment`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torch import nn

__all__ = ["train_decode", "TrainAugment"]


def train_decode(size: int, interpolation: str = "bicubic") -> Callable[[Image.Image], torch.Tensor]:
    """Worker-side step: resize the shorter side to ``size / 0.875`` and take the central square.

    Returns a :class:`effnet.data.ResizeCropTransform`: RGB Pillow image -> uint8 tensor
    (3, S, S), S = round(size / 0.875), so that batches stack and RandomResizedCrop still
    sees most of each image. It resizes in bounded memory (any aspect ratio) and carries
    ``decode_size = S``, so :class:`effnet.data.ImageDataset` decodes big JPEGs at reduced
    scale and refuses oversized images through the one decoder, :func:`effnet.data.load_image`.
    """
    from ..data import ResizeCropTransform

    side = int(round(size / 0.875))
    return ResizeCropTransform(side, side, interpolation)


class TrainAugment(nn.Module):
    """RandomResizedCrop -> horizontal flip -> AutoAugment (ImageNet policy) or RandAugment -> normalise.

    Args:
        size: output side in pixels.
        mean, std: the model's input normalisation (its weights' preprocessing), RGB in [0, 1].
        augment: ``autoaugment``, ``randaugment`` (n=2, m=9) or ``none``.
        crop_scale: RandomResizedCrop area range (0.08..1 in the Inception/paper recipe).

    Shapes: uint8 (N, 3, S, S) -> float32 (N, 3, size, size), normalised. Randomness comes
    from torch's global generator, so a seeded run (and an exact resume) repeats it.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], augment: str = "autoaugment",
                 crop_scale: tuple[float, float] = (0.08, 1.0)) -> None:
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import AutoAugment, RandAugment

        self.crop = K.RandomResizedCrop((size, size), scale=crop_scale, ratio=(3 / 4, 4 / 3))
        self.flip = K.RandomHorizontalFlip()
        if augment == "autoaugment":
            self.policy: nn.Module = AutoAugment("imagenet")
        elif augment == "randaugment":
            self.policy = RandAugment(n=2, m=9)
        elif augment == "none":
            self.policy = nn.Identity()
        else:
            raise ValueError(f"augment must be autoaugment, randaugment or none, got {augment!r}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)
        x = self.policy(self.flip(self.crop(x))).clamp_(0.0, 1.0)
        return (x - self.mean) / self.std
