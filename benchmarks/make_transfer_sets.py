"""Build the two extra small real photo sets of the fine-tuning benchmark from git snapshots of
the public repositories they come from (benchmarks/README.md, "Fine-tuning the ImageNet Lite0").

- ``lemur6``: BenHawcroft/Primate-Conservation-Neural-Network at 86b0659502da9ee8ce23ab2ef058c19451f68260,
  ``training/training/n0..n5`` and ``validation/validation/n0..n5`` as they are (305 train /
  113 val web photos of six lemur species, median 408 px, most not square), the class folders
  named after ``monkey_labels.txt``'s common names.
- ``flowers5``: martinwestin/flower_classification at c169e7e (the TensorFlow flower_photos
  classes daisy, dandelion, rose, sunflower, tulip as 128 x 128 thumbnails, 4,317 files):
  per class the 100 files first in sha256-of-path order, 60 to train/ and 40 to val/.

    python benchmarks/make_transfer_sets.py --lemurs GIT_DIR --flowers GIT_DIR --out DIR

``GIT_DIR`` is a clone (or bare git directory) of each repository. Nothing is downloaded here.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

from effnet._io import atomic_write

LEMURS = {"n0": "blue_eyed_black_lemur", "n1": "indri", "n2": "madame_berthes_mouse_lemur",
          "n3": "northern_sportive_lemur", "n4": "red_ruffed_lemur", "n5": "silky_sifaka"}
LEMUR_COMMIT = "86b0659502da9ee8ce23ab2ef058c19451f68260"
FLOWERS_COMMIT = "c169e7e"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _members(git_dir: str, commit: str, *paths: str) -> tarfile.TarFile:
    tar = subprocess.run(["git", "-C", git_dir, "archive", commit, *paths], capture_output=True, check=True).stdout
    return tarfile.open(fileobj=io.BytesIO(tar))


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / Path(member.name).name, tar.extractfile(member).read())


def lemur6(git_dir: str, out: Path) -> None:
    splits = {"training/training": "train", "validation/validation": "val"}
    with _members(git_dir, LEMUR_COMMIT, *splits) as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES):
                _write(tar, m, out / splits["/".join(parts[:2])] / LEMURS[parts[2]])


def flowers5(git_dir: str, out: Path, train: int = 60, val: int = 40) -> None:
    with _members(git_dir, FLOWERS_COMMIT, "flowers") as tar:
        by_class: dict = {}
        for m in tar.getmembers():
            if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES):
                by_class.setdefault(Path(m.name).parts[1], []).append(m)
        for name, members in sorted(by_class.items()):
            members.sort(key=lambda m: hashlib.sha256(m.name.encode()).hexdigest())
            for m in members[:train]:
                _write(tar, m, out / "train" / name)
            for m in members[train:train + val]:
                _write(tar, m, out / "val" / name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lemurs", required=True, help="git directory of BenHawcroft/Primate-Conservation-Neural-Network")
    p.add_argument("--flowers", required=True, help="git directory of martinwestin/flower_classification")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    for name in ("lemur6", "flowers5"):
        if (out / name).exists():
            raise SystemExit(f"error: {out / name} exists; remove it or give another --out")
    lemur6(args.lemurs, out / "lemur6")
    flowers5(args.flowers, out / "flowers5")
    for name in ("lemur6", "flowers5"):
        counts = {s: sum(1 for f in (out / name / s).rglob("*") if f.is_file()) for s in ("train", "val")}
        print(f"{out / name}: {counts['train']} train, {counts['val']} val photos")


if __name__ == "__main__":
    main()
