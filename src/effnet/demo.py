"""Data for ``make demo``: the ants/bees set and the EfficientNet-Lite0 backbone.

From the shared data folder (``$EFFNET_DATA``) when it is there; otherwise the public
ants/bees archive of the PyTorch transfer-learning tutorial and the official Lite0 archive
are downloaded into the effnet cache (hash prefix / format checked, atomic, reused): the
zip is admitted only if it reads as a complete zip archive, the Lite archive only as a
complete .tar.gz with a well-formed TFLite graph (it has no published hash).

``python -m effnet.demo data`` prints the dataset folder, ``... weights`` the weight file.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from .data import data_dir
from .registry import get_weight_source
from .weights import cache_dir, fetch

__all__ = ["HYMENOPTERA_URL", "demo_data", "demo_weights"]

# The archive the PyTorch transfer-learning tutorial downloads (train/val, ants/bees).
HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
SHARED_TFLITE = "weights/efficientnet-lite0_int8_modelmaker_3class.tflite"


def _check_zip(path: Path) -> None:
    """Raise unless ``path`` is a complete zip archive whose members' CRCs hold."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"member {bad} fails its CRC check")


def demo_data() -> Path:
    """The ants/bees folder (with train/ and val/), downloading it if the shared copy is absent."""
    shared = data_dir() / "finetune" / "hymenoptera_data"
    if (shared / "train").is_dir():
        return shared
    target = cache_dir().parent / "data" / "hymenoptera_data"
    if not (target / "train").is_dir():
        archive = fetch(HYMENOPTERA_URL, check=_check_zip)
        with zipfile.ZipFile(archive) as z:
            z.extractall(target.parent)
    return target


def demo_weights() -> Path:
    """The Lite0 backbone: the shared int8 TFLite file, else the official Lite0 archive."""
    shared = data_dir() / SHARED_TFLITE
    if shared.is_file():
        return shared
    source = get_weight_source("tf_efficientnet_lite0", "tflite")
    return fetch(source.url, sha256=source.sha256)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "data"
    print(demo_data() if what == "data" else demo_weights())
