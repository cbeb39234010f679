"""Training-time augmentation with kornia, on whole batches (on the GPU when there is one).

DataLoader workers only decode and bring each image to a fixed square of uint8 pixels
(:func:`train_decode`); RandomResizedCrop, flip and AutoAugment/RandAugment then run on the
batch as tensors in the training process (:class:`TrainAugment`).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from torch import nn

__all__ = ["train_decode", "TrainAugment"]

# kornia's RandAugment takes m strictly inside (0, 30); 30 would be each op's full range.
KORNIA_MAX_M = 29.99


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
        augment: ``autoaugment``, ``randaugment`` (n=2, m=9 on kornia's 0..30 scale) or ``none``.
        crop_scale: RandomResizedCrop area range (0.08..1 in the Inception/paper recipe).
        magnitude: RandAugment magnitude on the TF scale of the EfficientNet papers and their
            code (tensorflow/tpu autoaugment.py ``_MAX_LEVEL = 10``: 10 is each op's full
            range), mapped to kornia's scale (m / 30 of the range) as ``3 * magnitude``. TF
            extrapolates beyond level 10 (V2's Table 6 goes to 25); kornia cannot, so those
            are clipped just below its full range. 0 turns RandAugment off. None: m = 9.

    Shapes: uint8 (N, 3, S, S) -> float32 (N, 3, size, size), normalised. Randomness comes
    from torch's global generator, so a seeded run (and an exact resume) repeats it.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], augment: str = "autoaugment",
                 crop_scale: tuple[float, float] = (0.08, 1.0), magnitude: Optional[float] = None) -> None:
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import AutoAugment, RandAugment

        self.size = int(size)
        self.crop = K.RandomResizedCrop((size, size), scale=crop_scale, ratio=(3 / 4, 4 / 3))
        self.flip = K.RandomHorizontalFlip()
        if augment == "autoaugment":
            self.policy: nn.Module = AutoAugment("imagenet")
        elif augment == "randaugment" and magnitude is not None:
            m = min(3.0 * float(magnitude), KORNIA_MAX_M)
            self.policy = RandAugment(n=2, m=m) if m > 0 else nn.Identity()
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
