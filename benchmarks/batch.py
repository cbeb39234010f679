"""Batch inference: `effnet predict-batch` (Ray Data, and in-process) against `effnet predict`, one run.

1. The 304 shared ImageNet photos, hard-linked ``--repeat`` times (3,040 files by default)
   into one folder tree. Each command classifies all of them with tf_efficientnet_lite0
   (real ImageNet weights) on the onnx engine, batch 32, in its own process: ``effnet
   predict`` (decode and engine in turn, one process), ``predict-batch --runner local``
   (DataLoader workers decode while the engine runs) and ``predict-batch --runner ray``
   (Ray Data actors, each with its own model). Wall-clock images/s of the whole command
   (start-up included: model, ONNX export, Ray) and the steady rate the command reports.
2. Top-1 on the 304 photos from predict-batch's Parquet against ``effnet evaluate`` on the
   same files (labels.csv).

Run with nothing else on the machine.

    python benchmarks/batch.py [--repeat 10] [--out runs/batch_bench] [--ray-actors 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODEL = ["--model", "tf_efficientnet_lite0", "--pretrained"]


def effnet(*args: str) -> tuple:
    """Run ``effnet ARGS`` in a subprocess; (seconds, stdout)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "effnet.cli", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"effnet {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", default="runs/batch_bench")
    ap.add_argument("--ray-actors", type=int, default=2)
    args = ap.parse_args()
    from effnet.data import data_dir

    root = (data_dir() / "imagenet-samples").resolve()
    with open(root / "labels.csv") as f:
        labels = [(root / r["file"], int(r["class_index"])) for r in csv.DictReader(f)]
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    photos = out / "photos"
    for k in range(args.repeat):
        d = photos / f"copy{k:02d}"
        d.mkdir(parents=True)
        for p, _ in labels:
            os.link(p, d / p.name) if k else shutil.copy(p, d / p.name)   # hard links: distinct paths
    n = len(labels) * args.repeat
    print(f"{n} files ({len(labels)} photos x {args.repeat})", flush=True)
    rows = []
    s, _ = effnet("predict", str(photos), *MODEL, "--engine", "onnx", "--batch-size", "32", "--topk", "5")
    rows.append(("effnet predict", s, None))
    for runner, extra in (("local", ["--workers", "2"]),
                          ("ray", ["--actors", str(args.ray_actors), "--cpus-per-actor", "1", "--threads", "1"])):
        s, text = effnet("predict-batch", str(photos), "--out", str(out / f"{runner}.parquet"), *MODEL, "--engine",
                         "onnx", "--batch-size", "32", "--runner", runner, "--json", "-q", *extra)
        r = json.loads(text.strip().splitlines()[-1])
        assert r["images"] == n and r["errors"] == 0, r
        rows.append((f"predict-batch --runner {runner} {' '.join(extra)}", s, r["images_per_s"]))
    base = n / rows[0][1]
    print("\n| command | seconds | images/s (wall) | vs predict | images/s (reported) |")
    print("|---|---|---|---|---|")
    for name, s, reported in rows:
        print(f"| `{name}` | {s:.1f} | {n / s:.1f} | {n / s / base:.2f}x | {reported or '-'} |")

    listing = out / "files.txt"
    listing.write_text("".join(f"{p}\n" for p, _ in labels))
    table = out / "labels.csv"
    table.write_text("file,class_index\n" + "".join(f"{p},{c}\n" for p, c in labels))
    effnet("predict-batch", str(listing), "--out", str(out / "top1.parquet"), *MODEL, "--engine", "onnx", "-q")
    _, text = effnet("evaluate", *MODEL, "--data", str(table), "--json")
    evaluated = json.loads(text)
    from effnet.serve.batch import summarize

    got = summarize(out / "top1.parquet", {str(p): c for p, c in labels})
    print(f"\ntop-1 on the {len(labels)} photos: from the Parquet {got['top1']:.4f}% ({got['scored']} rows), "
          f"effnet evaluate {evaluated['top1']:.4f}% ({evaluated['images']} images)")


if __name__ == "__main__":
    main()
