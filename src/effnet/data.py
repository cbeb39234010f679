"""Image decoding and eval preprocessing.

The eval transform reproduces torchvision's ``Resize(short side) -> CenterCrop -> ToTensor
-> Normalize`` on Pillow images (the pipeline of timm, torchvision and
EfficientNet-PyTorch) with Pillow alone, so the same pixels come out without torchvision.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

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
    "ImageDataset",
    "collate_skip",
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


# ---- datasets ---------------------------------------------------------------------------------

class ImageDataset(torch.utils.data.Dataset):
    """Labelled image files, decoded and transformed on access (in DataLoader workers).

    An unreadable image does not raise: its item carries ``None`` in place of the tensor
    and :func:`collate_skip` drops it and reports its path, so a run counts and names
    corrupt files instead of crashing.

    Args:
        samples: (path, class index) pairs.
        transform: Pillow image -> tensor (e.g. :func:`eval_transform`).
        classes: class names by index, when known.

    Items: ``(tensor (3, H, W) float32 or None, label int, path str)``.
    """

    def __init__(self, samples: List[Tuple[Path, int]], transform: Callable[[Image.Image], torch.Tensor],
                 classes: Optional[List[str]] = None) -> None:
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.transform = transform
        self.classes = classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            return self.transform(load_image(path)), label, str(path)
        except (ImageDecodeError, FileNotFoundError):
            return None, label, str(path)

    @classmethod
    def from_folder(cls, root: Union[str, os.PathLike], transform: Callable, classes: Optional[List[str]] = None
                    ) -> "ImageDataset":
        """Images under ``root/<class>/`` (any depth); classes are the sorted folder names.

        Raises:
            FileNotFoundError: ``root`` missing, or it holds no class folder with images.
        """
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        names = classes or sorted(d.name for d in root.iterdir() if d.is_dir())
        samples = [(f, i) for i, c in enumerate(names) if (root / c).is_dir()
                   for f in sorted((root / c).rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS]
        if not samples:
            raise FileNotFoundError(f"{root} has no images in class subfolders (expected {root}/<class>/<image>)")
        return cls(samples, transform, names)

    @classmethod
    def from_csv(cls, csv_path: Union[str, os.PathLike], transform: Callable,
                 root: Optional[Union[str, os.PathLike]] = None) -> "ImageDataset":
        """Images listed in a CSV with ``file`` and ``class_index`` columns (a header row).

        File names are resolved against ``root`` (default: the CSV's folder), then
        ``root/images``.

        Raises:
            ValueError: the CSV lacks those columns.
        """
        csv_path = Path(csv_path)
        base = Path(root) if root is not None else csv_path.parent
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"file", "class_index"} <= set(rows[0]):
            raise ValueError(f"{csv_path} needs a header with 'file' and 'class_index' columns")
        samples = []
        for r in rows:
            p = base / r["file"]
            if not p.exists() and (base / "images" / r["file"]).exists():
                p = base / "images" / r["file"]
            samples.append((p, int(r["class_index"])))
        return cls(samples, transform)


def collate_skip(batch):
    """Collate ``ImageDataset`` items, dropping unreadable ones.

    Returns:
        ``(images (N, 3, H, W) or None, labels (N,) int64, skipped paths list)``.
    """
    good = [b for b in batch if b[0] is not None]
    skipped = [b[2] for b in batch if b[0] is None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), skipped
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]), skipped
