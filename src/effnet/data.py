"""Image decoding and eval preprocessing.

The eval transform reproduces torchvision's ``Resize(short side) -> CenterCrop -> ToTensor
-> Normalize`` on Pillow images (the pipeline of timm, torchvision and
EfficientNet-PyTorch) with Pillow alone, so the same pixels come out without torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .registry import ModelConfig, PreprocessConfig

__all__ = [
    "ImageDecodeError",
    "IMAGE_EXTENSIONS",
    "data_dir",
    "load_image",
    "resize_shorter_side",
    "center_crop",
    "to_tensor",
    "eval_transform",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class ImageDecodeError(ValueError):
    """An image file could not be read or decoded (not an image, corrupt or truncated)."""


def data_dir() -> Path:
    """The shared data folder: ``$EFFNET_DATA``, default ``../shared/data`` from the working directory."""
    return Path(os.environ.get("EFFNET_DATA", "../shared/data")).expanduser()


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Decode an image file to an RGB Pillow image.

    The EXIF orientation is applied; grayscale, palette, CMYK and alpha images are
    converted with ``Image.convert("RGB")`` (what timm and torchvision loaders do).

    Raises:
        FileNotFoundError: no such file.
        ImageDecodeError: the file is not an image Pillow can read, or is truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"cannot decode image {path}: {e}. The file is not an image Pillow can read, "
                               f"or it is truncated or corrupt; re-export or remove it.") from e


def resize_shorter_side(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is ``size`` pixels, keeping the aspect ratio.

    The longer side becomes ``int(size * long / short)`` (torchvision's rounding); an image
    already at that size is returned unchanged.
    """
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {sorted(_PIL_FILTERS)}")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), _PIL_FILTERS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` pixels (offsets rounded as torchvision does).

    Raises:
        ValueError: the image is smaller than the crop.
    """
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size}x{size} crop")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB uint8 image (H, W, 3) -> normalised float32 tensor (3, H, W): ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s


def eval_transform(config: Union[PreprocessConfig, ModelConfig]) -> Callable[[Image.Image], torch.Tensor]:
    """The eval preprocessing of a model or weight: resize, center crop, normalise.

    Args:
        config: a :class:`PreprocessConfig` or a :class:`ModelConfig` (its ``preprocess``).

    Returns:
        A function from an RGB Pillow image to a float32 tensor (3, input_size, input_size).
    """
    pre = config.preprocess if isinstance(config, ModelConfig) else config

    def transform(img: Image.Image) -> torch.Tensor:
        img = resize_shorter_side(img, pre.resize_size, pre.interpolation)
        return to_tensor(center_crop(img, pre.input_size), pre.mean, pre.std)

    return transform
